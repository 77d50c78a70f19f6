//! `hearth-aggregator serve`: federated rounds over HTTP (axum on tokio).
//!
//! - [`store`]: durable state behind one trait, SQLite by default, PostgreSQL for replicas;
//! - [`models`]: published model versions in an object store, `latest` moved last;
//! - [`rounds`]: the round owner (sampling, SecAgg+ stages with deadlines, unmasking, the server
//!   optimizer, evaluation, publishing, the privacy ledger);
//! - [`api`]: the routes, their typed errors, limits, metrics and OpenAPI document.
//!
//! Every replica serves every route and accepts submissions (committed before acknowledged);
//! the one holding the store's ownership also runs the rounds.

pub mod api;
pub mod models;
pub mod rounds;
pub mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, Device, run_on};
use models::{ModelStore, ModelStoreError};
use rounds::{Engine, Evaluator, RoundConfig};
use store::StoreError;

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The model store.
    #[error(transparent)]
    Models(#[from] ModelStoreError),
    /// A round could not proceed.
    #[error("round: {0}")]
    Round(String),
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The listener or the server.
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    /// Reading the model or the evaluation data.
    #[error(transparent)]
    Aggregator(#[from] crate::AggregatorError),
}

/// The server's configuration: embedded defaults, then a TOML file, then `HEARTH_AGGREGATOR_*`
/// environment variables, then flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where the default database and model store live.
    pub data_dir: PathBuf,
    /// `sqlite:…` or `postgres://…` (default: `sqlite:<data_dir>/aggregator.db`).
    pub database: Option<String>,
    /// The model store's directory (default: `<data_dir>/models`).
    pub model_store: Option<PathBuf>,
    /// The model the first round trains (its directory).
    pub model: PathBuf,
    /// The operator's held-out data each new model is evaluated on (a dataset the CLI reads;
    /// leave-one-out). None: no evaluation.
    pub eval_data: Option<PathBuf>,
    /// Requests with a body served at once; more are refused with 503 at once (bounds memory
    /// under a flood: at most this many bodies of `max_body_bytes`).
    pub max_in_flight: usize,
    /// Requests without a body (reads, long polls) served at once.
    pub max_polls: usize,
    /// Largest request body (default: what the largest message of the configured round needs).
    pub max_body_bytes: Option<usize>,
    /// Requests per second a device may make (token bucket), and its burst.
    pub device_rate: f64,
    /// See `device_rate`.
    pub device_burst: f64,
    /// Enrollments per second, over all callers.
    pub enroll_rate: f64,
    /// How often the round owner checks its round when nothing wakes it (ms).
    pub tick_ms: u64,
    /// Where new models are evaluated: `auto` (CUDA, else a wgpu GPU, else the CPU), `cpu`,
    /// `wgpu` or `cuda`.
    pub backend: Backend,
    /// The rounds.
    pub round: RoundConfig,
}

impl Default for ServeConfig {
    fn default() -> ServeConfig {
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            data_dir: PathBuf::from("data/aggregator"),
            database: None,
            model_store: None,
            model: PathBuf::from("models/ml100k"),
            eval_data: None,
            max_in_flight: 256,
            max_polls: 8192,
            max_body_bytes: None,
            device_rate: 50.0,
            device_burst: 100.0,
            enroll_rate: 2_000.0,
            tick_ms: 200,
            backend: Backend::Auto,
            round: RoundConfig::default(),
        }
    }
}

