//! A device's local training in a federated round (feature `model`), written once over burn's
//! `AutodiffBackend` like the rest of the model: the same code runs natively and in the browser's
//! training worker.
//!
//! Federated Reconstruction (Singhal et al., NeurIPS 2021): the person's own vector is not
//! federated and not kept between rounds; each round the device first *reconstructs* it from
//! the global parameters and its history (steps on the personal vector alone, global frozen),
//! then trains the round's federated groups with it frozen. Only the difference of those groups
//! leaves the device, and only clipped, noised and masked (`privacy::ddg`, `secagg`).
//!
//! The local objective is the central one for a single person: each of their interactions is a
//! target predicted from the ones before it, in a softmax against uniformly sampled negatives
//! (items the person has touched are never negatives), through the model's link, weighted by
//! the rating's confidence, with the user-vector penalty.

use burn::module::{AutodiffModule, Param, ParamId};
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::prelude::*;
use burn::tensor::activation;
use burn::tensor::backend::AutodiffBackend;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::FedError;
use super::layout::Layout;
use super::plan::LocalTraining;
use crate::artifact::{Link, ModelDims, TensorFile};
use crate::model::{Features, GlobalParams, PersonalTable, TwoTower, UserBatch, link_logits};

/// One person's data as their device holds it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PersonData {
    /// Catalog indices of the items they interacted with, in time order.
    pub history: Vec<u32>,
    /// The rating or play count of each (1.0 where there is none).
    pub ratings: Vec<f32>,
    /// Their user tags (e.g. age band) in the model's vocabulary.
    pub tags: Vec<u32>,
}

/// The catalog side a device trains with: each item's tags (the served catalog's).
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogTags {
    /// Tag indices of each item, by catalog index.
    pub items: Vec<Vec<u32>>,
    /// Size of the item tag vocabulary.
    pub item_tags: usize,
}

/// The model's training settings a device needs (from its manifest).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelSettings {
    /// The model's link.
    pub link: Link,
    /// Rating-confidence weight (`TrainConfig::rating_weight`).
    pub rating_weight: f32,
    /// User-vector penalty (`TrainConfig::user_l2`).
    pub user_l2: f32,
}

/// What a device's local training produced.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalUpdate {
    /// Trained minus received federated values, in layout order (before clipping).
    pub delta: Vec<f32>,
    /// The local loss with the reconstructed vector, before and after the global steps.
    pub loss_before: f32,
    /// See `loss_before`.
    pub loss_after: f32,
}

fn ids_of<B: Backend>(g: &GlobalParams<B>, names: &[&str]) -> Vec<ParamId> {
    let mut out = vec![];
    let mut add = |name: &str, id: ParamId| {
        if names.contains(&name) {
            out.push(id);
        }
    };
    add("item_id", g.item_id.id);
    add("item_tag", g.item_tag.id);
    add("hist_id", g.hist_id.id);
    add("hist_tag", g.hist_tag.id);
    add("user_tag", g.user_tag.id);
    add("recency", g.recency.id);
    add("w1", g.w1.id);
    add("b1", g.b1.id);
    add("w2", g.w2.id);
    add("b2", g.b2.id);
    out
}

/// One step's examples: rows of (context, target, confidence).
struct Steps {
    contexts: Vec<Vec<u32>>,
    targets: Vec<u32>,
    weights: Vec<f32>,
}

fn examples(person: &PersonData, history_len: usize, rating_weight: f32) -> Steps {
    let h = &person.history;
    let contexts = (0..h.len()).map(|t| h[t.saturating_sub(history_len)..t].to_vec()).collect();
    let weights = (0..h.len()).map(|t| 1.0 + rating_weight * person.ratings.get(t).copied().unwrap_or(1.0).max(0.0).ln_1p()).collect();
    Steps { contexts, targets: h.clone(), weights }
}

/// What the loss of rows `rows` reads: the user tower's vectors `[b, d]` (without the personal
/// vector), the targets' item vectors `[b, d]` and the negatives' `[m, d]`.
fn inputs<B: Backend>(model: &TwoTower<B>, ex: &Steps, rows: &[usize], negatives: &[u32], history_len: usize, device: &B::Device) -> [Tensor<B, 2>; 3] {
    let b = rows.len();
    let users = vec![0u32; b];
    let hists: Vec<&[u32]> = rows.iter().map(|&r| ex.contexts[r].as_slice()).collect();
    let batch = UserBatch::<B>::new(&users, &hists, history_len, device);
    let s = model.shared_user_vectors(&batch);
    let targets: Vec<i32> = rows.iter().map(|&r| ex.targets[r] as i32).collect();
    let vt = model.item_vectors_of(Tensor::from_data(TensorData::new(targets, [b]), device));
    let neg_ids: Vec<i32> = negatives.iter().map(|&i| i as i32).collect();
    let vn = model.item_vectors_of(Tensor::from_data(TensorData::new(neg_ids, [negatives.len()]), device));
    [s, vt, vn]
}

