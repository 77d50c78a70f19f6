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
//! target predicted from the ones before it, in a softmax against sampled negatives (items the
//! person has touched are never negatives), through the model's link, weighted by the rating's
//! confidence, with the user-vector penalty. The negatives are drawn as central training's
//! candidates are: a share in proportion to the served catalog's popularity (central training's
//! in-batch targets) and the rest uniformly, every logit corrected by its candidate's log
//! sampling probability (logQ, Yi et al. RecSys 2019). Uniform negatives alone rarely hold the
//! popular items a person did not pick, so local steps learned little about ranking them.

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
    /// When each happened (any monotone clock; items sharing a time are a set, as in central
    /// training), or empty when the history has no order (then it is one set).
    pub times: Vec<i64>,
    /// Their user tags (e.g. age band) in the model's vocabulary.
    pub tags: Vec<u32>,
}

/// The catalog side a device trains with, all of it public (the served catalog's).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceCatalog {
    /// Tag indices of each item, by catalog index.
    pub items: Vec<Vec<u32>>,
    /// Size of the item tag vocabulary.
    pub item_tags: usize,
    /// How often each item was a training target of the served model (`Catalog::popularity`),
    /// by catalog index; empty: negatives are drawn uniformly.
    pub popularity: Vec<u32>,
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
    /// Weights of the popularity-drawn and the uniform candidates of central training
    /// (`batch` and `negatives` of its configuration when it corrected by logQ; `(0, 1)`: uniform
    /// negatives, no correction).
    pub candidate_mix: (f32, f32),
}

impl ModelSettings {
    /// The settings a model's manifest records (its link and training configuration).
    pub fn of(manifest: &crate::artifact::ModelManifest) -> Result<ModelSettings, FedError> {
        let h = &manifest.hyper;
        let number = |key: &str| h.get(key).and_then(serde_json::Value::as_f64).unwrap_or(0.0) as f32;
        let logq = h.get("logq").and_then(serde_json::Value::as_bool).unwrap_or(false);
        Ok(ModelSettings {
            link: manifest.link().map_err(FedError::Plan)?,
            rating_weight: number("rating_weight"),
            user_l2: number("user_l2"),
            candidate_mix: if logq { (number("batch"), number("negatives")) } else { (0.0, 1.0) },
        })
    }
}

/// How a device draws its negatives: the mixture of central training's candidates, and each
/// item's log probability under it (None: uniform, no correction needed).
struct Sampler {
    items: u32,
    /// Cumulative popularity, and the probability of a popularity draw.
    popular: Option<(Vec<u64>, f64)>,
    log_q: Option<Vec<f32>>,
}

impl Sampler {
    fn new(catalog: &DeviceCatalog, items: usize, mix: (f32, f32)) -> Result<Sampler, FedError> {
        let (p, u) = (f64::from(mix.0), f64::from(mix.1));
        let total: u64 = catalog.popularity.iter().map(|&c| u64::from(c)).sum();
        if !(p.is_finite() && u.is_finite() && p >= 0.0 && u >= 0.0 && p + u > 0.0) {
            return Err(FedError::Plan(format!("candidate weights {p} and {u}")));
        }
        if p == 0.0 || total == 0 {
            return Ok(Sampler { items: items as u32, popular: None, log_q: None });
        }
        if catalog.popularity.len() != items {
            return Err(FedError::Shape(format!("popularity of {} items for a model of {items}", catalog.popularity.len())));
        }
        let cumulative = catalog.popularity.iter().scan(0u64, |acc, &c| { *acc += u64::from(c); Some(*acc) }).collect();
        Ok(Sampler {
            items: items as u32,
            popular: Some((cumulative, p / (p + u))),
            log_q: Some(crate::model::mixture_log_q(&catalog.popularity, p, u)),
        })
    }

