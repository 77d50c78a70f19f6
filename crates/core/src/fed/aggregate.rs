//! The server's side of a round after secure aggregation: the decoded, range-checked sum of the
//! survivors' noised updates → their mean → a server optimizer step on the global parameters
//! (FedAvg with a server learning rate, or FedAdam: Reddi et al., "Adaptive Federated
//! Optimization", ICLR 2021) → the next global parameters. Plain Rust over flat vectors: no
//! burn, so the aggregator's round loop does not depend on a training backend.

use serde::{Deserialize, Serialize};

use crate::artifact::TensorFile;
use crate::privacy::rdp::Mechanism;
use crate::secagg::server::Outcome;

use super::layout::Layout;
use super::plan::RoundPlan;
use super::FedError;

/// How the server turns the mean update into a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ServerOptimizer {
    /// `params += lr · mean` (FedAvg with a server learning rate; lr 1 is plain FedAvg).
    FedAvg {
        /// Server learning rate.
        lr: f64,
    },
    /// Adam on the mean update as a pseudo-gradient, with adaptivity `tau`.
    FedAdam {
        /// Server learning rate.
        lr: f64,
        /// First-moment decay.
        beta1: f64,
        /// Second-moment decay.
        beta2: f64,
        /// Adaptivity (ε of Adam; Reddi et al. use 1e-3).
        tau: f64,
    },
}

/// The optimizer with its moments, kept by the aggregator across rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerState {
    /// The optimizer.
    pub optimizer: ServerOptimizer,
    /// First moments (FedAdam).
    #[serde(default)]
    pub m: Vec<f64>,
    /// Second moments (FedAdam).
    #[serde(default)]
    pub v: Vec<f64>,
}

impl ServerState {
    /// A fresh state.
    pub fn new(optimizer: ServerOptimizer) -> ServerState {
        ServerState { optimizer, m: vec![], v: vec![] }
    }

    /// One step: moves `params` by the mean update.
    pub fn step(&mut self, params: &mut [f32], mean: &[f64]) -> Result<(), FedError> {
        if params.len() != mean.len() {
            return Err(FedError::Shape(format!("{} parameters, an update of {}", params.len(), mean.len())));
        }
        match self.optimizer {
            ServerOptimizer::FedAvg { lr } => {
                for (p, d) in params.iter_mut().zip(mean) {
                    *p = (f64::from(*p) + lr * d) as f32;
                }
            }
            ServerOptimizer::FedAdam { lr, beta1, beta2, tau } => {
                if self.m.len() != mean.len() {
                    self.m = vec![0.0; mean.len()];
                    self.v = vec![tau * tau; mean.len()];
                }
                for (((p, d), m), v) in params.iter_mut().zip(mean).zip(&mut self.m).zip(&mut self.v) {
                    *m = beta1 * *m + (1.0 - beta1) * d;
                    *v = beta2 * *v + (1.0 - beta2) * d * d;
                    *p = (f64::from(*p) + lr * *m / (v.sqrt() + tau)) as f32;
                }
            }
        }
        Ok(())
    }
}

/// What one round did, for the operator's report and the privacy ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundReport {
    /// Devices whose updates are in the sum.
    pub survivors: u32,
    /// Devices that shared keys but dropped before their masked update.
    pub dropped: u32,
    /// L2 norm of the mean update (noise included).
    pub mean_update_norm: f64,
    /// The noise's standard deviation in the mean, per coordinate.
    pub mean_noise_stddev: f64,
    /// What the round ran, for the accountant (`None` without noise: no privacy claim).
    pub mechanism: Option<Mechanism>,
}

/// The next global parameters from a completed secure-aggregation round: decodes and checks the
/// sum (a sum outside what the survivors could produce drops the round: [`FedError::Noise`]),
/// takes the mean and steps the optimizer.
pub fn aggregate(plan: &RoundPlan, layout: &Layout, global: &TensorFile, outcome: &Outcome, state: &mut ServerState) -> Result<(TensorFile, RoundReport), FedError> {
    let survivors = outcome.survivors.len() as u32;
    if survivors == 0 {
        return Err(FedError::Plan("no survivors".into()));
    }
    let ddg = plan.ddg(layout.len())?;
    let sum = ddg.decode(&outcome.sum, plan.rotation_seed, survivors)?;
    let n = f64::from(survivors);
    let mean: Vec<f64> = sum.iter().map(|v| v / n).collect();
    let mut params = layout.flatten(global)?;
    state.step(&mut params, &mean)?;
    let mut next = global.clone();
    layout.write(&mut next, &params)?;
    let report = RoundReport {
        survivors,
        dropped: outcome.dropped.len() as u32,
        mean_update_norm: mean.iter().map(|v| v * v).sum::<f64>().sqrt(),
        mean_noise_stddev: ddg.sum_noise_stddev(survivors) / n,
        mechanism: (plan.noise.noise_multiplier > 0.0).then(|| ddg.mechanism(plan.sampling_rate, survivors)),
    };
    Ok((next, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fedavg_and_fedadam_step_toward_the_update() {
        let mut p = vec![1.0f32, -1.0];
        ServerState::new(ServerOptimizer::FedAvg { lr: 0.5 }).step(&mut p, &[2.0, 2.0]).unwrap();
        assert_eq!(p, [2.0, 0.0]);
        let mut s = ServerState::new(ServerOptimizer::FedAdam { lr: 0.1, beta1: 0.9, beta2: 0.99, tau: 1e-3 });
        let mut p = vec![0.0f32; 2];
        for _ in 0..5 {
            s.step(&mut p, &[1.0, -0.01]).unwrap();
        }
        // Adam normalises the step per coordinate: both move about lr per step, in the update's sign.
        assert!(p[0] > 0.4 && p[0] < 1.0 && p[1] < -0.1, "{p:?}");
        assert!(matches!(s.step(&mut p, &[1.0]), Err(FedError::Shape(_))));
    }
}
