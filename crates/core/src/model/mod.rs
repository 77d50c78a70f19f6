//! The two-tower model, written once over burn's `Backend` so the same code trains on the CPU
//! (burn-flex), on wgpu (Vulkan natively, WebGPU in a browser worker) and, later, CUDA.
//!
//! - **Item tower**: an item-id embedding plus the mean of the item's tag embeddings (genres or
//!   any multi-hot tags), so an item nobody interacted with still has a vector.
//! - **User tower**: a pooled encoding of the user's recent history (a plain mean and a learned
//!   recency-weighted mean of history-item vectors) plus demographic tags, through a small MLP,
//!   plus the user's **personal embedding**. A new user with a few interactions gets a useful
//!   vector from the pooled part alone, without retraining.
//! - **Score**: the dot product of the two.
//!
//! Global parameters ([`GlobalParams`]: every table and layer shared by all users) and local
//! parameters ([`PersonalTable`]: one personal vector per user, which on a device never leaves it)
//! are separate types, because only global ones are ever federated.
//!
//! Training uses a softmax over the target item, the other targets in the batch and a shared set
//! of uniformly sampled negatives (collisions with the target are masked), with logits
//! corrected for sampling bias and read through a [`Link`] (`ln softplus(u·v)` by default), each
//! example weighted by the confidence its rating or play count gives, Adam, and a seeded ChaCha
//! RNG for initialisation, shuffling and sampling: the same seed gives the same model.

use burn::module::{AutodiffModule, Param};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::activation;
use burn::tensor::backend::AutodiffBackend;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

mod bundle;
pub mod tune;

pub use crate::artifact::Link;
use crate::artifact::{ArtifactError, ModelDims, TensorFile};
use crate::data::{Dataset, Order};
use crate::eval::Recommender;

/// Architecture id recorded in manifests; loading refuses any other.
pub const ARCHITECTURE: &str = crate::artifact::bundle::SERVED_ARCHITECTURE;

/// Training hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Embedding width.
    pub dim: usize,
    /// Hidden width of the user tower's MLP.
    pub hidden: usize,
    /// History items the user tower reads (most recent first).
    pub history: usize,
    /// Most passes over the training examples (early stopping on validation may use fewer).
    pub epochs: usize,
    /// Epochs without a better validation score before training stops (0: never early).
    #[serde(default)]
    pub patience: usize,
    /// Examples per step.
    pub batch: usize,
    /// Uniformly sampled negatives shared by a batch (in addition to in-batch targets).
    pub negatives: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// L2 weight decay (all parameters).
    pub weight_decay: f64,
    /// Penalty on each example's user vector: `user_l2 * mean ‖u‖²` is added to the loss. It
    /// keeps the softmax from growing confident user vectors that memorise the training items
    /// (validation full NDCG@10: long-tail 0.150 → 0.183, wide-catalog 0.064 → 0.072, MovieLens
    /// 100K 0.131 → 0.139). Weight decay on all parameters, or a penalty on item vectors too,
    /// did not do this.
    #[serde(default)]
    pub user_l2: f64,
    /// How much an interaction's rating or play count weighs its example: each target's loss
    /// counts `1 + rating_weight · ln(1 + rating)`, the confidence of implicit-feedback ALS in
    /// its log form (Hu, Koren & Volinsky, ICDM 2008); 0 weighs every interaction alike, and so
    /// does data without ratings. Play counts say which items are a person's own taste
    /// (validation full NDCG@10 on long-tail 0.1955 → 0.2029, wide-catalog 0.0850 → 0.0890).
    #[serde(default)]
    pub rating_weight: f64,
    /// How scores become the softmax's logits (see [`Link`]; absent in manifests of models
    /// trained before it: [`Link::Exp`]).
    #[serde(default)]
    pub link: Link,
    /// Correct logits by each candidate's sampling log-probability (in-batch targets follow
    /// popularity; Yi et al., RecSys 2019).
    #[serde(default)]
    pub logq: bool,
    /// Train a personal vector per training user (`false`: the tower alone, as a new device).
    #[serde(default = "yes")]
    pub personal: bool,
    /// Seed for initialisation, shuffling and negative sampling.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            dim: 64,
            hidden: 128,
            history: 50,
            epochs: 30,
            batch: 256,
            negatives: 512,
            lr: 5e-3,
            weight_decay: 1e-5,
            user_l2: 0.1,
            rating_weight: 1.0,
            link: Link::Softplus,
            patience: 3,
            logq: true,
            personal: true,
            seed: 42,
        }
    }
}

fn yes() -> bool {
    true
}

/// Parameters shared by every user: what federated rounds train and publish.
#[derive(Module, Debug)]
pub struct GlobalParams<B: Backend> {
    /// Item-id embeddings of the item tower, `[items, dim]`.
    pub item_id: Param<Tensor<B, 2>>,
    /// Item-tag embeddings of the item tower, `[max(1, item_tags), dim]`.
    pub item_tag: Param<Tensor<B, 2>>,
    /// Item-id embeddings the user tower reads history with, `[items, dim]`.
    pub hist_id: Param<Tensor<B, 2>>,
    /// Item-tag embeddings for history items, `[max(1, item_tags), dim]`.
    pub hist_tag: Param<Tensor<B, 2>>,
    /// User-tag (demographic) embeddings, `[max(1, user_tags), dim]`.
    pub user_tag: Param<Tensor<B, 2>>,
    /// Recency logits by position, most recent first, `[history]`.
    pub recency: Param<Tensor<B, 1>>,
    /// First MLP layer, `[3 * dim, hidden]`.
    pub w1: Param<Tensor<B, 2>>,
    /// First MLP bias, `[hidden]`.
    pub b1: Param<Tensor<B, 1>>,
    /// Second MLP layer, `[hidden, dim]`.
    pub w2: Param<Tensor<B, 2>>,
    /// Second MLP bias, `[dim]`.
    pub b2: Param<Tensor<B, 1>>,
}

/// Local parameters: one personal embedding per user, `[users, dim]`. On a device this is a
/// single row that never leaves it; centrally it holds the training users' rows.
#[derive(Module, Debug)]
pub struct PersonalTable<B: Backend> {
    /// Personal vectors.
    pub weight: Param<Tensor<B, 2>>,
}

/// Constant inputs: normalised multi-hot tag matrices.
#[derive(Module, Debug)]
pub struct Features<B: Backend> {
    /// `[items, max(1, item_tags)]`, each row summing to 1 (or 0 for an item with no tags).
    pub item: Tensor<B, 2>,
    /// `[users, max(1, user_tags)]`, likewise.
    pub user: Tensor<B, 2>,
}