    fn draw(&self, rng: &mut ChaCha8Rng, count: u32) -> Vec<u32> {
        (0..count.max(1))
            .map(|_| match &self.popular {
                Some((cumulative, share)) if rng.random::<f64>() < *share => {
                    let total = cumulative.last().copied().unwrap_or(1);
                    let x = rng.random_range(0..total);
                    cumulative.partition_point(|&c| c <= x) as u32
                }
                _ => rng.random_range(0..self.items),
            })
            .collect()
    }
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

/// The person's examples: rows of (context, target, confidence). Contexts are central
/// training's (`model::Examples`: the items before the target and its tie-mates, at most
/// `history_len`), drawn afresh by [`Steps::redraw`] each epoch as central training does.
#[derive(Clone)]
struct Steps {
    source: crate::model::Examples,
    history_len: usize,
    contexts: Vec<Vec<u32>>,
    weights: Vec<f32>,
}

impl Steps {
    fn new(person: &PersonData, history_len: usize, rating_weight: f32, rng: &mut ChaCha8Rng) -> Result<Steps, FedError> {
        let h = &person.history;
        let order = match person.times.len() {
            0 => crate::data::Order::Unordered,
            n if n == h.len() && person.times.is_sorted() => crate::data::Order::Sequential,
            n => return Err(FedError::Training(format!("{n} times for a history of {}, or out of order", h.len()))),
        };
        let timed: Vec<(u32, i64)> = h.iter().enumerate().map(|(t, &i)| (i, person.times.get(t).copied().unwrap_or(0))).collect();
        let weights = (0..h.len()).map(|t| 1.0 + rating_weight * person.ratings.get(t).copied().unwrap_or(1.0).max(0.0).ln_1p()).collect();
        let mut steps = Steps { source: crate::model::Examples::new(&[timed], order), history_len, contexts: vec![], weights };
        steps.redraw(rng);
        Ok(steps)
    }

    /// The targets: the person's items in time order.
    fn targets(&self) -> &[u32] {
        &self.source.histories[0]
    }

