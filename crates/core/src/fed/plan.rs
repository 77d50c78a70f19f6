//! A federated round's plan, as the aggregator advertises it and every device reads it: which
//! model version and which parameter groups are trained, how each device trains, clips and adds
//! its noise, who it aggregates with, and when the round ends. Framed like every wire message
//! (`HRTHPLAN`, a version byte, a length-checked JSON body) and fuzzed.

use serde::{Deserialize, Serialize};

use crate::codec::{Reader, Writer};
use crate::privacy::ddg::{DdgConfig, DdgPlan};
use crate::secagg::Params;

use super::FedError;

/// The plan's magic.
pub const PLAN_MAGIC: &[u8; 8] = b"HRTHPLAN";
/// The plan format this build writes and reads.
pub const PLAN_VERSION: u8 = 1;
/// The largest plan accepted.
pub const MAX_PLAN: usize = 64 << 10;

/// Groups of the global parameters a round may train (each a set of tensors of `global.bin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Group {
    /// The user tower's dense part: the MLP, recency weights and tag embeddings of history
    /// items and users (`w1`, `b1`, `w2`, `b2`, `recency`, `hist_tag`, `user_tag`).
    Tower,
    /// The item tower's tag embeddings (`item_tag`).
    ItemTags,
    /// The item-id embeddings the user tower reads history with (`hist_id`).
    HistoryItems,
    /// The item-id embeddings of the item tower (`item_id`).
    Items,
}

impl Group {
    /// The tensors of this group.
    pub fn tensors(self) -> &'static [&'static str] {
        match self {
            Group::Tower => &["b1", "b2", "hist_tag", "recency", "user_tag", "w1", "w2"],
            Group::ItemTags => &["item_tag"],
            Group::HistoryItems => &["hist_id"],
            Group::Items => &["item_id"],
        }
    }
}

/// How a device trains in a round (Federated Reconstruction: the personal vector is fitted
/// first with the global parameters frozen, then the global parameters with it frozen).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalTraining {
    /// Steps fitting the person's own vector (never sent).
    pub reconstruction_steps: u32,
    /// Learning rate of those steps.
    pub reconstruction_lr: f64,
    /// Passes over the person's history training the global parameters.
    pub epochs: u32,
    /// Examples per step (the person's interactions as targets).
    pub batch: u32,
    /// Learning rate of the local steps (plain SGD).
    pub lr: f64,
    /// Negatives per step.
    pub negatives: u32,
    /// Seed of the local shuffles and negatives (mixed with the device's own randomness).
    pub seed: u64,
    /// The user-vector penalty of the local steps (None: the model's `user_l2`). Central
    /// training penalises the tower's output plus a free personal vector, which takes part of
    /// the penalty; a device training with its personal vector at zero puts all of it on the
    /// tower's output, so a round may lower it (on MovieLens 0 was better, BENCHMARKS.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_l2: Option<f64>,
}

impl Default for LocalTraining {
    fn default() -> LocalTraining {
        LocalTraining { reconstruction_steps: 20, reconstruction_lr: 0.5, epochs: 1, batch: 32, lr: 0.05, negatives: 256, seed: 1, user_l2: None }
    }
}

/// One round's plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundPlan {
    /// The model version this round trains (a device on another version does not take part).
    pub model_version: u32,
    /// The parameter groups trained and sent (a dense update of all of them).
    pub groups: Vec<Group>,
    /// Local training.
    pub local: LocalTraining,
    /// Clipping and distributed noise (the clip is the update's L2 bound).
    pub noise: DdgConfig,
    /// The probability each enrolled device was invited with (Poisson sampling), for the
    /// accountant.
    pub sampling_rate: f64,
    /// The δ the round's ε is reported at.
    pub delta: f64,
    /// Secure aggregation: round id, clients, degree, threshold, minimum survivors, words.
    pub secagg: Params,
    /// The public seed of the update's rotation.
    pub rotation_seed: [u8; 32],
    /// The seed of the secure-aggregation graph.
    pub graph_seed: [u8; 32],
    /// When the round closes (ms since the Unix epoch).
    pub deadline_ms: i64,
}