/// The whole model: global and local parameters plus constant features.
#[derive(Module, Debug)]
pub struct TwoTower<B: Backend> {
    /// Shared parameters.
    pub global: GlobalParams<B>,
    /// Personal parameters.
    pub personal: PersonalTable<B>,
    /// Tag features.
    pub features: Features<B>,
}

/// A batch of users with their histories, as tensors.
pub struct UserBatch<B: Backend> {
    /// User indices `[b]` (rows of the personal table and of the user features).
    pub users: Tensor<B, 1, Int>,
    /// History items `[b, history]`, most recent first, padded with 0.
    pub history: Tensor<B, 2, Int>,
    /// 1.0 where `history` holds an item, 0.0 for padding, `[b, history]`.
    pub mask: Tensor<B, 2>,
}

impl<B: Backend> UserBatch<B> {
    /// Builds a batch from each user's history in time order (the last `len` items are used).
    pub fn new(users: &[u32], histories: &[&[u32]], len: usize, device: &B::Device) -> Self {
        let b = users.len();
        let mut idx = vec![0i32; b * len];
        let mut mask = vec![0f32; b * len];
        for (r, h) in histories.iter().enumerate() {
            for (p, &item) in h.iter().rev().take(len).enumerate() {
                idx[r * len + p] = item as i32;
                mask[r * len + p] = 1.0;
            }
        }
        let users: Vec<i32> = users.iter().map(|&u| u as i32).collect();
        UserBatch {
            users: Tensor::from_data(TensorData::new(users, [b]), device),
            history: Tensor::from_data(TensorData::new(idx, [b, len]), device),
            mask: Tensor::from_data(TensorData::new(mask, [b, len]), device),
        }
    }
}

fn tag_matrix(rows: &[&[u32]], n_tags: usize) -> (Vec<f32>, usize) {
    let width = n_tags.max(1);
    let mut m = vec![0f32; rows.len() * width];
    for (r, tags) in rows.iter().enumerate() {
        if tags.is_empty() {
            continue;
        }
        let w = 1.0 / tags.len() as f32;
        for &t in *tags {
            m[r * width + t as usize] += w;
        }
    }
    (m, width)
}

impl<B: Backend> Features<B> {
    /// Tag features of a dataset's catalog and users.
    pub fn from_dataset(ds: &Dataset, device: &B::Device) -> Self {
        let items: Vec<&[u32]> = ds.items.iter().map(|i| i.tags.as_slice()).collect();
        let users: Vec<&[u32]> = ds.users.iter().map(|u| u.tags.as_slice()).collect();
        Self::new(&items, ds.item_tags.len(), &users, ds.user_tags.len(), device)
    }

    /// Tag features from tag lists.
    pub fn new(
        items: &[&[u32]],
        n_item_tags: usize,
        users: &[&[u32]],
        n_user_tags: usize,
        device: &B::Device,
    ) -> Self {
        let (im, iw) = tag_matrix(items, n_item_tags);
        let (um, uw) = tag_matrix(users, n_user_tags);
        Features {
            item: Tensor::from_data(TensorData::new(im, [items.len(), iw]), device),
            user: Tensor::from_data(TensorData::new(um, [users.len(), uw]), device),
        }
    }
}

pub use crate::device::tower::global_shapes;

fn param<B: Backend, const D: usize>(values: Vec<f32>, shape: [usize; D], device: &B::Device) -> Param<Tensor<B, D>> {
    Param::from_tensor(Tensor::from_data(TensorData::new(values, shape), device))
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default()
}

fn shape2(s: &[usize]) -> [usize; 2] {
    [s[0], s[1]]
}

impl<B: Backend> GlobalParams<B> {
    /// Seeded initialisation: small uniform embeddings, Glorot-uniform layers, zero biases and
    /// recency logits. Uses our own RNG, so every backend starts from identical values.
    pub fn init(d: &ModelDims, rng: &mut ChaCha8Rng, device: &B::Device) -> Self {
        let mut uniform = |n: usize, a: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(-a..a)).collect() };
        let shapes = global_shapes(d);
        let mut f = TensorFile::default();
        for (name, shape) in &shapes {
            let n: usize = shape.iter().product();
            let values = match *name {
                "w1" | "w2" => uniform(n, (6.0 / (shape[0] + shape[1]) as f32).sqrt()),
                "b1" | "b2" | "recency" => vec![0.0; n],
                _ => uniform(n, 0.05),
            };
            f.insert(name, shape.clone(), values);
        }
        // The shapes above are the ones `from_file` checks, so this cannot fail.
        Self::from_file(d, &f, device).unwrap_or_else(|e| unreachable!("init shapes: {e}"))
    }

    /// Loads global parameters, checking every tensor's shape against `d`.
    pub fn from_file(d: &ModelDims, f: &TensorFile, device: &B::Device) -> Result<Self, ArtifactError> {
        let shapes = global_shapes(d);
        let get = |i: usize| f.get(shapes[i].0, &shapes[i].1).map(|t| t.values.clone());
        Ok(GlobalParams {
            item_id: param(get(0)?, shape2(&shapes[0].1), device),
            item_tag: param(get(1)?, shape2(&shapes[1].1), device),
            hist_id: param(get(2)?, shape2(&shapes[2].1), device),
            hist_tag: param(get(3)?, shape2(&shapes[3].1), device),
            user_tag: param(get(4)?, shape2(&shapes[4].1), device),
            recency: param(get(5)?, [d.history], device),
            w1: param(get(6)?, shape2(&shapes[6].1), device),
            b1: param(get(7)?, [d.hidden], device),
            w2: param(get(8)?, shape2(&shapes[8].1), device),
            b2: param(get(9)?, [d.dim], device),
        })
    }

    /// Exports every tensor by name.
    pub fn to_file(&self) -> TensorFile {
        let mut f = TensorFile::default();
        let mut put2 = |name: &str, t: &Param<Tensor<B, 2>>| {
            let v = t.val();
            f.insert(name, v.dims().to_vec(), to_vec(v));
        };
        put2("item_id", &self.item_id);
        put2("item_tag", &self.item_tag);
        put2("hist_id", &self.hist_id);
        put2("hist_tag", &self.hist_tag);
        put2("user_tag", &self.user_tag);
        put2("w1", &self.w1);
        put2("w2", &self.w2);
        for (name, t) in [("recency", &self.recency), ("b1", &self.b1), ("b2", &self.b2)] {
            let v = t.val();
            f.insert(name, v.dims().to_vec(), to_vec(v));
        }
        f
    }
}

