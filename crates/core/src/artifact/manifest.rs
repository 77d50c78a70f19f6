//! `manifest.json` of a model directory: what the model is (architecture, sizes, link, version),
//! what it was trained on, how it scored, its calibration, and every file's SHA-256.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::eval::Metrics;


/// `manifest.json` of a model directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelManifest {
    /// Always `"hearth-model"`.
    pub format: String,
    /// Version of the model directory layout ([`MODEL_FORMAT_VERSION`]).
    pub format_version: u32,
    /// Model version, bumped on each publish of a model with this name.
    pub model_version: u32,
    /// Architecture id, e.g. `"two-tower-v1"`.
    pub architecture: String,
    /// Sizes the parameters must have.
    pub dims: ModelDims,
    /// What the model was trained on.
    pub dataset: DatasetInfo,
    /// Training settings.
    pub hyper: serde_json::Value,
    /// Metrics measured right after training (leave-one-out on the training data's split).
    pub metrics: Option<ManifestMetrics>,
    /// SHA-256 (hex) of each parameter file in the directory.
    pub files: BTreeMap<String, String>,
    /// Platt calibration of a person's scores into the "% match" shown beside each item (fitted
    /// on held-out data by `hearth-aggregator train` / `calibrate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<crate::eval::Calibration>,
    /// How training chose this model on its validation split, and whether it beat most-popular
    /// there (absent for models trained before validation existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<Selection>,
}

/// How a model's score `z = u·v` becomes the logit its softmax was trained on. Both links are
/// increasing, so ranking by `z` is the same under either; they differ in what training can
/// express, and a device fine-tuning a person's vector must use the link the model was trained
/// with ([`ModelManifest::link`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Link {
    /// `logit = z`: the plain softmax, `p(i|u) ∝ exp(u·v)`. A dot product of width d can then
    /// only express log-probabilities of rank d (the "softmax bottleneck", Yang et al., ICLR
    /// 2018), while a mixture of tastes has probabilities of low rank, not log-probabilities.
    /// Models trained before links existed record none and used this.
    #[default]
    Exp,
    /// `logit = ln softplus(z)`: `p(i|u) ∝ softplus(u·v)`, linear in `z` where `z` is large and
    /// `exp(z)` where it is negative, so a mixture of a person's tastes is a sum of vectors
    /// (a non-exponential output function breaks the bottleneck: Kanai et al., NeurIPS 2018).
    Softplus,
}

impl Link {
    /// The name manifests and the page use.
    pub fn name(self) -> &'static str {
        match self {
            Link::Exp => "exp",
            Link::Softplus => "softplus",
        }
    }

}

impl std::str::FromStr for Link {
    type Err = String;

    /// Reads a name written by [`Link::name`].
    fn from_str(name: &str) -> Result<Link, String> {
        [Link::Exp, Link::Softplus]
            .into_iter()
            .find(|l| l.name() == name)
            .ok_or_else(|| format!("unknown link {name:?} (softplus or exp)"))
    }
}

impl ModelManifest {
    /// The link the model was trained with (`hyper.link`; [`Link::Exp`] when absent).
    pub fn link(&self) -> Result<Link, String> {
        match self.hyper.get("link") {
            None | Some(serde_json::Value::Null) => Ok(Link::Exp),
            Some(v) => v.as_str().ok_or_else(|| format!("unknown link {v}"))?.parse(),
        }
    }

    /// How much a device may trust the model's personal list against the popular one when it
    /// fuses them (`rank::RankConfig::personal_trust`): 1 for a model that beat most-popular on
    /// validation (or records no check), 0.5 for one that did not, so such a model's lists lean
    /// on what is popular.
    pub fn personal_trust(&self) -> f32 {
        match &self.selection {
            Some(s) if !s.beats_most_popular => 0.5,
            _ => 1.0,
        }
    }
}

/// Model selection on the validation split (each user's latest remaining training interaction,
/// or a random one for unordered data): the test split is never read by it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    /// The kind of data training saw (`sequential` or `unordered`).
    pub order: crate::data::Order,
    /// What the objective predicted from what.
    pub objective: String,
    /// The score early stopping maximised.
    pub criterion: String,
    /// The epoch the model is from (1-based).
    pub best_epoch: usize,
    /// Every epoch trained: loss and validation score.
    pub curve: Vec<ValidationPoint>,
    /// The chosen model and most-popular on the validation split, in the same run.
    pub validation: ManifestMetrics,
    /// Whether the model beat most-popular on validation (full-ranking NDCG@10 and sampled
    /// HR@10); `false` makes devices lean on popular lists ([`ModelManifest::personal_trust`]).
    pub beats_most_popular: bool,
}

/// One epoch of the validation curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ValidationPoint {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub loss: f64,
    /// The validation score after the epoch.
    pub score: f64,
}

/// Current model directory layout version.
pub const MODEL_FORMAT_VERSION: u32 = 1;

/// Dimensions of a two-tower model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelDims {
    /// Number of catalog items.
    pub items: usize,
    /// Number of item tags (content features).
    pub item_tags: usize,
    /// Number of user tags (demographics).
    pub user_tags: usize,
    /// Number of users with a personal embedding in `personal.bin` (0 if none shipped).
    pub users: usize,
    /// Embedding width.
    pub dim: usize,
    /// Hidden width of the user tower's MLP.
    pub hidden: usize,
    /// History items the user tower reads (most recent first).
    pub history: usize,
}

/// Dataset identity recorded with a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// Dataset name.
    pub name: String,
    /// [`crate::data::Dataset::fingerprint`].
    pub fingerprint: String,
    /// Users in the dataset.
    pub users: usize,
    /// Items in the dataset.
    pub items: usize,
    /// Interactions in the dataset.
    pub interactions: usize,
    /// How the evaluation split was made.
    pub split: String,
}

/// Metrics recorded in a manifest: the model and the most-popular baseline, same run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ManifestMetrics {
    /// The model.
    pub model: Metrics,
    /// Most-popular baseline.
    pub most_popular: Metrics,
    /// Users evaluated.
    pub users: usize,
    /// Seed of negative sampling and tie-breaking.
    pub seed: u64,
}
