//! Evaluation beside most-popular, and the reports people read (a table) and tools read (JSON).

use std::path::Path;

use burn::tensor::backend::AutodiffBackend;
use hearth_core::artifact::bundle::ModelBundle;
use hearth_core::data::{self, Dataset, Split};
use hearth_core::eval::{self, Metrics, MostPopular, Protocol};
use hearth_core::model::{ScoreTable, TwoTower};
use serde::Serialize;

use crate::backend::{Device, Job, run_on};
use crate::error::Result;
use crate::io::{make_split, read, read_model_dir};
use crate::{K, NEGATIVES};

/// A model's and the baseline's metrics from one run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Report {
    /// The model.
    pub model: Metrics,
    /// Most popular, computed in the same run on the same candidates.
    pub most_popular: Metrics,
    /// Users evaluated.
    pub users: usize,
}

/// Evaluates a trained model and most-popular on `split`. Candidates come from `candidates` (a
/// file) or are 99 negatives sampled with `seed`.
pub fn evaluate_model<B: burn::prelude::Backend>(
    model: &TwoTower<B>,
    ds: &Dataset,
    split: &Split,
    candidates: Option<&Path>,
    seed: u64,
    device: &B::Device,
) -> Result<Report> {
    let cands = match candidates {
        Some(c) => data::read_candidates_file(&c.display().to_string(), &read(c)?, ds, &split.test)?,
        None => data::sample_negatives(ds, split, NEGATIVES, seed),
    };
    Ok(evaluate_on(model, ds, split, &cands, seed, device))
}

/// [`evaluate_model`] with the candidates given.
fn evaluate_on<B: burn::prelude::Backend>(
    model: &TwoTower<B>,
    ds: &Dataset,
    split: &Split,
    cands: &[Vec<u32>],
    seed: u64,
    device: &B::Device,
) -> Report {
    let histories = split.histories(ds.users.len());
    let table = ScoreTable::compute(model, &histories, device);
    let protocol = protocol(ds, split, cands, seed);
    let pop = MostPopular::fit(ds.items.len(), &split.train);
    Report {
        model: eval::evaluate(&table, &protocol),
        most_popular: eval::evaluate(&pop, &protocol),
        users: split.test.len(),
    }
}

/// The evaluation protocol of `split` with the candidates given.
pub(crate) fn protocol<'a>(ds: &Dataset, split: &'a Split, cands: &'a [Vec<u32>], seed: u64) -> Protocol<'a> {
    Protocol { n_items: ds.items.len(), train: &split.train, test: &split.test, candidates: cands, k: K, seed }
}

/// Evaluates a model directory on data (which must be the data it was trained on).
pub fn evaluate_dir(
    dir: &Path,
    ds: &Dataset,
    test: Option<&Path>,
    candidates: Option<&Path>,
    seed: u64,
    on: Device,
) -> Result<Report> {
    let bundle = read_model_dir(dir)?;
    bundle.check_dataset(ds)?;
    let split = make_split(ds, test)?;
    run_on(on, EvalJob { bundle: &bundle, ds, split: &split, candidates, seed })?
}

/// A model bundle evaluated on a backend chosen at run time.
pub struct EvalJob<'a> {
    /// The model.
    pub bundle: &'a ModelBundle,
    /// Its data.
    pub ds: &'a Dataset,
    /// The split scored.
    pub split: &'a Split,
    /// Explicit candidates (None: 99 negatives drawn with `seed`).
    pub candidates: Option<&'a Path>,
    /// Seed of the negatives and tie-breaking.
    pub seed: u64,
}

impl Job for EvalJob<'_> {
    type Out = Result<Report>;
    fn run<B: AutodiffBackend>(self, device: &B::Device) -> Result<Report> {
        let model = self.bundle.to_model::<B::InnerBackend>(device)?;
        evaluate_model(&model, self.ds, self.split, self.candidates, self.seed, device)
    }
}

/// The JSON shape `eval --json` prints.
pub fn report_json(r: &Report) -> serde_json::Value {
    let side = |m: &Metrics| {
        serde_json::json!({
            "sampled": {"hr@10": m.sampled.hr, "ndcg@10": m.sampled.ndcg},
            "full": {"hr@10": m.full.hr, "ndcg@10": m.full.ndcg},
            "coverage@10": m.coverage,
        })
    };
    serde_json::json!({"model": side(&r.model), "most_popular": side(&r.most_popular), "users": r.users})
}

/// A table for people.
pub fn report_table(r: &Report) -> String {
    let mut s = String::new();
    s += &format!("{} users, K = {K}\n", r.users);
    s += "                 sampled (1 + 99 negatives)   full ranking (all unseen)\n";
    s += "recommender       HR@10     NDCG@10            HR@10     NDCG@10     coverage\n";
    for (name, m) in [("two-tower", &r.model), ("most-popular", &r.most_popular)] {
        s += &format!(
            "{name:<14} {:>8.4}    {:>8.4}          {:>8.4}    {:>8.4}     {:>7.3}\n",
            m.sampled.hr, m.sampled.ndcg, m.full.hr, m.full.ndcg, m.coverage
        );
    }
    s
}