impl<B: Backend> PersonalTable<B> {
    /// Zero vectors for `users` users: a user nobody trained yet is scored by the pooled part.
    pub fn zeros(users: usize, dim: usize, device: &B::Device) -> Self {
        PersonalTable { weight: param(vec![0.0; users.max(1) * dim], [users.max(1), dim], device) }
    }

    /// Loads personal vectors (`personal` tensor, `[users, dim]`).
    pub fn from_file(users: usize, dim: usize, f: &TensorFile, device: &B::Device) -> Result<Self, ArtifactError> {
        let t = f.get("personal", &[users, dim])?;
        Ok(PersonalTable { weight: param(t.values.clone(), [users, dim], device) })
    }

    /// Exports the table as the `personal` tensor.
    pub fn to_file(&self) -> TensorFile {
        let v = self.weight.val();
        let mut f = TensorFile::default();
        f.insert("personal", v.dims().to_vec(), to_vec(v));
        f
    }
}

impl<B: Backend> TwoTower<B> {
    /// Item vectors for all catalog items, `[items, dim]`.
    pub fn item_vectors(&self) -> Tensor<B, 2> {
        let g = &self.global;
        g.item_id.val() + self.features.item.clone().matmul(g.item_tag.val())
    }

    /// Item vectors for selected items, `[n, dim]`.
    pub fn item_vectors_of(&self, items: Tensor<B, 1, Int>) -> Tensor<B, 2> {
        let g = &self.global;
        g.item_id.val().select(0, items.clone())
            + self.features.item.clone().select(0, items).matmul(g.item_tag.val())
    }

    /// User vectors, `[b, dim]`.
    ///
    /// Both history pools (plain mean and learned recency weights) are one batched matmul
    /// `[b, 2, l] x [b, l, dim]`, and tag features are pooled before their projection: the
    /// `[b, l, dim]` tensor is touched only by the gather and that matmul (this is the training
    /// loop's hot path).
    pub fn user_vectors(&self, batch: &UserBatch<B>) -> Tensor<B, 2> {
        self.shared_user_vectors(batch) + self.personal.weight.val().select(0, batch.users.clone())
    }

    /// User vectors without the personal table (what a device computes before fine-tuning),
    /// `[b, dim]`.
    pub fn shared_user_vectors(&self, batch: &UserBatch<B>) -> Tensor<B, 2> {
        let demo = self.features.user.clone().select(0, batch.users.clone()).matmul(self.global.user_tag.val());
        self.tower(batch, demo)
    }

    /// The user vector of one person on their device, `[1, dim]`: the tower over their history
    /// (item indices in time order, e.g. [`crate::artifact::bundle::PersonInput`] from their `History`) and
    /// their user tags, without a personal vector (add the person's own, once trained). Tag
    /// indices outside the model's vocabulary are ignored.
    pub fn person_vector(&self, history: &[u32], tags: &[u32], device: &B::Device) -> Tensor<B, 2> {
        let dims = self.dims();
        let history: Vec<u32> = history.iter().copied().filter(|&i| (i as usize) < dims.items).collect();
        let tags: Vec<u32> = tags.iter().copied().filter(|&t| (t as usize) < dims.user_tags).collect();
        let batch = UserBatch::new(&[0], &[history.as_slice()], dims.history, device);
        let (m, width) = tag_matrix(&[tags.as_slice()], dims.user_tags);
        let demo = Tensor::<B, 2>::from_data(TensorData::new(m, [1, width]), device).matmul(self.global.user_tag.val());
        self.tower(&batch, demo)
    }

    /// The shared part of the user tower: history pools and demographics through the MLP.
    fn tower(&self, batch: &UserBatch<B>, demo: Tensor<B, 2>) -> Tensor<B, 2> {
        let g = &self.global;
        let [b, l] = batch.history.dims();
        let d = g.item_id.val().dims()[1];
        let t = self.features.item.dims()[1];
        let flat = batch.history.clone().reshape([b * l]);
        let ids = g.hist_id.val().select(0, flat.clone()).reshape([b, l, d]);
        let tags = self.features.item.clone().select(0, flat).reshape([b, l, t]);
        let mask = batch.mask.clone();

        let count = mask.clone().sum_dim(1).clamp_min(1.0); // [b, 1]
        let mean_w = mask.clone() / count;
        let logits = g.recency.val().reshape([1, l]).expand([b, l]);
        let logits = logits.mask_fill(mask.clone().equal_elem(0.0), -1e9);
        let recent_w = activation::softmax(logits, 1) * mask; // all-padding rows become 0
        let w = Tensor::stack::<3>(vec![mean_w, recent_w], 1); // [b, 2, l]

        let pooled_ids = w.clone().matmul(ids).reshape([b, 2 * d]);
        let pooled_tags = w.matmul(tags).reshape([b * 2, t]).matmul(g.hist_tag.val()).reshape([b, 2 * d]);
        let x = Tensor::cat(vec![pooled_ids + pooled_tags, demo], 1);
        let hidden = activation::relu(x.matmul(g.w1.val()) + g.b1.val().unsqueeze_dim(0));
        hidden.matmul(g.w2.val()) + g.b2.val().unsqueeze_dim(0)
    }

    /// Dimensions of this model.
    pub fn dims(&self) -> ModelDims {
        let g = &self.global;
        let [items, dim] = g.item_id.val().dims();
        let [_, hidden] = g.w1.val().dims();
        let [history] = g.recency.val().dims();
        let [users, _] = self.personal.weight.val().dims();
        let [_, item_tags] = self.features.item.dims();
        let [_, user_tags] = self.features.user.dims();
        ModelDims { items, item_tags, user_tags, users, dim, hidden, history }
    }
}

/// Progress of a training run.
#[derive(Debug, Clone, Copy)]
pub struct TrainProgress {
    /// 0-based epoch.
    pub epoch: usize,
    /// Steps done so far (all epochs).
    pub step: usize,
    /// Steps in the whole run (at most `epochs`; early stopping may end it sooner).
    pub total_steps: usize,
    /// Mean loss over the epoch so far.
    pub loss: f64,
}

/// Dimensions a dataset and config give.
pub fn dims_for(ds: &Dataset, cfg: &TrainConfig) -> ModelDims {
    ModelDims {
        items: ds.items.len(),
        item_tags: ds.item_tags.len(),
        user_tags: ds.user_tags.len(),
        users: ds.users.len(),
        dim: cfg.dim,
        hidden: cfg.hidden,
        history: cfg.history,
    }
}