/// The local loss of user vectors `u` `[b, d]` against their targets `vt` and the shared
/// negatives `vn`: softmax cross-entropy through the link (negatives the person touched masked),
/// weighted by each example's confidence, plus the user-vector penalty.
#[allow(clippy::too_many_arguments)]
fn loss_of<B: Backend>(u: Tensor<B, 2>, vt: Tensor<B, 2>, vn: Tensor<B, 2>, ex: &Steps, rows: &[usize], negatives: &[u32], positives: &std::collections::HashSet<u32>, s: &ModelSettings, device: &B::Device) -> Tensor<B, 1> {
    let (b, m) = (rows.len(), negatives.len());
    let zt = u.clone().mul(vt).sum_dim(1); // [b, 1]
    let zn = u.clone().matmul(vn.transpose()); // [b, m]
    let mask: Vec<f32> = negatives.iter().map(|n| if positives.contains(n) { -1e9 } else { 0.0 }).collect();
    let logits = link_logits(Tensor::cat(vec![zt, zn], 1), s.link) + Tensor::<B, 2>::from_data(TensorData::new([vec![0.0], mask].concat(), [1, 1 + m]), device);
    let w: Vec<f32> = rows.iter().map(|&r| ex.weights[r]).collect();
    let total: f32 = w.iter().sum();
    let w = Tensor::<B, 2>::from_data(TensorData::new(w, [b, 1]), device);
    let ce = activation::log_softmax(logits, 1).slice([0..b, 0..1]).mul(w).sum().div_scalar(-total.max(f32::MIN_POSITIVE));
    if s.user_l2 > 0.0 { ce + u.powf_scalar(2.0).sum_dim(1).mean().mul_scalar(s.user_l2) } else { ce }
}

/// The whole model's local loss on rows `rows` (user vectors with the personal vector).
#[allow(clippy::too_many_arguments)]
fn loss<B: Backend>(model: &TwoTower<B>, ex: &Steps, rows: &[usize], negatives: &[u32], positives: &std::collections::HashSet<u32>, s: &ModelSettings, history_len: usize, device: &B::Device) -> Tensor<B, 1> {
    let [shared, vt, vn] = inputs(model, ex, rows, negatives, history_len, device);
    let u = shared + model.personal.weight.val().slice([0..1]);
    loss_of(u, vt, vn, ex, rows, negatives, positives, s, device)
}

/// The personal vector alone, trained by SGD while everything else is constant.
#[derive(Module, Debug)]
struct Personal<B: Backend> {
    p: Param<Tensor<B, 2>>,
}

/// One person's model on their device, with their examples, ready to train.
struct Local<B: AutodiffBackend> {
    model: TwoTower<B>,
    ex: Steps,
    positives: std::collections::HashSet<u32>,
    rng: ChaCha8Rng,
}

impl<B: AutodiffBackend> Local<B> {
    #[allow(clippy::too_many_arguments)]
    fn new(global: &TensorFile, dims: &ModelDims, catalog: &CatalogTags, person: &PersonData, settings: &ModelSettings, local: &LocalTraining, seed: u64, device: &B::Device) -> Result<Self, FedError> {
        let n_items = dims.items as u32;
        if person.history.is_empty() || person.history.iter().any(|&i| i >= n_items) {
            return Err(FedError::Training(format!("a history of {} items, all in a catalog of {n_items}", person.history.len())));
        }
        if catalog.items.len() != dims.items {
            return Err(FedError::Shape(format!("{} catalog items for a model of {}", catalog.items.len(), dims.items)));
        }
        let item_tags: Vec<&[u32]> = catalog.items.iter().map(Vec::as_slice).collect();
        let tags: Vec<u32> = person.tags.iter().copied().filter(|&t| (t as usize) < dims.user_tags).collect();
        let model = TwoTower::<B> {
            global: GlobalParams::from_file(dims, global, device).map_err(|e| FedError::Shape(e.to_string()))?,
            personal: PersonalTable::zeros(1, dims.dim, device),
            features: Features::new(&item_tags, catalog.item_tags, &[tags.as_slice()], dims.user_tags, device),
        };
        Ok(Local {
            model,
            ex: examples(person, dims.history, settings.rating_weight),
            positives: person.history.iter().copied().collect(),
            rng: ChaCha8Rng::seed_from_u64(seed ^ local.seed.rotate_left(17)),
        })
    }