impl ServeConfig {
    /// Defaults, overridden by `file` (TOML) and the environment.
    pub fn load(file: Option<&Path>) -> Result<ServeConfig, ServeError> {
        let mut cfg = match file {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| ServeError::Config(format!("cannot read {}: {e}", p.display())))?;
                toml::from_str(&text).map_err(|e| ServeError::Config(format!("{}: {e}", p.display())))?
            }
            None => ServeConfig::default(),
        };
        let env = |k: &str| std::env::var(format!("HEARTH_AGGREGATOR_{k}")).ok();
        if let Some(v) = env("LISTEN") {
            cfg.listen = v.parse().map_err(|e| ServeError::Config(format!("HEARTH_AGGREGATOR_LISTEN={v}: {e}")))?;
        }
        if let Some(v) = env("DATA_DIR") {
            cfg.data_dir = v.into();
        }
        if let Some(v) = env("DATABASE") {
            cfg.database = Some(v);
        }
        if let Some(v) = env("MODEL") {
            cfg.model = v.into();
        }
        if let Some(v) = env("BACKEND") {
            cfg.backend = <Backend as clap::ValueEnum>::from_str(&v, true)
                .map_err(|e| ServeError::Config(format!("HEARTH_AGGREGATOR_BACKEND={v}: {e} (auto, cpu, wgpu or cuda)")))?;
        }
        Ok(cfg)
    }

    /// The database URL in use.
    pub fn database_url(&self) -> String {
        self.database.clone().unwrap_or_else(|| format!("sqlite:{}", self.data_dir.join("aggregator.db").display()))
    }

    /// The configuration as TOML (printed at start).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot print the configuration: {e}"))
    }
}

/// A running server.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, ends the owner loop and waits for both.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Waits until the server stops by itself (it does not, short of an error).
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// An evaluator on a dataset's leave-one-out split, scored as `eval` scores (sampled HR@10 over
/// 99 negatives drawn with seed 42, full-ranking HR@10 and NDCG@10).
pub fn evaluator_on(data: &Path, on: Device) -> Result<Evaluator, ServeError> {
    let ds = crate::load_dataset(data, None)?;
    let split = crate::make_split(&ds, None)?;
    Ok(Arc::new(move |bundle| {
        let job = crate::EvalJob { bundle, ds: &ds, split: &split, candidates: None, seed: 42 };
        let r = run_on(on, job).and_then(|r| r).map_err(|e| e.to_string())?;
        Ok([r.model.sampled.hr, r.model.full.hr, r.model.full.ndcg])
    }))
}

/// Starts the server: opens the store (migrating it), publishes the base model if the model
/// store is empty, binds, and runs the routes and the round owner.
pub async fn start(cfg: ServeConfig) -> Result<Running, ServeError> {
    let evaluator = match cfg.eval_data.as_deref() {
        Some(data) => {
            let choice = crate::backend::choose(cfg.backend, crate::backend::probe_exe().as_deref())?;
            tracing::info!(backend = choice.device.name(), why = %choice.why, "evaluation backend");
            Some(evaluator_on(data, choice.device)?)
        }
        None => None,
    };
    start_with(cfg, evaluator).await
}

/// [`start`] with the evaluator of new models given (None: none), for a caller that built one
/// already; `cfg.eval_data` and `cfg.backend` are not read.
pub async fn start_with(cfg: ServeConfig, evaluator: Option<Evaluator>) -> Result<Running, ServeError> {
    if let Some(q) = cfg.round.stage_quiet_ms.filter(|q| *q <= 0) {
        return Err(ServeError::Config(format!("round.stage_quiet_ms = {q}: a quiet time is positive (leave it out to wait for every device)")));
    }
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| ServeError::Config(format!("cannot create {}: {e}", cfg.data_dir.display())))?;
    let store: Arc<dyn store::Store> = Arc::from(store::connect(&cfg.database_url()).await?);
    let models = ModelStore::local(&cfg.model_store.clone().unwrap_or_else(|| cfg.data_dir.join("models")))?;
    let base = crate::read_model_dir(&cfg.model)?;
    let (changed, _) = tokio::sync::watch::channel(0u64);
    let wake = Arc::new(tokio::sync::Notify::new());
    let mut engine = Engine::new(store.clone(), models.clone(), cfg.round.clone(), base.clone(), evaluator, changed.clone());
    engine.init().await?;
    let app = api::App::new(store, models, &cfg, &base, changed, wake.clone());
    let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut rx = stop_rx.clone();
    let server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, api::router(app)).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "the HTTP server stopped");
        }
    });
    let owner = tokio::spawn(engine.run(Duration::from_millis(cfg.tick_ms), stop_rx, wake));
    tracing::info!(%addr, "aggregator listening");
    Ok(Running { addr, stop, tasks: vec![server, owner] })
}
