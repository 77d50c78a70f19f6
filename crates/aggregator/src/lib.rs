//! hearth-aggregator: the native side of hearth. For now it trains the two-tower model on a
//! dataset, evaluates it beside the most-popular baseline and reads/writes model directories.
//! (Federated rounds, the privacy ledger and publishing come with later work.)
//!
//! ```no_run
//! use hearth_aggregator::{load_dataset, train_model, Backend};
//! use hearth_core::model::TrainConfig;
//! let ds = load_dataset("../shared/data/movielens-100k".as_ref(), None)?;
//! let out = train_model(&ds, None, &TrainConfig::default(), Backend::Cpu, &mut |_| {})?;
//! hearth_aggregator::write_model_dir("models/ml100k".as_ref(), &out.bundle)?;
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use hearth_core::artifact::{DatasetInfo, ManifestMetrics, Selection, ValidationPoint};
use hearth_core::bundle::{Catalog, ModelBundle};
use hearth_core::data::{self, Dataset, MovieLensFiles, Order, OrderReport, Split};
use hearth_core::eval::{self, Metrics, MostPopular, Protocol};
use hearth_core::model::{self, ARCHITECTURE, Examples, ScoreTable, TrainConfig, TrainProgress, TwoTower};
use serde::Serialize;

pub mod synth;

/// Cut-off used for every reported metric.
pub const K: usize = 10;
/// Negatives sampled per held-out item in the sampled protocol.
pub const NEGATIVES: usize = 99;

/// Which burn backend trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// burn-flex on the CPU (SIMD, multi-threaded).
    Cpu,
    /// burn-wgpu (Vulkan; Mesa lavapipe when there is no GPU). Needs the `wgpu` feature.
    Wgpu,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Loads a dataset: a directory in the MovieLens 100K layout (`u.data`, optional `u.item`,
/// `u.genre`, `u.user`), or a CSV file of interactions with an optional item CSV.
pub fn load_dataset(path: &Path, items: Option<&Path>) -> Result<Dataset> {
    if !path.exists() {
        bail!("data not found: {} does not exist", path.display());
    }
    if path.is_dir() {
        let opt = |name: &str| -> Result<Option<Vec<u8>>> {
            let p = path.join(name);
            if p.exists() { Ok(Some(read(&p)?)) } else { Ok(None) }
        };
        let data_path = path.join("u.data");
        if !data_path.exists() {
            bail!("{} is a directory without u.data (expected the MovieLens 100K layout, or give a CSV file)", path.display());
        }
        let data = read(&data_path)?;
        let (item, genre, user) = (opt("u.item")?, opt("u.genre")?, opt("u.user")?);
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "data".into());
        Dataset::from_movielens(
            &name,
            MovieLensFiles { data: &data, item: item.as_deref(), genre: genre.as_deref(), user: user.as_deref() },
        )
        .with_context(|| format!("in {}", path.display()))
    } else {
        let bytes = read(path)?;
        let item_bytes = items.map(read).transpose()?;
        let items_name = items.map(|p| p.display().to_string());
        let items_arg = match (&items_name, &item_bytes) {
            (Some(n), Some(b)) => Some((n.as_str(), b.as_slice())),
            _ => None,
        };
        Ok(Dataset::from_csv(&path.display().to_string(), &bytes, items_arg)?)
    }
}

