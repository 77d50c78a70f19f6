//! Federated learning: the round plan every party reads, the federated part of the global
//! parameters, the device's local training (Federated Reconstruction: the personal vector is
//! rebuilt on the device and never sent) and the server's aggregation and optimizers. Sans-IO:
//! the aggregator and the browser move the bytes.
//!
//! - [`plan`]: `RoundPlan` (versioned wire format).
//! - [`layout`]: which tensors of `global.bin` a round trains, flattened.
//! - [`aggregate`]: decode the secure sum, mean, FedAvg / FedAdam, the round's report.
//! - `client` (feature `model`): a device's round: local training → delta → clip, rotate, round,
//!   noise (`privacy::ddg`) → masked input (`secagg`).

pub mod aggregate;
#[cfg(feature = "model")]
pub mod client;
pub mod layout;
pub mod plan;

use crate::privacy::ddg::DdgError;

/// Why a federated step failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FedError {
    /// A plan that does not decode.
    #[error("malformed round plan: {0}")]
    Malformed(String),
    /// A plan that decodes but cannot be run.
    #[error("round plan: {0}")]
    Plan(String),
    /// Parameters of another shape than the plan's model.
    #[error("parameter shapes: {0}")]
    Shape(String),
    /// Encoding an update or decoding a sum failed (an out-of-range sum drops the round).
    #[error(transparent)]
    Noise(#[from] DdgError),
    /// Local training failed.
    #[error("local training: {0}")]
    Training(String),
}
