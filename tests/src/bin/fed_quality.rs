//! Federated quality on MovieLens 100K, the full runs behind BENCHMARKS.md (the CI-sized run is a
//! scenario test). Every model is scored as `eval` scores it, with user vectors from each
//! person's history and profile alone (a federated model has no central personal vectors; the
//! central models are scored the same way, so the comparison is like for like).
//!
//! ```text
//! cargo run -p hearth-tests --bin fed_quality -- scratch [--rounds 60] [--devices 200] [--seed 42]
//! cargo run -p hearth-tests --bin fed_quality -- half [--eps 1,2,4,8,16|none] [--rounds 20] [--devices 0]
//! (both) [--groups tower,items,history-items,item-tags] [--clip 1] [--server fedadam|fedavg] [--lr]
//!     [--tau 1e-3] [--epochs 2] [--local-lr 0.05] [--recon-steps 20] [--decay-every 0 --decay 1]
//!     [--reconstruct] [--eval-every N] [--local-user-l2 P] [--uniform-negatives]
//! cargo run -p hearth-tests --bin fed_quality -- half --http …   # the rounds over HTTP
//! ```
//! - `scratch`: federated rounds over every user from the same initialisation as the central
//!   model (`models/ml100k`, seed 42), no DP, beside that central model.
//! - `half`: v1 trained centrally on the even users; federated rounds over the odd users, with
//!   no DP and at each cumulative ε; everything scored on the odd users; central on all users.
//!   With `--http` the rounds run through the aggregator server instead of in process: a
//!   `hearth-aggregator serve` started here on 127.0.0.1 (SQLite in a temporary directory, v1 its
//!   first model) and one device task per odd user speaking HTTP to it (`simulate`).

use std::fmt::Display;
use std::path::Path;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use hearth_aggregator::{evaluate_model, load_dataset, read_model_dir, train_model};
use hearth_core::artifact::TensorFile;
use hearth_core::artifact::bundle::ModelBundle;
use hearth_core::data::{Dataset, Split, leave_one_out};
use hearth_core::fed::aggregate::ServerOptimizer;
use hearth_core::fed::client::ModelSettings;
use hearth_core::fed::layout::Layout;
use hearth_core::fed::plan::{Group, LocalTraining};
use hearth_tests::fed_sim::{Population, RoundLog, SimConfig, run, run_over_http};

