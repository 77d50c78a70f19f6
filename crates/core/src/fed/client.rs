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

use burn::module::{AutodiffModule, ParamId};
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

/// The local loss on rows `rows` of `ex` against `negatives`: weighted softmax cross-entropy
/// through the link plus the user-vector penalty.
#[allow(clippy::too_many_arguments)]
fn loss<B: Backend>(model: &TwoTower<B>, ex: &Steps, rows: &[usize], negatives: &[u32], positives: &std::collections::HashSet<u32>, s: &ModelSettings, history_len: usize, device: &B::Device) -> Tensor<B, 1> {
    let b = rows.len();
    let m = negatives.len();
    let users = vec![0u32; b];
    let hists: Vec<&[u32]> = rows.iter().map(|&r| ex.contexts[r].as_slice()).collect();
    let batch = UserBatch::<B>::new(&users, &hists, history_len, device);
    let u = model.user_vectors(&batch); // [b, d]
    let targets: Vec<i32> = rows.iter().map(|&r| ex.targets[r] as i32).collect();
    let vt = model.item_vectors_of(Tensor::from_data(TensorData::new(targets, [b]), device)); // [b, d]
    let neg_ids: Vec<i32> = negatives.iter().map(|&i| i as i32).collect();
    let vn = model.item_vectors_of(Tensor::from_data(TensorData::new(neg_ids, [m]), device)); // [m, d]
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
    let n_items = dims.items as u32;
    if person.history.is_empty() || person.history.iter().any(|&i| i >= n_items) {
        return Err(FedError::Training(format!("a history of {} items, all in a catalog of {n_items}", person.history.len())));
    }
    if catalog.items.len() != dims.items {
        return Err(FedError::Shape(format!("{} catalog items for a model of {}", catalog.items.len(), dims.items)));
    }
    let before = layout.flatten(global)?;
    let item_tags: Vec<&[u32]> = catalog.items.iter().map(Vec::as_slice).collect();
    let tags: Vec<u32> = person.tags.iter().copied().filter(|&t| (t as usize) < dims.user_tags).collect();
    let mut model = TwoTower::<B> {
        global: GlobalParams::from_file(dims, global, device).map_err(|e| FedError::Shape(e.to_string()))?,
        personal: PersonalTable::zeros(1, dims.dim, device),
        features: Features::new(&item_tags, catalog.item_tags, &[tags.as_slice()], dims.user_tags, device),
    };
    let ex = examples(person, dims.history, settings.rating_weight);
    let positives: std::collections::HashSet<u32> = person.history.iter().copied().collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ local.seed.rotate_left(17));
    let draw = |rng: &mut ChaCha8Rng| -> Vec<u32> { (0..local.negatives.max(1)).map(|_| rng.random_range(0..n_items)).collect() };
    let all: Vec<usize> = (0..ex.targets.len()).collect();

    // Reconstruction: the personal vector alone, on the whole history.
    let personal_id = [model.personal.weight.id];
    let mut sgd = SgdConfig::new().init::<B, TwoTower<B>>();
    let recon_negatives = draw(&mut rng);
    for _ in 0..local.reconstruction_steps {
        let l = loss(&model, &ex, &all, &recon_negatives, &positives, settings, dims.history, device);
        let grads = GradientsParams::from_params(&mut l.backward(), &model, &personal_id);
        model = sgd.step(local.reconstruction_lr, model, grads);
    }
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