    fn redraw(&mut self, rng: &mut ChaCha8Rng) {
        let mut scratch = vec![];
        self.contexts = (0..self.targets().len()).map(|t| self.source.context(0, t, self.history_len, rng, &mut scratch)).collect();
    }
}

/// What the loss of rows `rows` reads: the user tower's vectors `[b, d]` (without the personal
/// vector), the targets' item vectors `[b, d]` and the negatives' `[m, d]`.
fn inputs<B: Backend>(model: &TwoTower<B>, ex: &Steps, rows: &[usize], negatives: &[u32], history_len: usize, device: &B::Device) -> [Tensor<B, 2>; 3] {
    let b = rows.len();
    let users = vec![0u32; b];
    let hists: Vec<&[u32]> = rows.iter().map(|&r| ex.contexts[r].as_slice()).collect();
    let batch = UserBatch::<B>::new(&users, &hists, history_len, device);
    let s = model.shared_user_vectors(&batch);
    let targets: Vec<i32> = rows.iter().map(|&r| ex.targets()[r] as i32).collect();
    let vt = model.item_vectors_of(Tensor::from_data(TensorData::new(targets, [b]), device));
    let neg_ids: Vec<i32> = negatives.iter().map(|&i| i as i32).collect();
    let vn = model.item_vectors_of(Tensor::from_data(TensorData::new(neg_ids, [negatives.len()]), device));
    [s, vt, vn]
}

/// The local loss of user vectors `u` `[b, d]` against their targets `vt` and the shared
/// negatives `vn`: softmax cross-entropy through the link (negatives the person touched masked,
/// every candidate corrected by its log sampling probability when the draws were not uniform),
/// weighted by each example's confidence, plus the user-vector penalty.
#[allow(clippy::too_many_arguments)]
fn loss_of<B: Backend>(u: Tensor<B, 2>, vt: Tensor<B, 2>, vn: Tensor<B, 2>, ex: &Steps, rows: &[usize], negatives: &[u32], positives: &std::collections::HashSet<u32>, s: &ModelSettings, log_q: Option<&[f32]>, device: &B::Device) -> Tensor<B, 1> {
    let (b, m) = (rows.len(), negatives.len());
    let zt = u.clone().mul(vt).sum_dim(1); // [b, 1]
    let zn = u.clone().matmul(vn.transpose()); // [b, m]
    let q = |i: u32| log_q.map_or(0.0, |l| l[i as usize]);
    let shift: Vec<f32> = negatives.iter().map(|&n| if positives.contains(&n) { -1e9 } else { -q(n) }).collect();
    let target_shift: Vec<f32> = rows.iter().map(|&r| -q(ex.targets()[r])).collect();
    let shift = Tensor::cat(
        vec![Tensor::<B, 2>::from_data(TensorData::new(target_shift, [b, 1]), device), Tensor::<B, 2>::from_data(TensorData::new(shift, [1, m]), device).repeat_dim(0, b)],
        1,
    );
    let logits = link_logits(Tensor::cat(vec![zt, zn], 1), s.link) + shift;
    let w: Vec<f32> = rows.iter().map(|&r| ex.weights[r]).collect();
    let total: f32 = w.iter().sum();
    let w = Tensor::<B, 2>::from_data(TensorData::new(w, [b, 1]), device);
    let ce = activation::log_softmax(logits, 1).slice([0..b, 0..1]).mul(w).sum().div_scalar(-total.max(f32::MIN_POSITIVE));
    if s.user_l2 > 0.0 { ce + u.powf_scalar(2.0).sum_dim(1).mean().mul_scalar(s.user_l2) } else { ce }
}

/// The whole model's local loss on rows `rows` (user vectors with the personal vector).
#[allow(clippy::too_many_arguments)]
fn loss<B: Backend>(model: &TwoTower<B>, ex: &Steps, rows: &[usize], negatives: &[u32], positives: &std::collections::HashSet<u32>, s: &ModelSettings, log_q: Option<&[f32]>, history_len: usize, device: &B::Device) -> Tensor<B, 1> {
    let [shared, vt, vn] = inputs(model, ex, rows, negatives, history_len, device);
    let u = shared + model.personal.weight.val().slice([0..1]);
    loss_of(u, vt, vn, ex, rows, negatives, positives, s, log_q, device)
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
    sampler: Sampler,
    rng: ChaCha8Rng,
}

impl<B: AutodiffBackend> Local<B> {
    #[allow(clippy::too_many_arguments)]
    fn new(global: &TensorFile, dims: &ModelDims, catalog: &DeviceCatalog, person: &PersonData, settings: &ModelSettings, local: &LocalTraining, seed: u64, device: &B::Device) -> Result<Self, FedError> {
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
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ local.seed.rotate_left(17));
        Ok(Local {
            model,
            ex: Steps::new(person, dims.history, settings.rating_weight, &mut rng)?,
            positives: person.history.iter().copied().collect(),
            sampler: Sampler::new(catalog, dims.items, settings.candidate_mix)?,
            rng,
        })
    }