/// Why training could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A hyper-parameter is out of range.
    #[error("invalid training setting: {0}")]
    InvalidConfig(String),
    /// The loss became NaN or infinite.
    #[error("training diverged at epoch {epoch} (loss {loss}); try a smaller learning rate")]
    Diverged {
        /// Epoch at which it happened.
        epoch: usize,
        /// The loss seen.
        loss: f64,
    },
}

/// The training examples: every interaction of every history is one target, predicted from a
/// context of the same person's other items:
///
/// - the items strictly earlier in time (most recent last), then
/// - the other items that share the target's timestamp, in a random order drawn afresh each
///   time: a tie is a set, so tied items are each other's context but show no order.
///
/// For [`Order::Unordered`] data the whole history is one such set: each item is predicted from
/// a random subset of the person's other items, of a random size from 1 to `history` (a
/// denoising objective: on long-tailed sets it lifted full-ranking HR@10 from 0.237 to 0.261),
/// and no order is learned because none is shown. For sequential data the next-item signal
/// stays.
#[derive(Debug, Clone)]
pub struct Examples {
    /// Each user's training items in time order (file order for unordered data).
    pub histories: Vec<Vec<u32>>,
    /// `groups[u][t] = (start, end)`: the positions of user `u`'s items that share position
    /// `t`'s timestamp (the whole history for unordered data).
    pub groups: Vec<Vec<(u32, u32)>>,
    /// The kind of data.
    pub order: Order,
    /// `ratings[u][t]`: the rating (or play count) of `histories[u][t]`, 1.0 for implicit data.
    pub ratings: Vec<Vec<f32>>,
}

impl Examples {
    /// Examples from a dataset's interactions (each user's in time order, ties by file order),
    /// with their ratings.
    pub fn from_interactions(interactions: &[crate::data::Interaction], n_users: usize, order: Order) -> Examples {
        let mut ex = Examples::new(&crate::data::timed_histories(interactions, n_users), order);
        ex.ratings = crate::data::per_user_in_time_order(interactions, n_users, |x| x.rating);
        ex
    }

    /// Examples from `(item, timestamp)` histories in time order (see
    /// [`crate::data::timed_histories`]), every rating 1.
    pub fn new(timed: &[Vec<(u32, i64)>], order: Order) -> Examples {
        let histories = timed.iter().map(|h| h.iter().map(|&(i, _)| i).collect()).collect();
        let ratings = timed.iter().map(|h| vec![1.0; h.len()]).collect();
        let groups = timed
            .iter()
            .map(|h| {
                let n = h.len() as u32;
                if order == Order::Unordered {
                    return vec![(0, n); h.len()];
                }
                let mut out = Vec::with_capacity(h.len());
                let mut start = 0;
                while start < h.len() {
                    let end = start + h[start..].iter().take_while(|x| x.1 == h[start].1).count();
                    out.extend(std::iter::repeat_n((start as u32, end as u32), end - start));
                    start = end;
                }
                out
            })
            .collect();
        Examples { histories, groups, order, ratings }
    }

    /// Sequential examples from histories without ties (each item's context is every item
    /// before it).
    pub fn sequential(histories: Vec<Vec<u32>>) -> Examples {
        let groups = histories.iter().map(|h| (0..h.len() as u32).map(|t| (t, t + 1)).collect()).collect();
        let ratings = histories.iter().map(|h| vec![1.0; h.len()]).collect();
        Examples { histories, groups, order: Order::Sequential, ratings }
    }

    /// The context of target `t` of user `u` (its tie-mates in an order drawn from `rng`), at
    /// most `len` items, the most recent last.
    pub(crate) fn context(&self, u: usize, t: usize, len: usize, rng: &mut ChaCha8Rng, scratch: &mut Vec<u32>) -> Vec<u32> {
        let h = &self.histories[u];
        let (start, end) = self.groups[u][t];
        let (start, end) = (start as usize, end as usize);
        scratch.clear();
        scratch.extend(h[start..t].iter().chain(&h[t + 1..end]));
        let mut mates = len.min(scratch.len());
        if self.order == Order::Unordered && mates > 1 {
            // A set's context is a subset of random size: denoising, like the input dropout of
            // Mult-VAE (Liang et al., WWW 2018); it also teaches short histories (new people).
            mates = rng.random_range(1..=mates);
        }
        let (chosen, _) = scratch.partial_shuffle(rng, mates);
        let earlier = (len - mates).min(start);
        let mut out = Vec::with_capacity(earlier + mates);
        out.extend_from_slice(&h[start - earlier..start]);
        out.extend_from_slice(chosen);
        out
    }
}

/// One epoch of a training run, as [`train`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss over the epoch.
    pub loss: f64,
    /// The validation score after the epoch (higher is better), when validation ran.
    pub validation: Option<f64>,
}

/// A trained model and how it was chosen.
#[derive(Debug)]
pub struct TrainOutcome<B: Backend> {
    /// The model of the best epoch on validation (the last epoch without validation).
    pub model: TwoTower<B>,
    /// Every epoch trained, in order.
    pub curve: Vec<EpochReport>,
    /// The 1-based epoch `model` is from.
    pub best_epoch: usize,
}

/// Scores a model on held-out data that training never saw (higher is better); used by
/// [`train`] for early stopping.
pub type Validate<'a, B> = &'a mut dyn FnMut(&TwoTower<B>) -> f64;

/// Early stopping's inputs: the validation score and the score a model must pass before
/// patience starts counting.
pub struct Validation<'a, B: Backend> {
    /// The validation score.
    pub score: Validate<'a, B>,
    /// Patience counts only once some epoch scored above this (e.g. a little above
    /// most-popular): training often spends its first epochs on a plateau at the popularity
    /// baseline, and stopping there would publish most-popular in disguise. A run that never
    /// passes it trains all `epochs`.
    pub floor: f64,
}