#[derive(Parser)]
#[command(about = "Federated quality on MovieLens 100K (see BENCHMARKS.md)")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Federated rounds over every user from the central model's initialisation, no DP.
    Scratch {
        #[arg(long, default_value_t = 60)]
        rounds: u32,
        /// Expected devices per round (Poisson sampling).
        #[arg(long, default_value_t = 200)]
        devices: u32,
        /// Sampling and device randomness (the initialisation is always seed 42).
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Score every N rounds.
        #[arg(long, default_value_t = 10)]
        eval_every: u32,
        #[command(flatten)]
        opts: Opts,
    },
    /// v1 central on the even users; federated rounds over the odd users, without DP and at each ε.
    Half {
        #[arg(long, default_value_t = 20)]
        rounds: u32,
        /// Expected devices per round (0: every odd user, every round).
        #[arg(long, default_value_t = 0)]
        devices: u32,
        /// Cumulative ε targets at δ = 1e-5, comma-separated, or `none`.
        #[arg(long, default_value = "1,2,4,8,16")]
        eps: String,
        /// Score every N rounds (0: only at the end).
        #[arg(long, default_value_t = 0)]
        eval_every: u32,
        /// Run the rounds through the aggregator server over HTTP.
        #[arg(long)]
        http: bool,
        /// With --http: also run them in process, and fail unless both publish the same
        /// parameters, bit for bit.
        #[arg(long, requires = "http")]
        compare: bool,
        #[command(flatten)]
        opts: Opts,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Server {
    Fedadam,
    Fedavg,
}

/// What both modes share: the rounds' settings and how models are scored.
#[derive(Args)]
struct Opts {
    /// Federated parameter groups.
    #[arg(long, value_delimiter = ',', default_value = "tower")]
    groups: Vec<GroupArg>,
    /// L2 clip of each device's update.
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    #[arg(long, value_enum, default_value = "fedadam")]
    server: Server,
    /// Server learning rate (default 0.01 for FedAdam, 1 for FedAvg).
    #[arg(long)]
    lr: Option<f64>,
    /// FedAdam's adaptivity.
    #[arg(long, default_value_t = 1e-3)]
    tau: f64,
    /// The user-vector penalty of the local steps (default: the model's).
    #[arg(long)]
    local_user_l2: Option<f64>,
    /// Local epochs.
    #[arg(long, default_value_t = 2)]
    epochs: u32,
    /// Local learning rate.
    #[arg(long, default_value_t = 0.05)]
    local_lr: f64,
    /// Steps fitting the personal vector before the global parameters (Federated Reconstruction).
    #[arg(long, default_value_t = 20)]
    recon_steps: u32,
    /// Probability that a device drops out, at a random stage.
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// Every N rounds (0: never) both learning rates are multiplied by `--decay`.
    #[arg(long, default_value_t = 0)]
    decay_every: u32,
    #[arg(long, default_value_t = 1.0)]
    decay: f64,
    /// Score with the personal vector each device rebuilds (Federated Reconstruction's evaluation).
    #[arg(long)]
    reconstruct: bool,
    /// Local negatives drawn uniformly, without the logQ correction (the default draws them as
    /// central training's candidates, partly by the served catalog's popularity).
    #[arg(long)]
    uniform_negatives: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum GroupArg {
    Tower,
    ItemTags,
    HistoryItems,
    Items,
}

impl Opts {
    /// How devices train `model`: as its manifest says, or with uniform negatives.
    fn settings(&self, model: &ModelBundle) -> Result<ModelSettings, String> {
        let mut settings = ModelSettings::of(&model.manifest).map_err(ctx("the model's settings"))?;
        if self.uniform_negatives {
            settings.candidate_mix = (0.0, 1.0);
        }

        Ok(settings)
    }

    fn groups(&self) -> Vec<Group> {
        self.groups
            .iter()
            .map(|g| match g {
                GroupArg::Tower => Group::Tower,
                GroupArg::ItemTags => Group::ItemTags,
                GroupArg::HistoryItems => Group::HistoryItems,
                GroupArg::Items => Group::Items,
            })
            .collect()
    }

    fn sim(&self, rounds: u32, devices: u32, noise: f64, min_survivors: u32, seed: u64) -> SimConfig {
        SimConfig {
            rounds,
            devices,
            groups: self.groups(),
            local: LocalTraining { epochs: self.epochs, lr: self.local_lr, reconstruction_steps: self.recon_steps, user_l2: self.local_user_l2, ..LocalTraining::default() },
            clip: self.clip,
            noise_multiplier: noise,
            min_survivors,
            server: match self.server {
                Server::Fedavg => ServerOptimizer::FedAvg { lr: self.lr.unwrap_or(1.0) },
                Server::Fedadam => ServerOptimizer::FedAdam { lr: self.lr.unwrap_or(0.01), beta1: 0.9, beta2: 0.99, tau: self.tau },
            },
            dropout: self.dropout,
            seed,
            decay_every: self.decay_every,
            decay: self.decay,
        }
    }
}

/// `what` failed, and why.
fn ctx<E: Display>(what: &'static str) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}


/// Scores models the way `eval` does, on one dataset.
struct Scorer<'a> {
    /// The model whose manifest, catalog and shapes every scored parameter set shares.
    bundle: &'a ModelBundle,
    ds: &'a Dataset,
    /// With the personal vector each device rebuilds, or from history and profile alone.
    reconstruct: bool,
}

impl Scorer<'_> {
    /// (sampled HR@10, full HR@10, full NDCG@10) of `global` on `split`'s test interactions.
    fn score(&self, global: &TensorFile, split: &Split) -> Result<[f64; 3], String> {
        let mut b = self.bundle.clone();
        b.global = global.clone();
        b.personal = None;
        if self.reconstruct {
            let pop = Population::new(self.ds, split, &self.bundle.catalog.popularity);
            let dims = &self.bundle.manifest.dims;
            let settings = ModelSettings::of(&self.bundle.manifest).map_err(ctx("the model's settings"))?;
            let rows = hearth_core::platform::par_map(pop.people.len(), |u| {
                if pop.people[u].history.is_empty() {
                    return Ok(vec![0.0; dims.dim]);
                }
                hearth_core::fed::client::reconstruct::<burn::backend::Autodiff<burn::backend::Flex>>(
                    global, dims, &pop.catalog, &pop.people[u], &settings, &LocalTraining::default(), u as u64, &Default::default(),
                )
                .map_err(ctx("reconstruction"))
            });
            let rows = rows.into_iter().collect::<Result<Vec<_>, _>>()?;
            let mut t = TensorFile::default();
            t.insert("personal", vec![rows.len(), dims.dim], rows.concat());
            b.personal = Some(t);
        }
        let device = Default::default();
        let model = b.to_model::<burn::backend::Flex>(&device).map_err(ctx("a model"))?;
        let r = evaluate_model(&model, self.ds, split, None, 42, &device).map_err(ctx("evaluation"))?;
        Ok([r.model.sampled.hr, r.model.full.hr, r.model.full.ndcg])
    }
}

fn row(name: &str, s: [f64; 3], base: Option<[f64; 3]>, extra: &str) {
    let ratio = base.map_or(String::new(), |b| format!("{:.3} / {:.3}", s[0] / b[0], s[1] / b[1]));
    println!("| {name} | {:.4} | {:.4} | {:.4} | {ratio} | {extra} |", s[0], s[1], s[2]);
}

/// Runs the rounds, scoring every `every` rounds (0: never) with `score`, which may fail: the
/// first failure ends the run.
#[allow(clippy::too_many_arguments)]
fn rounds_scored(
    pop: &Population,
    eligible: &[u32],
    start: &TensorFile,
    dims: &hearth_core::artifact::ModelDims,
    settings: &ModelSettings,
    cfg: &SimConfig,
    every: u32,
    mut on_round: impl FnMut(&RoundLog),
    mut score: impl FnMut(u32, &TensorFile) -> Result<(), String>,
) -> Result<TensorFile, String> {
    let mut failed = Ok(());
    let end = run(pop, eligible, dims, settings, start.clone(), cfg, |l, g| {
        on_round(l);
        if failed.is_ok() && every > 0 && l.round % every == 0 {
            failed = score(l.round, g);
        }
    })?;
    failed.map(|()| end)
}

fn main() -> ExitCode {
    match main_() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fed_quality: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main_() -> Result<(), String> {
    let cli = Cli::parse();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ds = load_dataset(&hearth_tests::ml100k_dir(), None).map_err(ctx("MovieLens 100K"))?;
    let split = leave_one_out(&ds).map_err(ctx("a split"))?;
    let central = read_model_dir(&root.join("models/ml100k")).map_err(ctx("the committed model"))?;
    let dims = central.manifest.dims;
    let t0 = std::time::Instant::now();
    match cli.mode {
        Mode::Scratch { rounds, devices, seed, eval_every, opts } => {
            let scorer = Scorer { bundle: &central, ds: &ds, reconstruct: opts.reconstruct };
            let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(42);
            let init = hearth_core::model::GlobalParams::<burn::backend::Flex>::init(&dims, &mut rng, &Default::default()).to_file();
            let everyone: Vec<u32> = (0..ds.users.len() as u32).collect();
            let pop = Population::new(&ds, &split, &central.catalog.popularity);
            let base = scorer.score(&central.global, &split)?;
            println!("| model | sampled HR@10 | full HR@10 | full NDCG@10 | / central (sampled / full) | |\n|---|---|---|---|---|---|");
            row("central (models/ml100k, seed 42)", base, None, "");
            row("initialisation", scorer.score(&init, &split)?, Some(base), "");
            let cfg = opts.sim(rounds, devices, 0.0, 10, seed);
            let every = eval_every.max(1);
            let scored = |round: u32, g: &TensorFile| -> Result<(), String> {
                row(&format!("federated, {round} rounds of ~{devices}"), scorer.score(g, &split)?, Some(base), &format!("{:.0} s", t0.elapsed().as_secs_f64()));
                Ok(())
            };
            let end = rounds_scored(
                &pop,
                &everyone,
                &init,
                &dims,
                &opts.settings(&central)?,
                &cfg,
                every,
                |l| eprintln!("round {}: {} devices ({} failed local training), local loss {:.3} -> {:.3}, {:.1} s", l.round, l.survivors, l.failed, l.local_loss.0, l.local_loss.1, l.secs),
                scored,
            )?;
            if rounds % every != 0 {
                scored(rounds, &end)?;
            }
        }
        Mode::Half { rounds, devices, eps, eval_every, http, compare, opts } => {
            if http && (opts.uniform_negatives || opts.decay_every > 0 || eval_every > 0 || opts.reconstruct) {
                return Err("--http runs what the server runs: no --uniform-negatives, --decay-every, --eval-every or --reconstruct".into());
            }
            let scorer = Scorer { bundle: &central, ds: &ds, reconstruct: opts.reconstruct };
            let targets = eps.split(',').filter(|e| *e != "none").map(|e| e.parse::<f64>().map_err(|_| format!("--eps: not a number: {e}"))).collect::<Result<Vec<_>, _>>()?;
            let odd: Vec<u32> = (0..ds.users.len() as u32).filter(|u| u % 2 == 1).collect();
            let devices = match devices { 0 => odd.len() as u32, d => d };
            let q = (f64::from(devices) / odd.len() as f64).min(1.0);
            let on_odd = Split { train: split.train.clone(), test: split.test.iter().filter(|h| h.user % 2 == 1).copied().collect() };
            // v1: central training on the even users' interactions only.
            let even = Dataset { interactions: ds.interactions.iter().filter(|x| x.user % 2 == 0).copied().collect(), ..ds.clone() };
            let config = serde_json::from_value(central.manifest.hyper.clone()).map_err(ctx("the committed config"))?;
            let v1 = train_model(&even, None, &config, hearth_aggregator::Device::Cpu, &mut |_| {}).map_err(ctx("v1"))?.bundle;
            let pop = Population::new(&ds, &split, &v1.catalog.popularity);
            let settings = opts.settings(&v1)?;
            let base = scorer.score(&v1.global, &on_odd)?;
            println!("| model (scored on the odd users) | sampled HR@10 | full HR@10 | full NDCG@10 | / v1 (sampled / full) | rounds, ε, noise |\n|---|---|---|---|---|---|");
            row("v1: central on the even users", base, None, "");
            let layout = Layout::new(&dims, &opts.groups());
            // The noise is sized for 90 % of the expected devices surviving.
            let min_survivors = (f64::from(devices) * 0.9) as u32;
            let pop_http = std::sync::Arc::new(Population::new(&ds, &split, &v1.catalog.popularity));
            let last = |name: String, noise: f64, seed: u64| -> Result<[f64; 3], String> {
                let cfg = opts.sim(rounds, devices, noise, min_survivors, seed);
                let in_process = |final_eps: &mut Option<f64>| {
                    rounds_scored(
                        &pop,
                        &odd,
                        &v1.global,
                        &dims,
                        &settings,
                        &cfg,
                        eval_every,
                        |l| {
                            *final_eps = l.epsilon;
                            eprintln!(
                                "{name} round {}: {} devices, ε {:?}, local loss {:.3} -> {:.3}, device update norm p50 {:.4}, mean update norm {:.4}, {:.1} s",
                                l.round, l.survivors, l.epsilon, l.local_loss.0, l.local_loss.1, l.device_norm_p50, l.update_norm, l.secs
                            );
                        },
                        |round, g| {
                            let s = scorer.score(g, &on_odd)?;
                            eprintln!("{name} after round {round}: {:.4} / {:.4} / {:.4}", s[0], s[1], s[2]);
                            Ok(())
                        },
                    )
                };
                let mut final_eps = None;
                let mut same = String::new();
                let g = if http {
                    let (g, e) = run_over_http(&v1, pop_http.clone(), &odd, &cfg, &name)?;
                    final_eps = e;
                    if compare {
                        let mut here_eps = None;
                        let here = in_process(&mut here_eps)?;
                        let differ = here.tensors.iter().map(|(n, t)| t.values.iter().zip(&g.tensors[n].values).filter(|(a, b)| a.to_bits() != b.to_bits()).count()).sum::<usize>();
                        if differ > 0 || here.encode() != g.encode() {
                            return Err(format!("{name}: over HTTP and in process, {differ} parameters differ"));
                        }
                        same = format!("; in process: the same bits, ε {}", here_eps.map_or("∞".into(), |e| format!("{e:.2}")));
                    }
                    g
                } else {
                    in_process(&mut final_eps)?
                };
                let s = scorer.score(&g, &on_odd)?;
                row(&name, s, Some(base), &format!("{rounds} × ~{devices} devices, ε {}, z {noise:.2}{same}", final_eps.map_or("∞ (no DP)".into(), |e| format!("{e:.2}"))));
                Ok(s)
            };
            let open = last("+ federated, no DP".into(), 0.0, 1)?;
            for target in targets {
                let z = hearth_aggregator::epsilon::noise_for_epsilon(target, rounds, min_survivors, q, layout.len(), opts.clip, 1e-5).map_err(ctx("the noise"))?;
                let s = last(format!("+ federated, ε = {target}"), z, 2)?;
                let kept = (s[1] - base[1]) / (open[1] - base[1]);
                eprintln!("ε {target}: keeps {:.0} % of the non-private gain in full HR@10", 100.0 * kept);
            }
            row("central on all users (models/ml100k)", scorer.score(&central.global, &on_odd)?, Some(base), "");
        }
    }
    eprintln!("{:.0} s", t0.elapsed().as_secs_f64());
    Ok(())
}
