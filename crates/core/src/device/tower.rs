//! The user tower's forward pass for one person, in plain Rust over the global parameters burn
//! trained: what a device runs to turn its history into a user vector without burn (the browser
//! keeps burn out of its first module). It computes exactly what
//! `model::TwoTower::person_vector` computes, in f32 with f64 accumulation; a test in `tests/`
//! checks the two agree within 1e-5 on the committed model.
//!
//! Per person: the history (catalog indices, oldest first; the newest `history` are read) is
//! pooled twice, a plain mean and a softmax over learned recency logits (most recent first),
//! over history-item embeddings plus their pooled tag embeddings; the profile's tags pool into
//! a demographic vector; both go through a two-layer MLP.
//!
//! `gpu` (feature `gpu`): the same forward pass as a WGSL kernel on a wgpu device (f32
//! throughout), which also quantizes the result for the GPU catalog scan in the same submission.

use crate::artifact::{ModelDims, TensorFile};
use crate::artifact::bundle::{BundleError, GLOBAL, ModelBundle, PersonInput};

#[cfg(feature = "gpu")]
pub mod gpu;

/// Names and shapes of the global tensors for given dimensions (the file layout's contract).
pub fn global_shapes(d: &ModelDims) -> Vec<(&'static str, Vec<usize>)> {
    vec![
        ("item_id", vec![d.items, d.dim]),
        ("item_tag", vec![d.item_tags.max(1), d.dim]),
        ("hist_id", vec![d.items, d.dim]),
        ("hist_tag", vec![d.item_tags.max(1), d.dim]),
        ("user_tag", vec![d.user_tags.max(1), d.dim]),
        ("recency", vec![d.history]),
        ("w1", vec![3 * d.dim, d.hidden]),
        ("b1", vec![d.hidden]),
        ("w2", vec![d.hidden, d.dim]),
        ("b2", vec![d.dim]),
    ]
}

/// What the tower reads of `input`: the history's catalog indices, most recent first (the newest
/// `history` in the catalog), and the profile's tags in the vocabulary.
fn read_input(d: &ModelDims, input: &PersonInput) -> (Vec<usize>, Vec<usize>) {
    let recent = input.history.iter().rev().map(|&i| i as usize).filter(|&i| i < d.items).take(d.history).collect();
    let tags = input.tags.iter().map(|&t| t as usize).filter(|&t| t < d.user_tags).collect();
    (recent, tags)
}

/// The user tower of one model, ready to run.
#[derive(Debug, Clone)]
pub struct UserTower {
    dims: ModelDims,
    hist_id: Vec<f32>,
    hist_tag: Vec<f32>,
    user_tag: Vec<f32>,
    recency: Vec<f32>,
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
    /// Tags of each catalog item.
    item_tags: Vec<Vec<u32>>,
}

impl UserTower {
    /// The tower of a verified model bundle.
    pub fn from_bundle(bundle: &ModelBundle) -> Result<UserTower, BundleError> {
        let d = bundle.manifest.dims;
        let f: &TensorFile = &bundle.global;
        let get = |name: &str| -> Result<Vec<f32>, BundleError> {
            let shape = global_shapes(&d).into_iter().find(|(n, _)| *n == name).map(|(_, s)| s).unwrap_or_default();
            f.get(name, &shape).map(|t| t.values.clone()).map_err(|source| BundleError::Tensor { file: GLOBAL.into(), source })
        };
        if bundle.catalog.items.len() != d.items {
            return Err(BundleError::Catalog(format!("{} catalog items for a model of {}", bundle.catalog.items.len(), d.items)));
        }
        let item_tags = bundle
            .catalog
            .items
            .iter()
            .map(|i| i.tags.iter().copied().filter(|&t| (t as usize) < d.item_tags).collect())
            .collect();
        Ok(UserTower {
            dims: d,
            hist_id: get("hist_id")?,
            hist_tag: get("hist_tag")?,
            user_tag: get("user_tag")?,
            recency: get("recency")?,
            w1: get("w1")?,
            b1: get("b1")?,
            w2: get("w2")?,
            b2: get("b2")?,
            item_tags,
        })
    }

    /// The model's dimensions.
    pub fn dims(&self) -> ModelDims {
        self.dims
    }

    /// The person's user vector (`dim` values), without a personal vector. Indices outside the
    /// catalog or the tag vocabulary are ignored.
    pub fn person_vector(&self, input: &PersonInput) -> Vec<f32> {
        let d = self.dims.dim;
        let (recent, tags) = read_input(&self.dims, input);
        let n = recent.len();
        let mean_w = 1.0 / n.max(1) as f64;
        // Softmax of the recency logits over the positions that hold an item.
        let logits = &self.recency[..n];
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f64> = logits.iter().map(|&l| f64::from(l - max).exp()).collect();
        let sum: f64 = exps.iter().sum();
        let mut x = vec![0f64; 3 * d];
        for (p, &item) in recent.iter().enumerate() {
            let weights = [mean_w, exps[p] / sum];
            let tags = &self.item_tags[item];
            for (half, w) in weights.into_iter().enumerate() {
                let out = &mut x[half * d..(half + 1) * d];
                for (o, &v) in out.iter_mut().zip(&self.hist_id[item * d..(item + 1) * d]) {
                    *o += w * f64::from(v);
                }
                let tw = w / tags.len().max(1) as f64;
                for &t in tags {
                    let row = &self.hist_tag[t as usize * d..(t as usize + 1) * d];
                    for (o, &v) in out.iter_mut().zip(row) {
                        *o += tw * f64::from(v);
                    }
                }
            }
        }
        for &t in &tags {
            let w = 1.0 / tags.len() as f64;
            for (o, &v) in x[2 * d..].iter_mut().zip(&self.user_tag[t * d..(t + 1) * d]) {
                *o += w * f64::from(v);
            }
        }
        let h = self.dims.hidden;
        let mut hidden: Vec<f64> = self.b1.iter().map(|&b| f64::from(b)).collect();
        for (i, &xi) in x.iter().enumerate() {
            if xi != 0.0 {
                for (o, &w) in hidden.iter_mut().zip(&self.w1[i * h..(i + 1) * h]) {
                    *o += xi * f64::from(w);
                }
            }
        }
        let mut out: Vec<f64> = self.b2.iter().map(|&b| f64::from(b)).collect();
        for (j, &hj) in hidden.iter().enumerate() {
            if hj > 0.0 {
                for (o, &w) in out.iter_mut().zip(&self.w2[j * d..(j + 1) * d]) {
                    *o += hj * f64::from(w);
                }
            }
        }
        out.into_iter().map(|v| v as f32).collect()
    }
}