    /// Reconstruction: the personal vector alone, on the whole history, by SGD; the tower's
    /// vectors and the item vectors are constants for it, computed once.
    fn reconstruct(&mut self, settings: &ModelSettings, local: &LocalTraining, device: &B::Device) -> Tensor<B, 2> {
        let all: Vec<usize> = (0..self.ex.targets().len()).collect();
        let negatives = self.sampler.draw(&mut self.rng, local.negatives);
        let history = self.model.dims().history;
        let [shared, vt, vn] = inputs(&self.model, &self.ex, &all, &negatives, history, device).map(|t| t.detach());
        let mut personal = Personal { p: Param::from_tensor(Tensor::<B, 2>::zeros([1, shared.dims()[1]], device)) };
        let mut sgd = SgdConfig::new().init::<B, Personal<B>>();
        for _ in 0..local.reconstruction_steps {
            let u = shared.clone() + personal.p.val();
            let l = loss_of(u, vt.clone(), vn.clone(), &self.ex, &all, &negatives, &self.positives, settings, self.sampler.log_q.as_deref(), device);
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
    catalog: &DeviceCatalog,
    person: &PersonData,
    settings: &ModelSettings,
    local: &LocalTraining,
    seed: u64,
    device: &B::Device,
) -> Result<Vec<f32>, FedError> {
    let _autodiff = crate::model::autodiff_lock();
    let mut l = Local::<B>::new(global, dims, catalog, person, settings, local, seed, device)?;
    let p = l.reconstruct(settings, local, device);
    p.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| FedError::Training(format!("{e:?}")))
}

/// Trains the federated groups of `global` on one person's history (Federated Reconstruction),
/// returning the difference of the federated values. Deterministic for a seed, on any number of
/// threads (it holds [`crate::model::autodiff_lock`]).
#[allow(clippy::too_many_arguments)]
pub fn local_update<B: AutodiffBackend>(
    global: &TensorFile,
    dims: &ModelDims,
    catalog: &DeviceCatalog,
    layout: &Layout,
    person: &PersonData,
    settings: &ModelSettings,
    local: &LocalTraining,
    seed: u64,
    device: &B::Device,
) -> Result<LocalUpdate, FedError> {
    let before = layout.flatten(global)?;
    let _autodiff = crate::model::autodiff_lock();
    let mut l = Local::<B>::new(global, dims, catalog, person, settings, local, seed, device)?;
    l.reconstruct(settings, local, device);
    // The global steps' penalty: the plan's, where it sets one.
    let settings = &ModelSettings { user_l2: local.user_l2.map_or(settings.user_l2, |p| p as f32), ..*settings };
    let Local { mut model, mut ex, positives, sampler, mut rng } = l;
    let log_q = sampler.log_q.as_deref();
    let all: Vec<usize> = (0..ex.targets().len()).collect();
    let eval_negatives = sampler.draw(&mut rng, local.negatives);
    let fixed = ex.clone();
    let value = |model: &TwoTower<B>| -> f32 { loss(model, &fixed, &all, &eval_negatives, &positives, settings, log_q, dims.history, device).into_scalar().elem::<f32>() };
    let loss_before = value(&model);

    // The federated groups, with the personal vector frozen.
    let federated = ids_of(&model.global, &layout.names());
    let mut sgd = SgdConfig::new().init::<B, TwoTower<B>>();
    let mut order = all.clone();
    for epoch in 0..local.epochs {
        use rand::seq::SliceRandom;
        if epoch > 0 {
            ex.redraw(&mut rng);
        }
        order.shuffle(&mut rng);
        for rows in order.chunks(local.batch as usize) {
            let negatives = sampler.draw(&mut rng, local.negatives);
            let l = loss(&model, &ex, rows, &negatives, &positives, settings, log_q, dims.history, device);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(popularity: Vec<u32>) -> DeviceCatalog {
        DeviceCatalog { items: vec![vec![]; popularity.len()], item_tags: 0, popularity }
    }

    #[test]
    fn negatives_follow_central_trainings_candidate_mixture_and_its_correction() {
        // Item 0 is 90 % of the targets; one candidate in three is a popularity draw.
        let s = Sampler::new(&catalog(vec![90, 10, 0, 0]), 4, (1.0, 2.0)).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let draws = s.draw(&mut rng, 60_000);
        let log_q = s.log_q.as_deref().unwrap();
        for item in 0..4u32 {
            let seen = draws.iter().filter(|&&d| d == item).count() as f64 / draws.len() as f64;
            let q = f64::from(log_q[item as usize]).exp();
            assert!((seen - q).abs() < 0.01, "item {item}: drawn {seen}, q {q}");
        }
        // q(0) = (0.9 + 2/4) / 3, q(2) = (0 + 2/4) / 3: the same formula as central training's.
        assert!((f64::from(log_q[0]).exp() - 1.4 / 3.0).abs() < 1e-6);
        assert!((f64::from(log_q[2]).exp() - 0.5 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn without_popularity_or_popular_weight_negatives_are_uniform_and_uncorrected() {
        for s in [Sampler::new(&catalog(vec![]), 4, (256.0, 512.0)).unwrap(), Sampler::new(&catalog(vec![5, 0, 0, 0]), 4, (0.0, 1.0)).unwrap()] {
            assert!(s.log_q.is_none());
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            let draws = s.draw(&mut rng, 4_000);
            assert!((0..4).all(|i| draws.iter().filter(|&&d| d == i).count() > 800), "every item drawn about a quarter of the time");
        }
        assert!(matches!(Sampler::new(&catalog(vec![1, 2]), 4, (1.0, 1.0)), Err(FedError::Shape(_))), "popularity of the wrong length");
        assert!(matches!(Sampler::new(&catalog(vec![1; 4]), 4, (f32::NAN, 1.0)), Err(FedError::Plan(_))));
        assert!(matches!(Sampler::new(&catalog(vec![1; 4]), 4, (0.0, 0.0)), Err(FedError::Plan(_))));
    }

    #[test]
    fn contexts_are_central_trainings_earlier_items_and_tie_mates() {
        let person = PersonData { history: vec![10, 11, 12, 13], ratings: vec![], times: vec![5, 6, 6, 8], tags: vec![] };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let steps = Steps::new(&person, 50, 0.0, &mut rng).unwrap();
        let sorted = |mut v: Vec<u32>| {
            v.sort_unstable();
            v
        };
        let contexts: Vec<Vec<u32>> = steps.contexts.iter().cloned().map(sorted).collect();
        assert_eq!(contexts, vec![vec![], vec![10, 12], vec![10, 11], vec![10, 11, 12]]);
        // Without times the history is a set: any other items, never the target.
        let set = PersonData { times: vec![], ..person.clone() };
        let steps = Steps::new(&set, 50, 0.0, &mut rng).unwrap();
        for (t, c) in steps.contexts.iter().enumerate() {
            assert!(!c.is_empty() && !c.contains(&set.history[t]), "{c:?}");
        }
        for times in [vec![1, 2], vec![3, 2, 2, 1]] {
            let bad = PersonData { times, ..person.clone() };
            assert!(matches!(Steps::new(&bad, 50, 0.0, &mut rng), Err(FedError::Training(_))));
        }
    }

    #[test]
    fn settings_come_from_the_manifest() {
        let manifest: crate::artifact::ModelManifest =
            serde_json::from_str(include_str!("../../../../models/ml100k/manifest.json")).unwrap();
        let s = ModelSettings::of(&manifest).unwrap();
        assert_eq!(s.candidate_mix, (256.0, 512.0), "logq with batch 256 and 512 negatives");
        assert_eq!((s.rating_weight, s.user_l2), (1.0, 0.1));
        let mut uncorrected = manifest.clone();
        uncorrected.hyper["logq"] = serde_json::Value::Bool(false);
        assert_eq!(ModelSettings::of(&uncorrected).unwrap().candidate_mix, (0.0, 1.0));
    }
    #[cfg(feature = "cpu")]
    #[test]
    fn a_plans_local_penalty_changes_the_update_and_a_seed_repeats_it() {
        type B = burn::backend::Autodiff<burn::backend::Flex>;
        let dims = ModelDims { items: 30, item_tags: 2, user_tags: 2, users: 1, dim: 4, hidden: 8, history: 5 };
        let device = Default::default();
        let global = GlobalParams::<burn::backend::Flex>::init(&dims, &mut ChaCha8Rng::seed_from_u64(1), &device).to_file();
        let layout = Layout::new(&dims, &[crate::fed::plan::Group::Tower]);
        let catalog = DeviceCatalog { items: (0..30).map(|i| vec![i % 2]).collect(), item_tags: 2, popularity: (0..30).map(|i| 30 - i).collect() };
        let person = PersonData { history: vec![3, 1, 4, 15, 9, 2, 6], ratings: vec![4.0; 7], times: vec![1, 2, 2, 3, 4, 4, 5], tags: vec![1] };
        let settings = ModelSettings { link: Link::Softplus, rating_weight: 1.0, user_l2: 1.0, candidate_mix: (1.0, 2.0) };
        let local = LocalTraining { reconstruction_steps: 0, epochs: 2, lr: 0.1, ..LocalTraining::default() };
        let update = |local: &LocalTraining| local_update::<B>(&global, &dims, &catalog, &layout, &person, &settings, local, 9, &device).unwrap();
        let a = update(&local);
        assert_eq!(a.delta.len(), layout.len());
        assert!(a.loss_after < a.loss_before, "{} -> {}", a.loss_before, a.loss_after);
        assert_eq!(update(&local), a, "deterministic for a seed");
        let b = update(&LocalTraining { user_l2: Some(0.0), ..local.clone() });
        assert_ne!(a.delta, b.delta, "the plan's penalty replaces the model's");
        assert_eq!(update(&LocalTraining { user_l2: Some(1.0), ..local.clone() }), a, "the model's value, given again, changes nothing");
    }

    /// burn 0.21 loses a gradient now and then when two threads record graphs at once
    /// (tracel-ai/burn#5573): updates trained on several threads must be the bits of the same
    /// updates trained one at a time.
    #[cfg(feature = "cpu")]
    #[test]
    fn updates_trained_on_many_threads_are_the_ones_trained_alone() {
        type B = burn::backend::Autodiff<burn::backend::Flex>;
        let dims = ModelDims { items: 400, item_tags: 6, user_tags: 3, users: 1, dim: 16, hidden: 32, history: 20 };
        let device = Default::default();
        let global = GlobalParams::<burn::backend::Flex>::init(&dims, &mut ChaCha8Rng::seed_from_u64(3), &device).to_file();
        let layout = Layout::new(&dims, &[crate::fed::plan::Group::Tower]);
        let catalog = DeviceCatalog { items: (0..400).map(|i| vec![i % 6, (i / 7) % 6]).collect(), item_tags: 6, popularity: (0..400).map(|i| 400 - i).collect() };
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let people: Vec<PersonData> = (0..8)
            .map(|_| {
                let n = rng.random_range(10..40);
                PersonData { history: (0..n).map(|_| rng.random_range(0..400)).collect(), ratings: vec![3.0; n], times: (0..n as i64).collect(), tags: vec![rng.random_range(0..3)] }
            })
            .collect();
        let settings = ModelSettings { link: Link::Softplus, rating_weight: 1.0, user_l2: 0.1, candidate_mix: (1.0, 2.0) };
        let local = LocalTraining { reconstruction_steps: 3, epochs: 2, batch: 4, lr: 0.05, negatives: 32, ..LocalTraining::default() };
        let people = &people;
        let update = &|k: usize| local_update::<B>(&global, &dims, &catalog, &layout, &people[k], &settings, &local, k as u64, &device).unwrap().delta;
        let alone: Vec<Vec<f32>> = (0..people.len()).map(update).collect();
        for _ in 0..4 {
            std::thread::scope(|s| {
                let threads: Vec<_> = (0..4).map(|t| s.spawn(move || (0..people.len()).map(|k| ((k + t) % people.len(), update((k + t) % people.len()))).collect::<Vec<_>>())).collect();
                for t in threads {
                    for (k, delta) in t.join().unwrap() {
                        assert!(delta.iter().zip(&alone[k]).all(|(a, b)| a.to_bits() == b.to_bits()), "person {k}'s update differs when others train at once");
                    }
                }
            });
        }
    }

}