/// Runs the autodiff computations of this process one at a time: hold the guard while a graph
/// is recorded and differentiated.
///
/// burn 0.21's autodiff keeps every graph in one process-wide server, and a `backward()` on one
/// thread can reclaim steps that another thread is still recording, so a parameter of that other
/// graph silently gets no gradient (tracel-ai/burn#5573, fixed in burn 0.22 by #5647, which
/// `../shared/MACHINE.md` rules out for its build). Measured: with two devices training at once,
/// `hearth-aggregator simulate` lost a gradient in about one update of 60, so runs with the same
/// seeds published different models. Every function of this crate that records a graph ([`train`],
/// the steps of [`tune::fine_tune`], [`crate::fed::client::local_update`] and
/// [`crate::fed::client::reconstruct`]) holds this lock while it does, so callers may run them on
/// many threads and get the bits they would get one at a time; other code that calls
/// `backward()` should hold it too. Not reentrant. A browser trains in one worker and never waits
/// on it.
pub fn autodiff_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A panic while training leaves nothing behind that the next graph reads.
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Trains a two-tower model on `examples` (see [`Examples`] for what predicts what).
///
/// With `validate`, the model is scored after every epoch and, once the best score is above
/// the floor, training stops when `cfg.patience` epochs in a row have not beaten it
/// (`patience = 0`: never stops early); the best epoch's model is returned. Without it, all
/// `cfg.epochs` run.
pub fn train<B: AutodiffBackend>(
    ds: &Dataset,
    examples: &Examples,
    cfg: &TrainConfig,
    device: &B::Device,
    progress: &mut dyn FnMut(TrainProgress),
    mut validate: Option<Validation<'_, B::InnerBackend>>,
) -> Result<TrainOutcome<B::InnerBackend>, TrainError> {
    for (name, v) in [("dim", cfg.dim), ("hidden", cfg.hidden), ("history", cfg.history), ("batch", cfg.batch), ("epochs", cfg.epochs)] {
        if v == 0 {
            return Err(TrainError::InvalidConfig(format!("{name} must be at least 1")));
        }
    }
    let _autodiff = autodiff_lock();
    let histories = &examples.histories;
    if histories.len() != ds.users.len() {
        return Err(TrainError::InvalidConfig(format!(
            "{} histories for {} users",
            histories.len(),
            ds.users.len()
        )));
    }
    if histories.iter().flatten().any(|&i| i as usize >= ds.items.len()) {
        return Err(TrainError::InvalidConfig("a history refers to an item outside the catalog".into()));
    }
    let groups_fit = examples.groups.len() == histories.len()
        && examples.groups.iter().zip(histories).all(|(g, h)| {
            g.len() == h.len() && g.iter().enumerate().all(|(t, &(s, e))| s as usize <= t && t < e as usize && e as usize <= h.len())
        });
    if !groups_fit {
        return Err(TrainError::InvalidConfig("examples need one tie group around each history position".into()));
    }
    if !(cfg.lr.is_finite() && cfg.lr > 0.0 && cfg.weight_decay.is_finite() && cfg.weight_decay >= 0.0) {
        return Err(TrainError::InvalidConfig("lr must be > 0 and weight decay >= 0".into()));
    }
    if !(cfg.user_l2.is_finite() && cfg.user_l2 >= 0.0) {
        return Err(TrainError::InvalidConfig("user_l2 must be >= 0".into()));
    }
    if !(cfg.rating_weight.is_finite() && cfg.rating_weight >= 0.0) {
        return Err(TrainError::InvalidConfig("rating_weight must be >= 0".into()));
    }
    let ratings_fit = examples.ratings.len() == histories.len()
        && examples.ratings.iter().zip(histories).all(|(r, h)| r.len() == h.len() && r.iter().all(|v| v.is_finite()));
    if !ratings_fit {
        return Err(TrainError::InvalidConfig("examples need one finite rating per history item".into()));
    }
    // Each example's confidence; `None` when all are equal (the plain mean of the batch).
    let confidence: Option<Vec<Vec<f32>>> = (cfg.rating_weight > 0.0).then(|| {
        let a = cfg.rating_weight as f32;
        examples.ratings.iter().map(|r| r.iter().map(|&v| 1.0 + a * v.max(0.0).ln_1p()).collect()).collect()
    });
    let dims = dims_for(ds, cfg);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut model = TwoTower::<B> {
        global: GlobalParams::init(&dims, &mut rng, device),
        personal: PersonalTable::zeros(dims.users, dims.dim, device),
        features: Features::from_dataset(ds, device),
    };
    let mut optim = AdamConfig::new()
        .with_weight_decay(Some(WeightDecayConfig::new(cfg.weight_decay as f32)))
        .init::<B, TwoTower<B>>();

    let mut examples_idx: Vec<(u32, u32)> = histories
        .iter()
        .enumerate()
        .flat_map(|(u, h)| (0..h.len() as u32).map(move |t| (u as u32, t)))
        .collect();
    let n_items = ds.items.len() as u32;
    let log_q = cfg.logq.then(|| sampling_log_q(histories, ds.items.len(), cfg.batch, cfg.negatives));
    let steps_per_epoch = examples_idx.len().div_ceil(cfg.batch);
    let total_steps = steps_per_epoch * cfg.epochs;
    let mut step = 0;
    let mut scratch = Vec::new();
    let mut curve = Vec::new();
    let mut best: Option<(f64, usize, TwoTower<B::InnerBackend>)> = None;
    for epoch in 0..cfg.epochs {
        examples_idx.shuffle(&mut rng);
        let mut loss_sum = 0f64;
        let mut batches = 0;
        for chunk in examples_idx.chunks(cfg.batch) {
            let users: Vec<u32> = chunk.iter().map(|&(u, _)| u).collect();
            let contexts: Vec<Vec<u32>> = chunk
                .iter()
                .map(|&(u, t)| examples.context(u as usize, t as usize, cfg.history, &mut rng, &mut scratch))
                .collect();
            let hists: Vec<&[u32]> = contexts.iter().map(Vec::as_slice).collect();
            let targets: Vec<u32> = chunk.iter().map(|&(u, t)| histories[u as usize][t as usize]).collect();
            let negatives: Vec<u32> = (0..cfg.negatives).map(|_| rng.random_range(0..n_items)).collect();
            let weights: Option<Vec<f32>> =
                confidence.as_ref().map(|c| chunk.iter().map(|&(u, t)| c[u as usize][t as usize]).collect());
            let loss = batch_loss(&model, Batch { users: &users, hists: &hists, targets: &targets, negatives: &negatives, weights: weights.as_deref() }, cfg, log_q.as_deref(), device);
            let value = loss.clone().into_scalar().to_f64();
            if !value.is_finite() {
                return Err(TrainError::Diverged { epoch, loss: value });
            }
            loss_sum += value;
            batches += 1;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(cfg.lr, model, grads);
            step += 1;
            progress(TrainProgress { epoch, step, total_steps, loss: loss_sum / batches as f64 });
        }
        let loss = loss_sum / batches.max(1) as f64;
        let Some(validate) = validate.as_mut() else {
            curve.push(EpochReport { epoch: epoch + 1, loss, validation: None });
            continue;
        };
        let snapshot = model.valid();
        let score = (validate.score)(&snapshot);
        curve.push(EpochReport { epoch: epoch + 1, loss, validation: Some(score) });
        let improved = best.as_ref().is_none_or(|(b, _, _)| score > *b);
        if improved {
            best = Some((score, epoch + 1, snapshot));
        }
        let (best_score, best_epoch) = best.as_ref().map_or((f64::MIN, 0), |(b, e, _)| (*b, *e));
        let since = epoch + 1 - best_epoch;
        if cfg.patience > 0 && since >= cfg.patience && best_score > validate.floor {
            break;
        }
    }
    Ok(match best {
        Some((_, best_epoch, model)) => TrainOutcome { model, curve, best_epoch },
        None => TrainOutcome { model: model.valid(), best_epoch: curve.len(), curve },
    })
}

