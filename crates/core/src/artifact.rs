//! Model artifacts: the manifest of a model directory and the `TensorFile` format that holds
//! named f32 tensors (global or personal parameters).
//!
//! Both are plain Rust with no burn dependency, so the browser's page module can read the same
//! global parameters that burn trained.
//!
//! `TensorFile` layout (little-endian):
//! `b"HRTHTNSR"` · version u8 (=1) · count u32 · per tensor: name length u16, name (UTF-8),
//! rank u8, dims u32 × rank, f32 × product(dims) · SHA-256 of everything before (32 bytes).
//!
//! ```
//! use hearth_core::artifact::TensorFile;
//! let mut f = TensorFile::default();
//! f.insert("w", vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]);
//! let bytes = f.encode();
//! assert_eq!(TensorFile::decode(&bytes).unwrap(), f);
//! ```

use std::collections::BTreeMap;

/// SHA-256 of `bytes` (ring), fed in 64 KiB pieces. Same digest as one call; the pieces matter in
/// browsers: V8 swaps optimized code in for a wasm function only at its next call, and ring hashes
/// a whole buffer in one call of its block function, so a megabyte hashed at once runs entirely
/// in V8's baseline tier (~17 MB/s here) while pieces let the optimized code take over.
pub fn sha256(bytes: &[u8]) -> ring::digest::Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for piece in bytes.chunks(64 << 10) {
        ctx.update(piece);
    }
    ctx.finish()
}

use serde::{Deserialize, Serialize};

use crate::eval::Metrics;

/// Magic bytes of a tensor file.
pub const TENSOR_MAGIC: &[u8; 8] = b"HRTHTNSR";
/// Current tensor file version.
pub const TENSOR_VERSION: u8 = 1;
/// Largest tensor file `decode` accepts (1 GiB): anything larger is refused before allocation.
pub const MAX_TENSOR_FILE: usize = 1 << 30;

/// Why an artifact could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ArtifactError {
    /// The bytes do not start with the expected magic.
    #[error("not a hearth tensor file (bad magic)")]
    BadMagic,
    /// The file's version is not one this build reads.
    #[error("tensor file version {0} is not supported (this build reads version {TENSOR_VERSION})")]
    UnsupportedVersion(u8),
    /// The file ends early or has bytes left over.
    #[error("tensor file is truncated or malformed: {0}")]
    Malformed(&'static str),
    /// The checksum does not match the contents.
    #[error("tensor file checksum mismatch (corrupt file)")]
    Checksum,
    /// Larger than [`MAX_TENSOR_FILE`].
    #[error("tensor file of {0} bytes exceeds the {MAX_TENSOR_FILE}-byte limit")]
    TooLarge(usize),
    /// A required tensor is absent.
    #[error("tensor {0:?} is missing")]
    MissingTensor(String),
    /// A tensor has another shape than the manifest says.
    #[error("tensor {name:?} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// Tensor name.
        name: String,
        /// Shape in the file.
        found: Vec<usize>,
        /// Shape the manifest implies.
        expected: Vec<usize>,
    },
}

/// One named tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// A set of named f32 tensors, ordered by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TensorFile {
    /// Tensors by name.
    pub tensors: BTreeMap<String, NamedTensor>,
}

