//! Training with early stopping on the validation split, on the backend the operator chose.

use std::path::Path;

use hearth_core::artifact::bundle::{Catalog, ModelBundle};
use hearth_core::artifact::{DatasetInfo, ManifestMetrics, Selection, ValidationPoint};
use hearth_core::data::{self, Dataset, Order, OrderReport, Split};
use hearth_core::eval::{self, MostPopular};
use hearth_core::model::{self, ARCHITECTURE, Examples, ScoreTable, TrainConfig, TrainProgress, TwoTower};

use crate::backend::{Device, Job, run_on};
use crate::calibrate::fit_calibration;
use crate::error::{AggregatorError, Result};
use crate::io::make_split;
use crate::report::{Report, evaluate_model, protocol};
use crate::NEGATIVES;

/// A trained model, ready to write.
pub struct Trained {
    /// The model directory contents.
    pub bundle: ModelBundle,
    /// Metrics on the test split, measured once, right after training.
    pub report: Report,
    /// What the data looked like (sequential or unordered, and the evidence).
    pub order: OrderReport,
    /// How the model was chosen on validation (also in the manifest).
    pub selection: Selection,
    /// Seconds spent training (excluding evaluation).
    pub train_seconds: f64,
}

/// What the objective does for each kind of data, in words (`train` prints it).
pub fn objective_text(order: Order) -> &'static str {
    match order {
        Order::Sequential => "each item predicted from the items before it in time; items sharing a timestamp are a set (each other's context, in random order)",
        Order::Unordered => "each history is a set: each item predicted from a random subset of the person's other items (no order learned)",
    }
}

/// Early stopping's patience starts counting once validation full NDCG@10 is this many times
/// most-popular's (see [`model::Validation::floor`]).
pub const POPULAR_MARGIN: f64 = 1.1;

/// Criterion early stopping maximises.
pub const SELECTION_CRITERION: &str = "validation full-ranking NDCG@10";

/// Trains on the split's training part minus a validation split (each user's latest remaining
/// interaction; a random one for unordered data), picks the epoch by early stopping on
/// validation full-ranking NDCG@10, and scores the test split once (seeded).
pub fn train_model(
    ds: &Dataset,
    test: Option<&Path>,
    cfg: &TrainConfig,
    device: Device,
    progress: &mut dyn FnMut(TrainProgress),
) -> Result<Trained> {
    let split = make_split(ds, test)?;
    let order = ds.order();
    let valid = data::validation_split(ds, &split);
    let examples = Examples::from_interactions(&valid.train, ds.users.len(), order.order);
    let run = Run { ds, split: &split, valid: &valid, examples: &examples, order, cfg, explicit_test: test.is_some() };
    run_on(device, TrainJob { run, progress })?
}

/// [`Run::finish`] on the chosen backend.
struct TrainJob<'a, 'p> {
    run: Run<'a>,
    progress: &'p mut dyn FnMut(TrainProgress),
}

impl Job for TrainJob<'_, '_> {
    type Out = Result<Trained>;
    fn run<B: burn::tensor::backend::AutodiffBackend>(self, device: &B::Device) -> Result<Trained> {
        self.run.finish::<B>(device, self.progress)
    }
}

/// One training run's inputs.
struct Run<'a> {
    ds: &'a Dataset,
    split: &'a Split,
    valid: &'a Split,
    examples: &'a Examples,
    order: OrderReport,
    cfg: &'a TrainConfig,
    explicit_test: bool,
}

impl Run<'_> {
    fn finish<B: burn::tensor::backend::AutodiffBackend>(
        &self,
        device: &B::Device,
        progress: &mut dyn FnMut(TrainProgress),
    ) -> Result<Trained> {
        let (ds, cfg) = (self.ds, self.cfg);
        let valid_cands = data::sample_negatives(ds, self.valid, NEGATIVES, cfg.seed);
        // Most-popular on validation is scored once: it sets early stopping's floor and is
        // reported beside the chosen model; each epoch scores only the model.
        let protocol = protocol(ds, self.valid, &valid_cands, cfg.seed);
        let histories = self.valid.histories(ds.users.len());
        let on_valid_model =
            |m: &TwoTower<B::InnerBackend>| eval::evaluate(&ScoreTable::compute(m, &histories, device), &protocol);
        let popular = eval::evaluate(&MostPopular::fit(ds.items.len(), &self.valid.train), &protocol);
        let mut validate = |m: &TwoTower<B::InnerBackend>| on_valid_model(m).full.ndcg;
        let validation = model::Validation { score: &mut validate, floor: POPULAR_MARGIN * popular.full.ndcg };
        let start = std::time::Instant::now();
        let outcome = model::train::<B>(ds, self.examples, cfg, device, progress, Some(validation))?;
        let train_seconds = start.elapsed().as_secs_f64();
        let model = outcome.model;
        let on_valid = Report { model: on_valid_model(&model), most_popular: popular, users: self.valid.test.len() };
        let report = evaluate_model(&model, ds, self.split, None, cfg.seed, device)?;
        let selection = Selection {
            order: self.order.order,
            objective: objective_text(self.order.order).into(),
            criterion: SELECTION_CRITERION.into(),
            best_epoch: outcome.best_epoch,
            curve: outcome
                .curve
                .iter()
                .map(|e| ValidationPoint { epoch: e.epoch, loss: e.loss, score: e.validation.unwrap_or(f64::NAN) })
                .collect(),
            validation: ManifestMetrics {
                model: on_valid.model,
                most_popular: on_valid.most_popular,
                users: on_valid.users,
                seed: cfg.seed,
            },
            beats_most_popular: beats(&on_valid),
        };
        let dims = model.dims();
        let mut bundle = ModelBundle::new(
            ARCHITECTURE,
            1,
            hearth_core::artifact::ModelDims { item_tags: ds.item_tags.len(), user_tags: ds.user_tags.len(), ..dims },
            DatasetInfo {
                name: ds.name.clone(),
                fingerprint: ds.fingerprint(),
                users: ds.users.len(),
                items: ds.items.len(),
                interactions: ds.interactions.len(),
                split: if self.explicit_test { "explicit-test-file".into() } else { "leave-one-out-latest".into() },
            },
            serde_json::to_value(cfg).map_err(|source| AggregatorError::Json { what: "the training configuration", source })?,
            Some(ManifestMetrics {
                model: report.model,
                most_popular: report.most_popular,
                users: report.users,
                seed: cfg.seed,
            }),
            model.global.to_file(),
            Some(model.personal.to_file()),
            ds.users.clone(),
            Catalog::of(ds),
        );
        bundle.manifest.selection = Some(selection.clone());
        bundle.manifest.calibration = Some(fit_calibration(&bundle, ds, self.split, cfg.seed)?.calibration);
        Ok(Trained { bundle, report, order: self.order, selection, train_seconds })
    }
}

/// The operator's guard: a model beats most-popular when it is ahead under both protocols
/// (full-ranking NDCG@10 and sampled HR@10).
pub fn beats(r: &Report) -> bool {
    r.model.full.ndcg > r.most_popular.full.ndcg && r.model.sampled.hr > r.most_popular.sampled.hr
}