/// The evaluation protocol for a dataset: leave-one-out, or the pairs of an explicit test file.
pub fn make_split(ds: &Dataset, test: Option<&Path>) -> Result<Split> {
    Ok(match test {
        Some(t) => {
            let held = data::read_test_file(&t.display().to_string(), &read(t)?, ds)?;
            data::split_with_test(ds, &held)?
        }
        None => data::leave_one_out(ds)?,
    })
}

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
fn protocol<'a>(ds: &Dataset, split: &'a Split, cands: &'a [Vec<u32>], seed: u64) -> Protocol<'a> {
    Protocol { n_items: ds.items.len(), train: &split.train, test: &split.test, candidates: cands, k: K, seed }
}

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
    backend: Backend,
    progress: &mut dyn FnMut(TrainProgress),
) -> Result<Trained> {
    let split = make_split(ds, test)?;
    let order = ds.order();
    let valid = data::validation_split(ds, &split);
    let examples = Examples::from_interactions(&valid.train, ds.users.len(), order.order);
    let run = Run { ds, split: &split, valid: &valid, examples: &examples, order, cfg, explicit_test: test.is_some() };
    match backend {
        Backend::Cpu => {
            type B = burn::backend::Autodiff<burn::backend::Flex>;
            run.finish::<B>(&Default::default(), progress)
        }
        #[cfg(feature = "wgpu")]
        Backend::Wgpu => {
            type B = burn::backend::Autodiff<burn::backend::Wgpu>;
            run.finish::<B>(&Default::default(), progress)
        }
        #[cfg(not(feature = "wgpu"))]
        Backend::Wgpu => bail!("this build has no wgpu backend: rebuild hearth-aggregator with `--features wgpu`"),
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
            serde_json::to_value(cfg)?,
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

/// How well a calibration fits held-out data it was not fitted on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CalibrationReport {
    /// The fitted calibration.
    pub calibration: hearth_core::rank::Calibration,
    /// Expected calibration error on the other half of the users (10 equal-width bins).
    pub ece: f64,
    /// Examples (positives + negatives) it was fitted on.
    pub fitted_on: usize,
    /// Examples it was checked on.
    pub checked_on: usize,
}

/// Fits the "% match" calibration the way a device scores: each person's vector from the plain
/// user tower over their training history and age band (no personal vector), scored against the
/// int8 catalog rows. Positive: the person's held-out item; negative: one random item they never
/// touched. So the probability reads "how likely this item, rather than an unrelated one, is what
/// you pick next". Fitted on even users, checked (ECE) on odd users.
pub fn fit_calibration(bundle: &ModelBundle, ds: &Dataset, split: &Split, seed: u64) -> Result<CalibrationReport> {
    use hearth_core::bundle::PersonInput;
    use hearth_core::rank::Calibration;
    use hearth_core::tower::UserTower;
    use rand::SeedableRng;
    let tower = UserTower::from_bundle(bundle)?;
    let shard = bundle.catalog_shard::<burn::backend::Flex>(&Default::default())?;
    let view = shard.view();
    let histories = split.histories(ds.users.len());
    let ages: Vec<Vec<u32>> = ds
        .users
        .iter()
        .map(|u| u.tags.iter().copied().filter(|&t| ds.user_tags[t as usize].starts_with("age:")).collect())
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let score = |user: &[f32], i: u32| hearth_core::score::score_one(view, user, i);
    let (mut fit, mut check) = ((vec![], vec![]), (vec![], vec![]));
    for h in &split.test {
        let u = h.user as usize;
        let user = tower.person_vector(&PersonInput { history: histories[u].clone(), tags: ages[u].clone() });
        let seen: std::collections::HashSet<u32> = histories[u].iter().copied().collect();
        // A user who touched every other item has no negative to compare with: left out.
        let Some(neg) = random_unseen(&mut rng, ds.items.len() as u32, h.item, &seen) else { continue };
        let side = if u.is_multiple_of(2) { &mut fit } else { &mut check };
        side.0.push(score(&user, h.item));
        side.1.push(score(&user, neg));
    }
    let calibration = Calibration::fit(&fit.0, &fit.1).ok_or_else(|| anyhow::anyhow!("calibration needs held-out positives and negatives"))?;
    let mut bins = [(0f64, 0f64, 0usize); 10];
    for (scores, label) in [(&check.0, 1.0), (&check.1, 0.0)] {
        for &s in scores {
            let p = f64::from(calibration.probability(s));
            let b = ((p * 10.0) as usize).min(9);
            bins[b].0 += p;
            bins[b].1 += label;
            bins[b].2 += 1;
        }
    }
    let total = (check.0.len() + check.1.len()).max(1) as f64;
    let ece = bins.iter().filter(|b| b.2 > 0).map(|b| (b.0 - b.1).abs() / total).sum();
    Ok(CalibrationReport { calibration, ece, fitted_on: fit.0.len() * 2, checked_on: check.0.len() * 2 })
}

/// Writes the exact split `train` uses, as files other tools can read (external ids, tab
/// separated, no header), so peers are scored on hearth's split and candidates:
/// `items.tsv` (the catalog), `train.tsv` (`user item rating`: training minus validation),
/// `valid.tsv` (`user item rating`), `test.tsv` (`user item`, as `eval --test` reads it), `valid_candidates.tsv` and `candidates.tsv`
/// (`user item…`: the sampled negatives, `NEGATIVES` per user, drawn with `seed` as `train` and
/// `eval` draw them). Returns (training rows, validation users, test users).
pub fn write_split(ds: &Dataset, test: Option<&Path>, seed: u64, dir: &Path) -> Result<(usize, usize, usize)> {
    let split = make_split(ds, test)?;
    let valid = data::validation_split(ds, &split);
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let user = |u: u32| ds.users[u as usize].id.as_str();
    let item = |i: u32| ds.items[i as usize].id.as_str();
    let mut items = String::new();
    for it in &ds.items {
        items += &it.id;
        items.push('\n');
    }
    let mut train = String::new();
    for x in &valid.train {
        train += &format!("{}\t{}\t{}\n", user(x.user), item(x.item), x.rating);
    }
    let held = |s: &Split| -> String { s.test.iter().map(|h| format!("{}\t{}\n", user(h.user), item(h.item))).collect() };
    // Validation rows carry their rating too, so peers refit on train + validation with it.
    let rating: std::collections::HashMap<(u32, u32), f32> =
        ds.interactions.iter().map(|x| ((x.user, x.item), x.rating)).collect();
    let held_rated = |s: &Split| -> String {
        s.test
            .iter()
            .map(|h| format!("{}\t{}\t{}\n", user(h.user), item(h.item), rating.get(&(h.user, h.item)).copied().unwrap_or(1.0)))
            .collect()
    };
    let cands = |s: &Split| -> String {
        s.test
            .iter()
            .zip(data::sample_negatives(ds, s, NEGATIVES, seed))
            .map(|(h, c)| {
                let mut line = user(h.user).to_owned();
                for i in c {
                    line.push('\t');
                    line += item(i);
                }
                line + "\n"
            })
            .collect()
    };
    for (name, text) in [
        ("items.tsv", items),
        ("train.tsv", train),
        ("valid.tsv", held_rated(&valid)),
        ("valid_candidates.tsv", cands(&valid)),
        ("test.tsv", held(&split)),
        ("candidates.tsv", cands(&split)),
    ] {
        write_atomic(dir, name, text.as_bytes())?;
    }
    Ok((valid.train.len(), valid.test.len(), split.test.len()))
}

/// A random item that is neither `held` nor in `seen`, or `None` when there is none: a few
/// draws, then one scan from a random start, so it ends however full `seen` is.
fn random_unseen(rng: &mut impl rand::Rng, n_items: u32, held: u32, seen: &std::collections::HashSet<u32>) -> Option<u32> {
    let eligible = |i: u32| i != held && !seen.contains(&i);
    if n_items == 0 {
        return None;
    }
    if let Some(i) = (0..32).map(|_| rng.random_range(0..n_items)).find(|&i| eligible(i)) {
        return Some(i);
    }
    let start = rng.random_range(0..n_items);
    (0..n_items).map(|k| (start + k) % n_items).find(|&i| eligible(i))
}

/// Writes a model directory. Each file goes to a temporary name, is synced, then renamed; the
/// manifest comes last, so an interrupted write never leaves a manifest naming missing files.
pub fn write_model_dir(dir: &Path, bundle: &ModelBundle) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, bytes) in bundle.to_files() {
        write_atomic(dir, name, &bytes)?;
    }
    Ok(())
}