    fn negatives(&mut self, count: u32) -> Vec<u32> {
        let n = self.model.dims().items as u32;
        (0..count.max(1)).map(|_| self.rng.random_range(0..n)).collect()
    }

    /// Reconstruction: the personal vector alone, on the whole history, by SGD; the tower's
    /// vectors and the item vectors are constants for it, computed once.
    fn reconstruct(&mut self, settings: &ModelSettings, local: &LocalTraining, device: &B::Device) -> Tensor<B, 2> {
        let all: Vec<usize> = (0..self.ex.targets.len()).collect();
        let negatives = self.negatives(local.negatives);
        let history = self.model.dims().history;
        let [shared, vt, vn] = inputs(&self.model, &self.ex, &all, &negatives, history, device).map(|t| t.detach());
        let mut personal = Personal { p: Param::from_tensor(Tensor::<B, 2>::zeros([1, shared.dims()[1]], device)) };
        let mut sgd = SgdConfig::new().init::<B, Personal<B>>();
        for _ in 0..local.reconstruction_steps {
            let u = shared.clone() + personal.p.val();
            let l = loss_of(u, vt.clone(), vn.clone(), &self.ex, &all, &negatives, &self.positives, settings, device);
            let grads = GradientsParams::from_grads(l.backward(), &personal);
            personal = sgd.step(local.reconstruction_lr, personal, grads);
        }
        let p = personal.p.val().detach();
        self.model.personal = PersonalTable { weight: Param::from_tensor(p.clone()) };
        p
    }
}

/// The person's own vector, rebuilt on their device from the global parameters and their
/// history (Federated Reconstruction's first step): what a device adds to the tower's output
/// when it scores with a federated model, and how such a model is evaluated.
#[allow(clippy::too_many_arguments)]
pub fn reconstruct<B: AutodiffBackend>(
    global: &TensorFile,
    dims: &ModelDims,
    catalog: &CatalogTags,
    person: &PersonData,
    settings: &ModelSettings,
    local: &LocalTraining,
    seed: u64,
    device: &B::Device,
) -> Result<Vec<f32>, FedError> {
    let mut l = Local::<B>::new(global, dims, catalog, person, settings, local, seed, device)?;
    let p = l.reconstruct(settings, local, device);
    p.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| FedError::Training(format!("{e:?}")))
}

/// Trains the federated groups of `global` on one person's history (Federated Reconstruction),
/// returning the difference of the federated values. Deterministic for a seed.
#[allow(clippy::too_many_arguments)]
pub fn local_update<B: AutodiffBackend>(
    global: &TensorFile,
    dims: &ModelDims,
    catalog: &CatalogTags,
    layout: &Layout,
    person: &PersonData,
    settings: &ModelSettings,
    local: &LocalTraining,
    seed: u64,
    device: &B::Device,
) -> Result<LocalUpdate, FedError> {
    let before = layout.flatten(global)?;
    let mut l = Local::<B>::new(global, dims, catalog, person, settings, local, seed, device)?;
    l.reconstruct(settings, local, device);
    let Local { mut model, ex, positives, mut rng } = l;
    let n_items = dims.items as u32;
    let draw = |rng: &mut ChaCha8Rng| -> Vec<u32> { (0..local.negatives.max(1)).map(|_| rng.random_range(0..n_items)).collect() };
    let all: Vec<usize> = (0..ex.targets.len()).collect();
    let eval_negatives = draw(&mut rng);
    let value = |model: &TwoTower<B>| -> f32 { loss(model, &ex, &all, &eval_negatives, &positives, settings, dims.history, device).into_scalar().elem::<f32>() };
    let loss_before = value(&model);

    // The federated groups, with the personal vector frozen.
    let federated = ids_of(&model.global, &layout.names());
    let mut sgd = SgdConfig::new().init::<B, TwoTower<B>>();
    let mut order = all.clone();
    for _ in 0..local.epochs {
        use rand::seq::SliceRandom;
        order.shuffle(&mut rng);
        for rows in order.chunks(local.batch as usize) {
            let negatives = draw(&mut rng);
            let l = loss(&model, &ex, rows, &negatives, &positives, settings, dims.history, device);
            let grads = GradientsParams::from_params(&mut l.backward(), &model, &federated);
            model = sgd.step(local.lr, model, grads);
        }
    }
    let loss_after = value(&model);
    if !(loss_before.is_finite() && loss_after.is_finite()) {
        return Err(FedError::Training(format!("the local loss diverged ({loss_before} -> {loss_after})")));
    }
    let trained = model.global.valid().to_file();
    let after = layout.flatten(&trained)?;
    let delta = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    Ok(LocalUpdate { delta, loss_before, loss_after })
}