impl RoundPlan {
    /// The round id as text (for the ledger and logs).
    pub fn round_id(&self) -> String {
        self.secagg.round.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The distributed-noise plan for an update of `dim` values.
    pub fn ddg(&self, dim: usize) -> Result<DdgPlan, FedError> {
        Ok(DdgPlan::new(dim, &self.noise)?)
    }

    /// Checks that the plan is coherent: groups named once, finite positive rates, the secure
    /// aggregation's words equal to the update's padded length for `dim` federated values.
    pub fn check(&self, dim: usize) -> Result<(), FedError> {
        let bad = |m: String| Err(FedError::Plan(m));
        let mut g = self.groups.clone();
        g.sort_unstable();
        g.dedup();
        if g.is_empty() || g.len() != self.groups.len() {
            return bad("the groups must be named once each, at least one".into());
        }
        let l = &self.local;
        if !(l.lr.is_finite() && l.lr > 0.0 && l.reconstruction_lr.is_finite() && l.reconstruction_lr > 0.0) || l.batch == 0 || l.epochs == 0 || l.epochs > 100 {
            return bad("local training needs positive learning rates, a batch and 1 to 100 epochs".into());
        }
        if l.user_l2.is_some_and(|p| !(p.is_finite() && p >= 0.0)) {
            return bad(format!("a local user-vector penalty of {:?}", l.user_l2));
        }
        if !((0.0..=1.0).contains(&self.sampling_rate) && self.delta > 0.0 && self.delta < 1.0) {
            return bad(format!("sampling rate {} and delta {} must be in [0, 1] and (0, 1)", self.sampling_rate, self.delta));
        }
        self.secagg.check().map_err(|e| FedError::Plan(e.to_string()))?;
        let padded = self.ddg(dim)?.padded;
        if self.secagg.dim as usize != padded {
            return bad(format!("secure aggregation sums {} words, the update has {padded}", self.secagg.dim));
        }
        if self.noise.min_survivors > self.secagg.min_survivors.max(1) && self.noise.noise_multiplier > 0.0 {
            return bad(format!(
                "the noise is sized for {} survivors, but secure aggregation accepts {}",
                self.noise.min_survivors, self.secagg.min_survivors
            ));
        }
        Ok(())
    }

    /// The framed plan.
    pub fn encode(&self) -> Vec<u8> {
        // A plan holds no map with non-string keys and no non-finite float (check() refuses
        // them), so serialising cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        let mut w = Writer::new(PLAN_MAGIC);
        w.u8(PLAN_VERSION).u32(json.len() as u32).bytes(&json);
        w.finish()
    }

    /// Reads a framed plan. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<RoundPlan, FedError> {
        let mut r = Reader::open(bytes, PLAN_MAGIC, MAX_PLAN).map_err(|e| FedError::Malformed(e.to_string()))?;
        let version = r.u8().map_err(|e| FedError::Malformed(e.to_string()))?;
        if version != PLAN_VERSION {
            return Err(FedError::Malformed(format!("plan version {version}; this build reads {PLAN_VERSION}")));
        }
        let len = r.u32().map_err(|e| FedError::Malformed(e.to_string()))? as usize;
        let json = r.take(len).map_err(|e| FedError::Malformed(e.to_string()))?;
        r.end("bytes after the plan").map_err(|e| FedError::Malformed(e.to_string()))?;
        serde_json::from_slice(json).map_err(|e| FedError::Malformed(format!("plan: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(local: LocalTraining) -> RoundPlan {
        let noise = DdgConfig { min_survivors: 10, max_clients: 20, ..DdgConfig::default() };
        let padded = DdgPlan::new(100, &noise).unwrap().padded as u32;
        RoundPlan {
            model_version: 3,
            groups: vec![Group::Tower],
            local,
            noise,
            sampling_rate: 0.1,
            delta: 1e-5,
            secagg: Params::for_clients([1; 16], 20, padded, 10),
            rotation_seed: [2; 32],
            graph_seed: [3; 32],
            deadline_ms: 0,
        }
    }

    #[test]
    fn a_local_penalty_is_optional_on_the_wire_and_checked() {
        let default = plan(LocalTraining::default());
        default.check(100).unwrap();
        let bytes = default.encode();
        assert!(!String::from_utf8_lossy(&bytes).contains("user_l2"), "a plan without one writes what plans before it did");
        assert_eq!(RoundPlan::decode(&bytes).unwrap(), default);
        let zero = plan(LocalTraining { user_l2: Some(0.0), ..LocalTraining::default() });
        zero.check(100).unwrap();
        assert_eq!(RoundPlan::decode(&zero.encode()).unwrap().local.user_l2, Some(0.0));
        for bad in [-0.1, f64::NAN, f64::INFINITY] {
            let p = plan(LocalTraining { user_l2: Some(bad), ..LocalTraining::default() });
            assert!(matches!(p.check(100), Err(FedError::Plan(_))), "{bad}");
        }
    }
}
