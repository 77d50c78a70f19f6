//! `hearth-aggregator`: train and evaluate hearth models from the command line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use hearth_aggregator::{
    Backend, evaluate_dir, fit_calibration, load_dataset, make_split, read_model_dir, report_json, report_table, train_model,
    write_model_dir, attach_shard, publish_model_dir,
};
use hearth_aggregator::serve::ServeConfig;
use hearth_core::model::{Link, TrainConfig};

mod simulate_cli;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(name = "hearth-aggregator", version, about = "hearth's aggregator: train, evaluate and publish models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train the two-tower model and write a model directory (evaluated on a held-out split).
    Train {
        /// A MovieLens-100K-layout directory or a CSV file `user,item[,rating][,timestamp]`.
        #[arg(long)]
        data: PathBuf,
        /// Optional item CSV `item,title[,tags]` (tags `|`-separated) for CSV data.
        #[arg(long)]
        items: Option<PathBuf>,
        /// Output model directory, e.g. models/ml100k.
        #[arg(long)]
        out: PathBuf,
        /// Hold out exactly these `user<TAB>item` pairs instead of leave-one-out.
        #[arg(long)]
        test: Option<PathBuf>,
        /// Training backend: auto takes CUDA if it works, else a wgpu GPU, else the CPU.
        #[arg(long, value_enum, default_value = "auto")]
        backend: Backend,
        #[command(flatten)]
        hyper: Hyper,
    },
    /// (Re)write a model directory's int8 catalog shard, items.shard (`train` writes it too).
    Shard {
        /// Model directory.
        #[arg(long)]
        model: PathBuf,
    },
    /// Fit the "% match" calibration of a model directory on held-out data and store it in its
    /// manifest (`train` does this too).
    Calibrate {
        #[command(flatten)]
        target: ModelAndData,
        /// Seed of the negative draws.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Write the exact split `train` and `eval` use (train minus validation, validation, test,
    /// sampled candidates) as TSV files, so other tools are scored on the same held-out items.
    Split {
        /// A MovieLens-100K-layout directory or a CSV file.
        #[arg(long)]
        data: PathBuf,
        /// Optional item CSV for CSV data.
        #[arg(long)]
        items: Option<PathBuf>,
        /// Hold out exactly these `user<TAB>item` pairs instead of leave-one-out.
        #[arg(long)]
        test: Option<PathBuf>,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Seed of the negative draws (the one `train` and `eval` use by default).
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Generate a reproducible test dataset of another shape than MovieLens.
    Synth {
        /// Which shape.
        #[arg(long, value_enum)]
        shape: hearth_aggregator::synth::Shape,
        /// Output directory (interactions.csv, and items.csv for shapes with item tags).
        #[arg(long)]
        out: PathBuf,
        /// Seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// The privacy budget a plan spends: ε after --rounds rounds, each sampling devices at rate
    /// --sampling with noise multiplier --noise (dp-accounting's RDP accountant), and with
    /// --clients, --dim and --clip the ε of the distributed mechanism hearth's rounds run.
    Epsilon {
        /// Poisson sampling rate of each round.
        #[arg(long)]
        sampling: f64,
        /// Noise standard deviation over the clip norm.
        #[arg(long)]
        noise: f64,
        /// Rounds.
        #[arg(long)]
        rounds: u32,
        /// δ.
        #[arg(long, default_value_t = 1e-5)]
        delta: f64,
        /// Survivors per round (for the distributed mechanism).
        #[arg(long, requires_all = ["dim"])]
        clients: Option<u32>,
        /// Values in each update (for the distributed mechanism).
        #[arg(long, requires_all = ["clients"])]
        dim: Option<usize>,
        /// The update's L2 clip (for the distributed mechanism).
        #[arg(long, default_value_t = 1.0)]
        clip: f64,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the aggregator server: federated rounds over HTTP (configuration: embedded defaults,
    /// then --config TOML, then HEARTH_AGGREGATOR_* variables, then these flags).
    Serve {
        /// A TOML file with any of the settings (`serve --print-config` shows them all).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        over: ServeFlags,
        /// Print the configuration and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Devices as concurrent tasks speaking HTTP to an aggregator (started here on 127.0.0.1
    /// unless --server names one), each holding one dataset user's history; prints a table of
    /// the rounds and writes a plot of HR@10 and cumulative ε.
    Simulate(simulate_cli::SimulateArgs),
    /// Move the model store's `latest` pointer back to an earlier published version.
    Rollback {
        /// The model store's directory (the server's `<data_dir>/models` by default).
        #[arg(long, default_value = "data/aggregator/models")]
        store: PathBuf,
        /// The version to serve again.
        #[arg(long)]
        to: u32,
    },
    /// Copy a published model version to the edge worker: its files, then its index, then the
    /// edge's `latest` (each step checked by the edge; running it again is harmless).
    PublishEdge {
        /// The edge worker's base URL.
        #[arg(long)]
        edge: String,
        /// The edge's publisher token (its PUBLISH_TOKEN secret).
        #[arg(long, env = "HEARTH_EDGE_TOKEN", hide_env_values = true)]
        token: String,
        /// The model store to copy from (the server's `<data_dir>/models`).
        #[arg(long, default_value = "data/aggregator/models", conflicts_with = "model")]
        store: PathBuf,
        /// The version to copy (default: the store's latest).
        #[arg(long, conflicts_with = "model")]
        version: Option<u32>,
        /// Copy a model directory instead, as its manifest's model_version.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Print one JSON object instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Evaluate a model directory beside most-popular, under both protocols.
    Eval {
        #[command(flatten)]
        target: ModelAndData,
        /// Explicit held-out pairs, `user<TAB>item` per line.
        #[arg(long)]
        test: Option<PathBuf>,
        /// Explicit candidates, `user<TAB>item1<TAB>item2…` per line (needs --test).
        #[arg(long, requires = "test")]
        candidates: Option<PathBuf>,
        /// Seed for negative sampling and tie-breaking.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Evaluation backend: auto takes CUDA if it works, else a wgpu GPU, else the CPU.
        #[arg(long, value_enum, default_value = "auto")]
        backend: Backend,
    },
}

#[derive(clap::Args)]
struct Hyper {
    /// Seed for initialisation, shuffling, sampling and evaluation.
    #[arg(long, default_value_t = TrainConfig::default().seed)]
    seed: u64,
    /// Most epochs (early stopping on the validation split usually ends sooner).
    #[arg(long, default_value_t = TrainConfig::default().epochs)]
    epochs: usize,
    /// Epochs without a better validation score before training stops (0: train all epochs).
    #[arg(long, default_value_t = TrainConfig::default().patience)]
    patience: usize,
    /// Correct in-batch logits by sampling log-probability (`--logq false` to turn off).
    #[arg(long, default_value_t = TrainConfig::default().logq, action = clap::ArgAction::Set)]
    logq: bool,
    /// Train a personal vector per training user (`--personal false`: the shared tower only).
    #[arg(long, default_value_t = TrainConfig::default().personal, action = clap::ArgAction::Set)]
    personal: bool,
    /// Embedding width.
    #[arg(long, default_value_t = TrainConfig::default().dim)]
    dim: usize,
    /// Hidden width of the user tower.
    #[arg(long, default_value_t = TrainConfig::default().hidden)]
    hidden: usize,
    /// History items the user tower reads.
    #[arg(long, default_value_t = TrainConfig::default().history)]
    history: usize,
    /// Batch size.
    #[arg(long, default_value_t = TrainConfig::default().batch)]
    batch: usize,
    /// Sampled negatives per batch.
    #[arg(long, default_value_t = TrainConfig::default().negatives)]
    negatives: usize,
    /// Learning rate.
    #[arg(long, default_value_t = TrainConfig::default().lr)]
    lr: f64,
    /// Weight decay.
    #[arg(long, default_value_t = TrainConfig::default().weight_decay)]
    weight_decay: f64,
    /// Penalty on the squared norm of user vectors (added to the loss).
    #[arg(long, default_value_t = TrainConfig::default().user_l2)]
    user_l2: f64,
    /// Weight of an interaction's rating or play count: its example counts `1 + w · ln(1 + rating)`
    /// (0: every interaction alike).
    #[arg(long, default_value_t = TrainConfig::default().rating_weight)]
    rating_weight: f64,
    /// How scores become the softmax's logits: `softplus` (p ∝ softplus(u·v)) or `exp` (the plain
    /// softmax).
    #[arg(long, default_value = TrainConfig::default().link.name(), value_parser = str::parse::<Link>)]
    link: Link,
}

impl Hyper {
    fn config(&self) -> TrainConfig {
        TrainConfig {
            dim: self.dim,
            hidden: self.hidden,
            history: self.history,
            epochs: self.epochs,
            batch: self.batch,
            negatives: self.negatives,
            lr: self.lr,
            weight_decay: self.weight_decay,
            user_l2: self.user_l2,
            rating_weight: self.rating_weight,
            link: self.link,
            patience: self.patience,
            logq: self.logq,
            personal: self.personal,
            seed: self.seed,
        }
    }
}

/// Settings of `serve` that flags may override.
#[derive(clap::Args)]
struct ServeFlags {
    /// Address to listen on.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Directory of the default database and model store.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// `sqlite:…` or `postgres://…`.
    #[arg(long)]
    database: Option<String>,
    /// The model the first round trains.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Held-out data each new model is evaluated on.
    #[arg(long)]
    eval_data: Option<PathBuf>,
    /// Stop opening rounds after this many.
    #[arg(long)]
    rounds: Option<u32>,
    /// Seed of sampling and round seeds (reproducible runs only).
    #[arg(long)]
    seed: Option<u64>,
    /// Backend that evaluates new models (auto: CUDA, else a wgpu GPU, else the CPU).
    #[arg(long, value_enum)]
    backend: Option<Backend>,
}

impl ServeFlags {
    fn apply(self, cfg: &mut ServeConfig) {
        if let Some(v) = self.listen {
            cfg.listen = v;
        }
        if let Some(v) = self.data_dir {
            cfg.data_dir = v;
        }
        if let Some(v) = self.database {
            cfg.database = Some(v);
        }
        if let Some(v) = self.model {
            cfg.model = v;
        }
        if let Some(v) = self.eval_data {
            cfg.eval_data = Some(v);
        }
        if let Some(v) = self.rounds {
            cfg.round.max_rounds = Some(v);
        }
        if let Some(v) = self.seed {
            cfg.round.seed = Some(v);
        }
        if let Some(v) = self.backend {
            cfg.backend = v;
        }
    }
}

/// A model directory and the data it was trained on.
#[derive(clap::Args)]
struct ModelAndData {
    /// Model directory.
    #[arg(long)]
    model: PathBuf,
    /// The data the model was trained on (directory or CSV).
    #[arg(long)]
    data: PathBuf,
    /// Optional item CSV for CSV data.
    #[arg(long)]
    items: Option<PathBuf>,
}

/// The async runtime of `serve` and `simulate`.
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Structured logs to stderr, at `RUST_LOG` or `default`.
fn logs(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Resolves `--backend` (probing CUDA in a child of this executable) and says what it chose.
fn choose_backend(asked: Backend) -> Result<hearth_aggregator::Device> {
    let choice = hearth_aggregator::backend::choose(asked, hearth_aggregator::backend::probe_exe().as_deref())?;
    eprintln!("backend: {} ({})", choice.device.name(), choice.why);
    Ok(choice.device)
}

fn main() {
    if std::env::var_os(hearth_aggregator::backend::PROBE_ENV).is_some_and(|v| v == "cuda") {
        hearth_aggregator::backend::run_probe_and_exit();
    }
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train { data, items, out, test, backend, hyper } => {
            let on = choose_backend(backend)?;
            let ds = load_dataset(&data, items.as_deref())?;
            eprintln!(
                "{}: {} users, {} items, {} interactions",
                ds.name,
                ds.users.len(),
                ds.items.len(),
                ds.interactions.len()
            );
            let cfg = hyper.config();
            let order = ds.order();
            let why = match (ds.timed, order.order) {
                (false, _) => "no timestamp column".to_owned(),
                (true, o) => format!(
                    "{} of {} consecutive pairs in people's histories share a timestamp{}",
                    order.tied,
                    order.pairs,
                    if o == hearth_core::data::Order::Unordered { ": the timestamps carry no order" } else { "" }
                ),
            };
            eprintln!("data kind: {} ({why})", order.order);
            eprintln!("objective: {}", hearth_aggregator::objective_text(order.order));
            let (lo, hi) = ds.interactions.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), x| (lo.min(x.rating), hi.max(x.rating)));
            let weighs = if cfg.rating_weight == 0.0 {
                "every interaction alike (--rating-weight 0)".to_owned()
            } else if lo >= hi {
                "every interaction alike (the data has no ratings or play counts)".to_owned()
            } else {
                format!("each example by 1 + {} · ln(1 + rating) (ratings {lo} to {hi})", cfg.rating_weight)
            };
            eprintln!("loss weighs {weighs}; link: {}", cfg.link.name());
            let bar = ProgressBar::new(1);
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} steps, {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(250));
            let trained = train_model(&ds, test.as_deref(), &cfg, on, &mut |p| {
                bar.set_length(p.total_steps as u64);
                bar.set_position(p.step as u64);
                bar.set_prefix(format!("epoch {} (at most {})", p.epoch + 1, cfg.epochs));
                bar.set_message(format!("loss {:.4}", p.loss));
            })?;
            bar.finish_and_clear();
            let sel = &trained.selection;
            eprintln!("validation curve ({}; {} users):", sel.criterion, sel.validation.users);
            eprintln!("epoch   loss     score");
            for p in &sel.curve {
                let mark = if p.epoch == sel.best_epoch { "  <- chosen" } else { "" };
                eprintln!("{:>5}  {:>7.4}  {:>7.4}{mark}", p.epoch, p.loss, p.score);
            }
            let (m, pop) = (&sel.validation.model, &sel.validation.most_popular);
            eprintln!(
                "validation: two-tower sampled HR@10 {:.4}, full NDCG@10 {:.4}; most-popular {:.4}, {:.4}",
                m.sampled.hr, m.full.ndcg, pop.sampled.hr, pop.full.ndcg
            );
            if !sel.beats_most_popular {
                eprintln!();
                eprintln!("WARNING: this model does NOT beat most-popular on the validation split.");
                eprintln!("WARNING: its manifest records it (selection.beats_most_popular = false), and devices");
                eprintln!("WARNING: will lean on popular lists when they rank with it. Check the data before publishing.");
                eprintln!();
            }
            let mut bundle = trained.bundle;
            publish_model_dir(&out, &mut bundle)?;
            eprintln!(
                "trained in {:.1} s (epoch {} of {} chosen); wrote model version {} to {}",
                trained.train_seconds,
                sel.best_epoch,
                sel.curve.len(),
                bundle.manifest.model_version,
                out.display()
            );
            eprintln!("test split, scored once:");
            print!("{}", report_table(&trained.report));
        }
        Command::Shard { model } => {
            let mut bundle = read_model_dir(&model)?;
            let shard = attach_shard(&mut bundle)?;
            write_model_dir(&model, &bundle)?;
            eprintln!(
                "wrote {}: {} items x {} dims, model version {}",
                model.join(hearth_core::artifact::bundle::SHARD).display(),
                shard.len(),
                shard.dim(),
                shard.model_version()
            );
        }
        Command::Calibrate { target: ModelAndData { model, data, items }, seed } => {
            let mut bundle = read_model_dir(&model)?;
            let ds = load_dataset(&data, items.as_deref())?;
            bundle.check_dataset(&ds)?;
            let split = make_split(&ds, None)?;
            let r = fit_calibration(&bundle, &ds, &split, seed)?;
            bundle.manifest.calibration = Some(r.calibration);
            bundle.catalog.popularity = ds.item_counts(&ds.interactions);
            write_model_dir(&model, &bundle)?;
            eprintln!(
                "calibration a = {:.4}, b = {:.4}: fitted on {} examples, expected calibration error {:.4} on {} others; wrote {}",
                r.calibration.a,
                r.calibration.b,
                r.fitted_on,
                r.ece,
                r.checked_on,
                model.join("manifest.json").display()
            );
        }
        Command::Split { data, items, test, out, seed } => {
            let ds = load_dataset(&data, items.as_deref())?;
            let (train, valid, test) = hearth_aggregator::write_split(&ds, test.as_deref(), seed, &out)?;
            eprintln!(
                "wrote {}: {train} training rows, {valid} validation users, {test} test users ({} data)",
                out.display(),
                ds.order().order
            );
        }
        Command::Synth { shape, out, seed } => {
            let data = hearth_aggregator::synth::generate(shape, seed);
            std::fs::create_dir_all(&out)?;
            std::fs::write(out.join("interactions.csv"), &data.interactions)?;
            if let Some(items) = &data.items {
                std::fs::write(out.join("items.csv"), items)?;
            }
            eprintln!("wrote {} ({} rows)", out.display(), data.interactions.lines().count() - 1);
        }
        Command::Epsilon { sampling, noise, rounds, delta, clients, dim, clip, json } => {
            let distributed = clients.zip(dim).map(|(clients, dim)| hearth_aggregator::epsilon::Distributed { clients, dim, clip });
            let r = hearth_aggregator::epsilon::epsilon(sampling, noise, rounds, delta, distributed)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("{rounds} rounds, sampling {sampling}, noise multiplier {noise}: ε = {:.4} at δ = {delta} (RDP, order {})", r.rdp, r.order);
                if let Some(d) = r.distributed {
                    println!(
                        "distributed discrete Gaussian, {} survivors, {} values ({} padded), clip {clip}: ε = {:.4} (order {}; each device adds σ = {} at scale {:.1})",
                        d.clients, d.dim, d.padded, d.epsilon, d.order, d.local_sigma, d.scale
                    );
                }
            }
        }
        Command::Serve { config, over, print_config } => {
            let mut cfg = ServeConfig::load(config.as_deref())?;
            over.apply(&mut cfg);
            if print_config {
                print!("{}", cfg.to_toml());
                return Ok(());
            }
            logs("info");
            eprintln!("# hearth-aggregator serve: configuration\n{}", cfg.to_toml());
            runtime()?.block_on(async {
                let running = hearth_aggregator::serve::start(cfg).await?;
                let addr = running.addr;
                eprintln!("aggregator on http://{addr}/ (health http://{addr}/health, metrics http://{addr}/metrics, API http://{addr}/openapi.json)");
                tokio::signal::ctrl_c().await?;
                eprintln!("stopping");
                running.shutdown().await;
                Ok::<(), anyhow::Error>(())
            })?;
        }
        Command::Simulate(args) => {
            let on = choose_backend(args.backend)?;
            simulate_cli::run(args, runtime()?, on)?
        }
        Command::Rollback { store, to } => {
            runtime()?.block_on(async {
                let models = hearth_aggregator::serve::models::ModelStore::local(&store)?;
                let before = models.latest().await?;
                models.rollback(to).await?;
                eprintln!("latest: version {} -> {to} ({})", before.map_or("none".into(), |v| v.to_string()), store.display());
                Ok::<(), anyhow::Error>(())
            })?;
        }
        Command::PublishEdge { edge, token, store, version, model, json } => {
            runtime()?.block_on(async {
                let (version, files) = match &model {
                    Some(dir) => hearth_aggregator::edge::from_model_dir(dir)?,
                    None => hearth_aggregator::edge::from_store(&hearth_aggregator::serve::models::ModelStore::local(&store)?, version).await?,
                };
                let done = hearth_aggregator::edge::publish(&edge, &token, version, &files, |step| {
                    if !json {
                        eprintln!("edge: {step}");
                    }
                })
                .await?;
                if json {
                    println!("{}", serde_json::to_string(&done)?);
                } else {
                    println!("version {version} is latest at {edge} ({} of {} files new)", done.files_stored.len(), files.len());
                }
                Ok::<(), anyhow::Error>(())
            })?;
        }
        Command::Eval { target: ModelAndData { model, data, items }, test, candidates, seed, json, backend } => {
            let on = choose_backend(backend)?;
            let ds = load_dataset(&data, items.as_deref())?;
            let report = evaluate_dir(&model, &ds, test.as_deref(), candidates.as_deref(), seed, on)?;
            if json {
                println!("{}", report_json(&report));
            } else {
                print!("{}", report_table(&report));
            }
        }
    }
    Ok(())
}
