//! What a privacy budget buys: ε of a planned number of rounds, for operators choosing the
//! sampling rate, noise and round count (`hearth-aggregator epsilon`). The central Gaussian's ε is
//! dp-accounting's; the distributed mechanism's is what hearth's rounds really run (the sum of
//! the survivors' discrete Gaussians over their scaled, rounded updates).

use hearth_core::privacy::ddg::{DdgConfig, DdgPlan};
use hearth_core::privacy::rdp::{Accountant, Mechanism, integer_orders};
use serde::Serialize;

use crate::error::{AggregatorError, Result};

/// The distributed mechanism's parameters, when the operator gives them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Distributed {
    /// Survivors whose noise is in each round's sum (the round's minimum).
    pub clients: u32,
    /// Values in each update (the federated parameter count).
    pub dim: usize,
    /// The update's L2 clip.
    pub clip: f64,
}

/// ε of the distributed mechanism, with the plan it implies.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DistributedEpsilon {
    /// ε at δ.
    pub epsilon: f64,
    /// The RDP order it was reached at.
    pub order: f64,
    /// Survivors per round.
    pub clients: u32,
    /// Values per update, and after padding.
    pub dim: usize,
    /// See `dim`.
    pub padded: usize,
    /// Each device's discrete Gaussian σ (integer units) and the scale to them.
    pub local_sigma: u64,
    /// See `local_sigma`.
    pub scale: f64,
}

/// The report `epsilon` prints.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EpsilonReport {
    /// ε at δ of the Poisson-subsampled Gaussian (dp-accounting's RDP accountant).
    pub rdp: f64,
    /// The order it was reached at.
    pub order: f64,
    /// Sampling rate.
    pub sampling: f64,
    /// Noise multiplier.
    pub noise: f64,
    /// Rounds.
    pub rounds: u32,
    /// δ.
    pub delta: f64,
    /// The distributed mechanism's ε, when its parameters were given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distributed: Option<DistributedEpsilon>,
}

/// ε after `rounds` rounds at sampling rate `sampling` and noise multiplier `noise`.
pub fn epsilon(sampling: f64, noise: f64, rounds: u32, delta: f64, distributed: Option<Distributed>) -> Result<EpsilonReport> {
    let bad = |e: String| AggregatorError::Privacy(e);
    let mut central = Accountant::default();
    central.compose(&Mechanism::SubsampledGaussian { q: sampling, noise_multiplier: noise }, rounds).map_err(|e| bad(e.to_string()))?;
    let (rdp, order) = central.epsilon(delta).map_err(|e| bad(e.to_string()))?;
    let distributed = match distributed {
        None => None,
        Some(d) => {
            let plan = DdgPlan::new(d.dim, &DdgConfig { clip: d.clip, noise_multiplier: noise, min_survivors: d.clients, max_clients: d.clients, ..DdgConfig::default() })
                .map_err(|e| bad(e.to_string()))?;
            let mut a = Accountant::with_orders(integer_orders());
            a.compose(&plan.mechanism(sampling, d.clients), rounds).map_err(|e| bad(e.to_string()))?;
            let (epsilon, order) = a.epsilon(delta).map_err(|e| bad(e.to_string()))?;
            Some(DistributedEpsilon { epsilon, order, clients: d.clients, dim: d.dim, padded: plan.padded, local_sigma: plan.local_sigma, scale: plan.scale })
        }
    };
    Ok(EpsilonReport { rdp, order, sampling, noise, rounds, delta, distributed })
}

/// The noise multiplier whose rounds reach cumulative ε = `target` at `delta` after `rounds`
/// rounds of `clients` survivors sampled at rate `q`, for updates of `dim` values clipped to
/// `clip` (the distributed mechanism the rounds really run; bisection to 1e-6 relative).
pub fn noise_for_epsilon(target: f64, rounds: u32, clients: u32, q: f64, dim: usize, clip: f64, delta: f64) -> Result<f64> {
    let bad = |e: String| AggregatorError::Privacy(e);
    let eps = |z: f64| -> Result<f64> {
        let plan = DdgPlan::new(dim, &DdgConfig { clip, noise_multiplier: z, min_survivors: clients, max_clients: clients, ..DdgConfig::default() }).map_err(|e| bad(e.to_string()))?;
        let mut a = Accountant::with_orders(integer_orders());
        a.compose(&plan.mechanism(q, clients), rounds).map_err(|e| bad(e.to_string()))?;
        Ok(a.epsilon(delta).map_err(|e| bad(e.to_string()))?.0)
    };
    if !(target.is_finite() && target > 0.0) {
        return Err(bad(format!("a target ε of {target}")));
    }
    let (mut lo, mut hi) = (0.05f64, 200.0f64);
    for _ in 0..60 {
        let mid = (lo * hi).sqrt();
        if eps(mid)? > target {
            lo = mid
        } else {
            hi = mid
        }
    }
    Ok(hi)
}