/// `ln q(j)` for every item: the probability that one candidate column of a batch holds item
/// `j`, when `batch` columns are other examples' targets (drawn in proportion to how often `j`
/// is a training target) and `negatives` columns are uniform draws. Subtracting it from the
/// logits is the sampling-bias correction of Yi et al. (RecSys 2019): without it, in-batch
/// softmax pushes popular items down because they appear as negatives more often.
fn sampling_log_q(histories: &[Vec<u32>], n_items: usize, batch: usize, negatives: usize) -> Vec<f32> {
    let mut counts = vec![0u32; n_items];
    for &i in histories.iter().flatten() {
        counts[i as usize] += 1;
    }
    mixture_log_q(&counts, batch as f64, negatives as f64)
}

/// `ln q(j)` when each candidate is drawn in proportion to `counts` with weight `popular` and
/// uniformly with weight `uniform`: the correction of central training's in-batch negatives
/// ([`sampling_log_q`]: `batch` and `negatives` columns), and of a device's mixture draws.
pub fn mixture_log_q(counts: &[u32], popular: f64, uniform: f64) -> Vec<f32> {
    let total = counts.iter().map(|&c| f64::from(c)).sum::<f64>().max(1.0);
    let n = counts.len().max(1) as f64;
    counts.iter().map(|&c| ((popular * f64::from(c) / total + uniform / n) / (popular + uniform)).max(1e-12).ln() as f32).collect()
}

/// The logits a softmax reads from scores `z = u·v` under `link`. `ln softplus(z)` is computed
/// where it is exact in f32: it equals `z` to 3e-5 below -10 and `ln z` above 20.
pub fn link_logits<B: Backend, const D: usize>(z: Tensor<B, D>, link: Link) -> Tensor<B, D> {
    match link {
        Link::Exp => z,
        Link::Softplus => {
            let mid = activation::softplus(z.clone().clamp(-10.0, 20.0), 1.0).log();
            let high = z.clone().clamp_min(20.0).log();
            mid.mask_where(z.clone().lower_elem(-10.0), z.clone()).mask_where(z.clone().greater_elem(20.0), high)
        }
    }
}

/// One training step's examples.
struct Batch<'a> {
    users: &'a [u32],
    hists: &'a [&'a [u32]],
    targets: &'a [u32],
    /// Uniform negatives shared by the batch.
    negatives: &'a [u32],
    /// Each example's confidence (`None`: all alike).
    weights: Option<&'a [f32]>,
}

/// Softmax cross-entropy of each example's target against in-batch targets and shared
/// negatives, through `cfg.link`; any candidate equal to the example's own target (other than
/// itself) is masked. With `log_q`, every candidate's logit is corrected by its sampling
/// log-probability; with weights, the mean over examples is weighted by them; with
/// `cfg.user_l2`, the mean squared norm of the user vectors is added.
fn batch_loss<B: Backend>(model: &TwoTower<B>, x: Batch<'_>, cfg: &TrainConfig, log_q: Option<&[f32]>, device: &B::Device) -> Tensor<B, 1> {
    let b = x.users.len();
    let cands: Vec<u32> = x.targets.iter().chain(x.negatives).copied().collect();
    let c = cands.len();
    let mut mask = vec![0f32; b * c];
    let mut onehot = vec![0f32; b * c];
    for (r, &t) in x.targets.iter().enumerate() {
        onehot[r * c + r] = 1.0;
        for (j, &cand) in cands.iter().enumerate() {
            if cand == t && j != r {
                mask[r * c + j] = -1e9;
            }
        }
    }
    let batch = UserBatch::<B>::new(x.users, x.hists, cfg.history, device);
    let u = if cfg.personal { model.user_vectors(&batch) } else { model.shared_user_vectors(&batch) };
    let ids: Vec<i32> = cands.iter().map(|&i| i as i32).collect();
    let v = model.item_vectors_of(Tensor::from_data(TensorData::new(ids, [c]), device));
    let z = u.clone().matmul(v.transpose());
    let mut logits = link_logits(z, cfg.link) + Tensor::from_data(TensorData::new(mask, [b, c]), device);
    if let Some(log_q) = log_q {
        let correction: Vec<f32> = cands.iter().map(|&i| -log_q[i as usize]).collect();
        logits = logits + Tensor::<B, 2>::from_data(TensorData::new(correction, [1, c]), device);
    }
    let onehot = Tensor::<B, 2>::from_data(TensorData::new(onehot, [b, c]), device);
    let ce = match x.weights {
        None => burn::tensor::loss::cross_entropy_with_logits(logits, onehot),
        Some(w) => {
            let total: f32 = w.iter().sum();
            let w = Tensor::<B, 2>::from_data(TensorData::new(w.to_vec(), [b, 1]), device);
            (activation::log_softmax(logits, 1) * onehot).sum_dim(1).mul(w).sum().div_scalar(-total.max(f32::MIN_POSITIVE))
        }
    };
    if cfg.user_l2 > 0.0 { ce + u.powf_scalar(2.0).sum_dim(1).mean().mul_scalar(cfg.user_l2) } else { ce }
}

/// A precomputed score table: every user's vector against every item, for evaluation.
#[derive(Debug, Clone)]
pub struct ScoreTable {
    n_items: usize,
    scores: Vec<f32>,
}

impl ScoreTable {
    /// Scores all `histories.len()` users (row `u` uses personal row `u` and history `u`).
    pub fn compute<B: Backend>(model: &TwoTower<B>, histories: &[Vec<u32>], device: &B::Device) -> Self {
        let dims = model.dims();
        let items = model.item_vectors().transpose();
        let mut scores = Vec::with_capacity(histories.len() * dims.items);
        let users: Vec<u32> = (0..histories.len() as u32).collect();
        for chunk in users.chunks(1024) {
            let hists: Vec<&[u32]> = chunk.iter().map(|&u| histories[u as usize].as_slice()).collect();
            let batch = UserBatch::<B>::new(chunk, &hists, dims.history, device);
            scores.extend(to_vec(model.user_vectors(&batch).matmul(items.clone())));
        }
        ScoreTable { n_items: dims.items, scores }
    }