/// Quantizes the model's item vectors into its int8 catalog shard (`items.shard`) and keeps it in
/// the bundle, so [`write_model_dir`] writes it with its digest in the manifest.
pub fn attach_shard(bundle: &mut ModelBundle) -> Result<hearth_core::quant::CatalogShard> {
    Ok(bundle.attach_shard::<burn::backend::Flex>(&Default::default())?)
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp: PathBuf = dir.join(format!(".{name}.tmp"));
    let mut f = fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

/// Reads and verifies a model directory.
pub fn read_model_dir(dir: &Path) -> Result<ModelBundle> {
    if !dir.is_dir() {
        bail!("model directory {} does not exist", dir.display());
    }
    ModelBundle::from_files(ARCHITECTURE, &mut |name| fs::read(dir.join(name)).ok())
        .with_context(|| format!("cannot load the model in {}", dir.display()))
}

/// Evaluates a model directory on data (which must be the data it was trained on).
pub fn evaluate_dir(
    dir: &Path,
    ds: &Dataset,
    test: Option<&Path>,
    candidates: Option<&Path>,
    seed: u64,
) -> Result<Report> {
    let bundle = read_model_dir(dir)?;
    bundle.check_dataset(ds)?;
    let device = Default::default();
    let model = bundle.to_model::<burn::backend::Flex>(&device)?;
    let split = make_split(ds, test)?;
    evaluate_model(&model, ds, &split, candidates, seed, &device)
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
