//! The library's typed error: every failure names what it was doing and the file involved, so
//! the CLI (which wraps it in `anyhow` for its exit message) and, next, the server can report it.

use std::path::PathBuf;

use hearth_core::artifact::bundle::BundleError;
use hearth_core::data::DataError;
use hearth_core::model::TrainError;

/// Why an aggregator operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AggregatorError {
    /// A file or directory could not be read or written.
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        /// What was being done (`read`, `write`, `create`, `sync`, `rename`).
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The dataset path does not exist.
    #[error("data not found: {} does not exist", .0.display())]
    NoData(PathBuf),
    /// A directory that is not in the MovieLens 100K layout.
    #[error("{} is a directory without u.data (expected the MovieLens 100K layout, or give a CSV file)", .0.display())]
    NotMovieLens(PathBuf),
    /// The data is malformed (the error names the file and line).
    #[error(transparent)]
    Data(Box<DataError>),
    /// The model directory does not exist.
    #[error("model directory {} does not exist", .0.display())]
    NoModelDir(PathBuf),
    /// The model directory's files are damaged, incomplete or do not fit the data.
    #[error("the model in {}: {source}", dir.display())]
    ModelDir {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: Box<BundleError>,
    },
    /// A model bundle is inconsistent.
    #[error(transparent)]
    Bundle(Box<BundleError>),
    /// Training refused its configuration or failed.
    #[error(transparent)]
    Train(Box<TrainError>),
    /// The backend asked for cannot run here (not compiled in, no library, no device).
    #[error("backend: {0}")]
    Backend(String),
    /// Calibration found no held-out pair to fit on (every user touched every other item, or
    /// there are no held-out users).
    #[error("calibration needs held-out positives and negatives, and this data has none")]
    NoCalibrationData,
    /// A privacy computation refused its inputs (sampling rate, noise, δ, plan).
    #[error("privacy accounting: {0}")]
    Privacy(String),
    /// The directory holds a model whose version cannot be read, so the next is unknown.
    #[error("{} holds no readable model version, so the next one is unknown: repair or remove it before publishing", .0.display())]
    UnreadableVersion(PathBuf),
    /// The directory's model version is the largest there is.
    #[error("the model version would overflow")]
    VersionOverflow,
    /// A value could not be encoded as JSON.
    #[error("cannot encode {what} as JSON: {source}")]
    Json {
        /// What.
        what: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

impl From<DataError> for AggregatorError {
    fn from(e: DataError) -> Self {
        AggregatorError::Data(Box::new(e))
    }
}

impl From<BundleError> for AggregatorError {
    fn from(e: BundleError) -> Self {
        AggregatorError::Bundle(Box::new(e))
    }
}

impl From<TrainError> for AggregatorError {
    fn from(e: TrainError) -> Self {
        AggregatorError::Train(Box::new(e))
    }
}

/// The library's result type.
pub type Result<T, E = AggregatorError> = std::result::Result<T, E>;

/// An IO error with what was being done and where.
pub(crate) fn io(what: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> AggregatorError + use<> {
    let path = path.to_path_buf();
    move |source| AggregatorError::Io { what, path, source }
}