    /// The scores of user `u`.
    pub fn row(&self, u: u32) -> &[f32] {
        &self.scores[u as usize * self.n_items..(u as usize + 1) * self.n_items]
    }
}

impl Recommender for ScoreTable {
    fn score_all(&self, user: u32, _history: &[u32], out: &mut [f32]) {
        out.copy_from_slice(self.row(user));
    }
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use crate::data::{Dataset, leave_one_out};
    use burn::backend::{Autodiff, Flex};

    type Cpu = Flex;

    /// Two clusters of items; users consume within one cluster in a fixed cycle.
    pub(crate) fn toy() -> Dataset {
        let mut csv = String::from("user,item,timestamp\n");
        for u in 0..40 {
            let base = if u % 2 == 0 { 0 } else { 10 };
            for t in 0..12 {
                csv += &format!("u{u},i{},{t}\n", base + (u + t) % 10);
            }
        }
        Dataset::from_csv("toy.csv", csv.as_bytes(), None).unwrap()
    }

    fn small() -> TrainConfig {
        TrainConfig { dim: 8, hidden: 16, history: 5, epochs: 3, batch: 32, negatives: 8, lr: 1e-2, ..Default::default() }
    }

    #[test]
    fn same_seed_same_model_and_loss_falls() {
        let ds = toy();
        let split = leave_one_out(&ds).unwrap();
        let h = Examples::sequential(split.histories(ds.users.len()));
        let dev = Default::default();
        for link in [Link::Exp, Link::Softplus] {
            let mut first = None;
            let mut last = 0.0;
            train::<Autodiff<Cpu>>(&ds, &h, &TrainConfig { epochs: 10, link, ..small() }, &dev, &mut |p| {
                if p.epoch == 0 && first.is_none() {
                    first = Some(p.loss);
                }
                last = p.loss;
            }, None)
            .unwrap();
            assert!(last < first.unwrap() * 0.8, "{link:?}: loss {first:?} -> {last}");
        }
        let a = train::<Autodiff<Cpu>>(&ds, &h, &TrainConfig { epochs: 6, ..small() }, &dev, &mut |_| {}, None).unwrap().model;
        let b = train::<Autodiff<Cpu>>(&ds, &h, &TrainConfig { epochs: 6, ..small() }, &dev, &mut |_| {}, None).unwrap().model;
        assert_eq!(a.global.to_file(), b.global.to_file());
        let c = train::<Autodiff<Cpu>>(&ds, &h, &TrainConfig { epochs: 6, seed: 7, ..small() }, &dev, &mut |_| {}, None).unwrap().model;
        assert_ne!(a.global.to_file(), c.global.to_file());
    }

    #[test]
    fn early_stopping_waits_for_the_floor_and_then_for_patience() {
        let ds = toy();
        let split = leave_one_out(&ds).unwrap();
        let h = Examples::sequential(split.histories(ds.users.len()));
        let dev = Default::default();
        let cfg = TrainConfig { epochs: 8, patience: 2, ..small() };
        // Validation that peaks at epoch 2 and then falls: patience stops at epoch 4, unless the
        // peak is on a plateau below the floor, when all epochs run.
        let scores = [0.10, 0.11, 0.09, 0.08, 0.07, 0.06, 0.05, 0.04];
        for (floor, epochs_run) in [(0.0, 4), (0.5, 8)] {
            let mut epoch = 0;
            let mut score = |_: &TwoTower<Cpu>| {
                epoch += 1;
                scores[epoch - 1]
            };
            let out = train::<Autodiff<Cpu>>(&ds, &h, &cfg, &dev, &mut |_| {}, Some(Validation { score: &mut score, floor })).unwrap();
            assert_eq!((out.curve.len(), out.best_epoch), (epochs_run, 2), "floor {floor}");
        }
    }

    #[test]
    fn empty_history_gives_finite_vector_and_cold_items_get_vectors() {
        let ds = toy();
        let dev = Default::default();
        let dims = dims_for(&ds, &small());
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let m = TwoTower::<Cpu> {
            global: GlobalParams::init(&dims, &mut rng, &dev),
            personal: PersonalTable::zeros(dims.users, dims.dim, &dev),
            features: Features::from_dataset(&ds, &dev),
        };
        let batch = UserBatch::<Cpu>::new(&[0, 1], &[&[], &[3, 4]], dims.history, &dev);
        let v = to_vec(m.user_vectors(&batch));
        assert!(v.iter().all(|x| x.is_finite()));
        assert_eq!(v.len(), 2 * dims.dim);
    }

    #[test]
    fn params_roundtrip_through_files() {
        let ds = toy();
        let dev = Default::default();
        let dims = dims_for(&ds, &small());
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let g = GlobalParams::<Cpu>::init(&dims, &mut rng, &dev);
        let f = g.to_file();
        let g2 = GlobalParams::<Cpu>::from_file(&dims, &f, &dev).unwrap();
        assert_eq!(g2.to_file(), f);
        let wrong = ModelDims { dim: 9, ..dims };
        assert!(matches!(GlobalParams::<Cpu>::from_file(&wrong, &f, &dev), Err(ArtifactError::ShapeMismatch { .. })));
    }

    #[test]
    fn invalid_config_is_an_error() {
        let ds = toy();
        let none = Examples::sequential(vec![]);
        let e = train::<Autodiff<Cpu>>(&ds, &none, &TrainConfig { dim: 0, ..small() }, &Default::default(), &mut |_| {}, None)
            .unwrap_err();
        assert_eq!(e, TrainError::InvalidConfig("dim must be at least 1".into()));
        let h = Examples::sequential(leave_one_out(&ds).unwrap().histories(ds.users.len()));
        let e = train::<Autodiff<Cpu>>(&ds, &h, &TrainConfig { user_l2: f64::NAN, ..small() }, &Default::default(), &mut |_| {}, None)
            .unwrap_err();
        assert_eq!(e, TrainError::InvalidConfig("user_l2 must be >= 0".into()));
        let e = train::<Autodiff<Cpu>>(&ds, &h, &TrainConfig { rating_weight: -1.0, ..small() }, &Default::default(), &mut |_| {}, None)
            .unwrap_err();
        assert_eq!(e, TrainError::InvalidConfig("rating_weight must be >= 0".into()));
        let mut bad = h.clone();
        bad.ratings[3].pop();
        let e = train::<Autodiff<Cpu>>(&ds, &bad, &small(), &Default::default(), &mut |_| {}, None).unwrap_err();
        assert_eq!(e, TrainError::InvalidConfig("examples need one finite rating per history item".into()));
        bad.ratings[3] = vec![f32::NAN; h.histories[3].len()];
        assert!(train::<Autodiff<Cpu>>(&ds, &bad, &small(), &Default::default(), &mut |_| {}, None).is_err());
        let e = train::<Autodiff<Cpu>>(&ds, &none, &small(), &Default::default(), &mut |_| {}, None).unwrap_err();
        assert_eq!(e, TrainError::InvalidConfig("0 histories for 40 users".into()));
    }

