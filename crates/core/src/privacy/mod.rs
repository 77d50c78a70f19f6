//! Differential privacy for federated rounds: what a device adds before its update leaves it,
//! and what the person and the operator have spent.
//!
//! - [`rdp`]: the accountant (Rényi DP of the Poisson-subsampled Gaussian exactly as Google's
//!   dp-accounting 0.6.0, and of the sum of discrete Gaussians a round really adds; RDP → (ε, δ)).
//! - [`noise`]: the exact discrete Gaussian sampler (integer arithmetic, a cryptographic RNG).
//! - [`ddg`]: the distributed discrete Gaussian mechanism: rotation, scaling, conditional
//!   stochastic rounding, each device's share of the noise, 32-bit words for secure aggregation;
//!   the server's decoding and range checks.
//! - [`ledger`]: the person's budget, kept in their synced history so all their devices share it.

pub mod rdp;
pub mod noise;
pub mod ddg;
pub mod ledger;