impl TensorFile {
    /// Adds (or replaces) a tensor.
    ///
    /// # Panics
    /// If `values.len()` is not the product of `shape` (a programming error, not input).
    pub fn insert(&mut self, name: &str, shape: Vec<usize>, values: Vec<f32>) {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "shape does not match values");
        self.tensors.insert(name.to_owned(), NamedTensor { shape, values });
    }

    /// The tensor `name`, checked to have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<&NamedTensor, ArtifactError> {
        let t = self.tensors.get(name).ok_or_else(|| ArtifactError::MissingTensor(name.to_owned()))?;
        if t.shape != shape {
            return Err(ArtifactError::ShapeMismatch {
                name: name.to_owned(),
                found: t.shape.clone(),
                expected: shape.to_vec(),
            });
        }
        Ok(t)
    }

    /// Serialises to bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(TENSOR_MAGIC);
        out.push(TENSOR_VERSION);
        out.extend_from_slice(&(self.tensors.len() as u32).to_le_bytes());
        for (name, t) in &self.tensors {
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.push(t.shape.len() as u8);
            for &d in &t.shape {
                out.extend_from_slice(&(d as u32).to_le_bytes());
            }
            for v in &t.values {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        let digest = sha256(&out);
        out.extend_from_slice(digest.as_ref());
        out
    }

    /// Parses bytes, checking magic, version, structure and checksum. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<TensorFile, ArtifactError> {
        Self::decode_inner(bytes, true)
    }

    /// Parses bytes whose SHA-256, trailer included, was just checked against a digest recorded
    /// elsewhere (a model manifest's): the trailer then proves nothing more, so it is not hashed
    /// again (on a device that is a megabyte of hashing saved on the way to the first
    /// recommendations). Magic, version and structure are checked as by [`TensorFile::decode`].
    /// Never panics.
    pub fn decode_digest_verified(bytes: &[u8]) -> Result<TensorFile, ArtifactError> {
        Self::decode_inner(bytes, false)
    }

    fn decode_inner(bytes: &[u8], check_trailer: bool) -> Result<TensorFile, ArtifactError> {
        if bytes.len() > MAX_TENSOR_FILE {
            return Err(ArtifactError::TooLarge(bytes.len()));
        }
        if bytes.len() < 8 || &bytes[..8] != TENSOR_MAGIC {
            return Err(ArtifactError::BadMagic);
        }
        let mut r = Reader { bytes, pos: 8 };
        let version = r.u8()?;
        if version != TENSOR_VERSION {
            return Err(ArtifactError::UnsupportedVersion(version));
        }
        if bytes.len() < 8 + 1 + 32 {
            return Err(ArtifactError::Malformed("shorter than its header and checksum"));
        }
        let body_end = bytes.len() - 32;
        if check_trailer {
            let digest = sha256(&bytes[..body_end]);
            if digest.as_ref() != &bytes[body_end..] {
                return Err(ArtifactError::Checksum);
            }
        }
        r.bytes = &bytes[..body_end];
        let count = r.u32()? as usize;
        let mut tensors = BTreeMap::new();
        for _ in 0..count {
            let name_len = r.u16()? as usize;
            let name = std::str::from_utf8(r.take(name_len)?)
                .map_err(|_| ArtifactError::Malformed("tensor name is not UTF-8"))?
                .to_owned();
            let rank = r.u8()? as usize;
            let mut shape = Vec::with_capacity(rank);
            let mut n: usize = 1;
            for _ in 0..rank {
                let d = r.u32()? as usize;
                n = n.checked_mul(d).ok_or(ArtifactError::Malformed("tensor size overflows"))?;
                shape.push(d);
            }
            let raw = r.take(n.checked_mul(4).ok_or(ArtifactError::Malformed("tensor size overflows"))?)?;
            let values = raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            if tensors.insert(name, NamedTensor { shape, values }).is_some() {
                return Err(ArtifactError::Malformed("duplicate tensor name"));
            }
        }
        if r.pos != r.bytes.len() {
            return Err(ArtifactError::Malformed("trailing bytes after the last tensor"));
        }
        Ok(TensorFile { tensors })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ArtifactError> {
        let end = self.pos.checked_add(n).ok_or(ArtifactError::Malformed("length overflows"))?;
        let s = self.bytes.get(self.pos..end).ok_or(ArtifactError::Malformed("unexpected end of file"))?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, ArtifactError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, ArtifactError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, ArtifactError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

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
    pub calibration: Option<crate::rank::Calibration>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TensorFile {
        let mut f = TensorFile::default();
        f.insert("a", vec![2, 3], (0..6).map(|i| i as f32).collect());
        f.insert("b", vec![1], vec![-1.5]);
        f
    }

    #[test]
    fn roundtrip_and_shape_checks() {
        let f = sample();
        let g = TensorFile::decode(&f.encode()).unwrap();
        assert_eq!(g, f);
        assert!(g.get("a", &[2, 3]).is_ok());
        assert!(matches!(g.get("a", &[3, 2]), Err(ArtifactError::ShapeMismatch { .. })));
        assert_eq!(g.get("zz", &[1]), Err(ArtifactError::MissingTensor("zz".into())));
    }

    #[test]
    fn every_truncation_and_bit_flip_is_an_error() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            assert!(TensorFile::decode(&bytes[..n]).is_err(), "truncated to {n}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(TensorFile::decode(&b).is_err(), "flip at {i}");
            // Without the trailer check a flip in the values goes unseen (the manifest's digest
            // catches it, see bundle's tests), but the structure is still checked: no panic.
            let _ = TensorFile::decode_digest_verified(&b);
        }
        assert_eq!(TensorFile::decode_digest_verified(&bytes), Ok(sample()));
        let mut b = bytes.clone();
        b[0] ^= 1;
        assert_eq!(TensorFile::decode_digest_verified(&b), Err(ArtifactError::BadMagic));
        let mut b = bytes.clone();
        b[8] = 9;
        assert_eq!(TensorFile::decode(&b), Err(ArtifactError::UnsupportedVersion(9)));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = TensorFile::decode(&bytes);
            // Also with a valid header and checksum, so the structure parser itself is exercised.
            let mut b = TENSOR_MAGIC.to_vec();
            b.push(TENSOR_VERSION);
            b.extend_from_slice(&bytes);
            let d = ring::digest::digest(&ring::digest::SHA256, &b);
            b.extend_from_slice(d.as_ref());
            let _ = TensorFile::decode(&b);
        }
    }
}