    #[test]
    fn the_softplus_link_is_ln_softplus_increasing_and_finite_everywhere() {
        let dev = Default::default();
        let zs: Vec<f32> = vec![-1e4, -80.0, -30.0, -10.5, -10.0, -9.5, -3.0, -0.5, 0.0, 0.5, 3.0, 19.5, 20.0, 20.5, 60.0, 1e4];
        let z = Tensor::<Autodiff<Cpu>, 1>::from_data(TensorData::new(zs.clone(), [zs.len()]), &dev).require_grad();
        let out = link_logits(z.clone(), Link::Softplus);
        let grads = out.clone().sum().backward();
        let g: Vec<f32> = z.grad(&grads).unwrap().into_data().to_vec().unwrap();
        let y: Vec<f32> = out.inner().into_data().to_vec().unwrap();
        for ((&z, &y), &g) in zs.iter().zip(&y).zip(&g) {
            // ln softplus(z) in f64, and its derivative sigmoid(z) / softplus(z).
            let zd = f64::from(z);
            let sp = if zd > 30.0 { zd } else { zd.exp().ln_1p() };
            let want = if zd < -700.0 { zd } else { sp.ln() };
            let dwant = if zd < -30.0 { 1.0 } else { (1.0 / (1.0 + (-zd).exp())) / sp };
            assert!(y.is_finite() && g.is_finite(), "z {z}: {y} / {g}");
            assert!((f64::from(y) - want).abs() <= 1e-4 * want.abs().max(1.0), "z {z}: {y} against {want}");
            assert!((f64::from(g) - dwant).abs() < 2e-3, "z {z}: slope {g} against {dwant}");
        }
        assert!(y.windows(2).all(|w| w[1] > w[0]), "increasing: {y:?}");
        // The plain link is the identity.
        let plain: Vec<f32> = link_logits(z.inner(), Link::Exp).into_data().to_vec().unwrap();
        assert_eq!(plain, zs);
    }

    #[test]
    fn ratings_weigh_their_examples() {
        // Users of one cluster rate items 0-4 high and 5-9 low: with rating weights the model
        // ranks the high-rated items above the others for a user of that cluster, without
        // them it has no reason to.
        let mut csv = String::from("user,item,rating,timestamp\n");
        for u in 0..40 {
            for t in 0..10 {
                let r = if t < 5 { 50 } else { 1 };
                csv += &format!("u{u},i{t},{r},{}\n", u * 100 + (t * 7) % 10);
            }
        }
        let ds = Dataset::from_csv("rated.csv", csv.as_bytes(), None).unwrap();
        let ex = Examples::from_interactions(&ds.interactions, ds.users.len(), Order::Unordered);
        assert_eq!(ex.ratings[0].len(), 10);
        let by_item: std::collections::HashMap<u32, f32> = ex.histories[0].iter().copied().zip(ex.ratings[0].iter().copied()).collect();
        assert_eq!(by_item[&(ds.items.iter().position(|i| i.id == "i0").unwrap() as u32)], 50.0);
        let dev = Default::default();
        let mass_on_high = |rating_weight: f64| {
            let cfg = TrainConfig { rating_weight, epochs: 20, ..small() };
            let m = train::<Autodiff<Cpu>>(&ds, &ex, &cfg, &dev, &mut |_| {}, None).unwrap().model;
            let batch = UserBatch::new(&[0], &[&ex.histories[0][..3]], cfg.history, &dev);
            let s: Vec<f32> = m.user_vectors(&batch).matmul(m.item_vectors().transpose()).into_data().to_vec().unwrap();
            let high: f32 = ds.items.iter().zip(&s).filter(|(i, _)| i.id.as_str() < "i5").map(|(_, v)| v).sum();
            let low: f32 = ds.items.iter().zip(&s).filter(|(i, _)| i.id.as_str() >= "i5").map(|(_, v)| v).sum();
            (high - low) / 5.0
        };
        let (weighted, plain) = (mass_on_high(3.0), mass_on_high(0.0));
        assert!(weighted > plain + 0.1, "mean score gap high - low: weighted {weighted}, plain {plain}");
    }

    #[test]
    fn contexts_follow_the_kind_of_data() {
        // Sequential with a tie: the two items at t = 6 are not each other's context.
        let timed = vec![vec![(10, 5), (11, 6), (12, 6), (13, 8)]];
        let ex = Examples::new(&timed, Order::Sequential);
        assert_eq!(ex.groups, vec![vec![(0, 1), (1, 3), (1, 3), (3, 4)]]);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut scratch = vec![];
        let ctx: Vec<Vec<u32>> = (0..4).map(|t| ex.context(0, t, 50, &mut rng, &mut scratch)).collect();
        assert_eq!(ctx, vec![vec![], vec![10, 12], vec![10, 11], vec![10, 11, 12]]);
        assert_eq!(ex.context(0, 3, 2, &mut rng, &mut scratch), vec![11, 12], "the most recent `history` items");
        assert_eq!(ex.context(0, 1, 1, &mut rng, &mut scratch), vec![12], "tie-mates are the most recent");

        // Unordered: any other item can be context, never the target, in varying order and
        // number (1 to `history`).
        let ex = Examples::new(&[(0..30).map(|i| (i, i as i64)).collect()], Order::Unordered);
        let mut orders = std::collections::HashSet::new();
        let mut sizes = std::collections::HashSet::new();
        for _ in 0..200 {
            let c = ex.context(0, 7, 10, &mut rng, &mut scratch);
            assert!((1..=10).contains(&c.len()));
            assert!(!c.contains(&7));
            let mut u = c.clone();
            u.sort_unstable();
            u.dedup();
            assert_eq!(u.len(), c.len());
            sizes.insert(c.len());
            orders.insert(c);
        }
        assert!(orders.len() > 150);
        assert_eq!(sizes.len(), 10);
        assert!((0..200).any(|_| ex.context(0, 0, 100, &mut rng, &mut scratch).len() == 29));
    }
}
