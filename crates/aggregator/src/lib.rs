//! hearth-aggregator: the native side of hearth. It trains the two-tower model on a dataset (on
//! the CPU, wgpu or CUDA, chosen at run time: [`backend`]), evaluates it beside the most-popular
//! baseline, reads and writes model directories, and runs federated rounds over HTTP ([`serve`])
//! with simulated devices ([`simulate`]).
//!
//! ```no_run
//! use hearth_aggregator::{load_dataset, train_model, Device};
//! use hearth_core::model::TrainConfig;
//! let ds = load_dataset("../shared/data/movielens-100k".as_ref(), None)?;
//! let out = train_model(&ds, None, &TrainConfig::default(), Device::Cpu, &mut |_| {})?;
//! let mut bundle = out.bundle;
//! hearth_aggregator::publish_model_dir("models/ml100k".as_ref(), &mut bundle)?;
//! # Ok::<(), hearth_aggregator::AggregatorError>(())
//! ```

pub mod backend;
pub mod calibrate;
pub mod edge;
pub mod epsilon;
pub mod error;
pub mod io;
pub mod report;
pub mod serve;
pub mod simulate;
pub mod synth;
pub mod train;

pub use calibrate::{CalibrationReport, fit_calibration};
pub use error::{AggregatorError, Result};
pub use io::{attach_shard, load_dataset, make_split, publish_model_dir, published_version, read_model_dir, write_model_dir, write_split};
pub use backend::{Backend, Choice, Device};
pub use report::{EvalJob, Report, evaluate_dir, evaluate_model, report_json, report_table};
pub use train::{POPULAR_MARGIN, SELECTION_CRITERION, Trained, beats, objective_text, train_model};

/// Cut-off used for every reported metric.
pub const K: usize = 10;
/// Negatives sampled per held-out item in the sampled protocol.
pub const NEGATIVES: usize = 99;
