//! Fine-tuning one person's embedding on their own history, on their device (the browser's
//! training worker; natively in tests). Written once over burn's `AutodiffBackend`: WebGPU in a
//! browser, burn-ndarray where there is no GPU, any backend natively.
//!
//! The user tower gives a starting vector `u0` from the history; fine-tuning learns `u` so the
//! person's positive items outscore others (softmax cross-entropy of each positive against one
//! fixed sample of negatives, so the loss is comparable from step to step, through the link the
//! model was trained with; Adam), with an L2 pull towards `u0` so a few items cannot drag it
//! anywhere. The item vectors are the served catalog's int8 rows, dequantized: exactly what
//! scoring uses. The result is stored as an offset `u - u0` (see
//! [`crate::person::history::Tuning`]) that is added to the tower's output from then on.

use burn::module::Param;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::artifact::Link;
use crate::quant::CatalogView;

/// Fine-tuning settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TuneConfig {
    /// Optimizer steps.
    pub steps: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Negatives, sampled once per run from items that are not positives (at most all of them).
    pub negatives: usize,
    /// Weight of the squared distance to the tower's vector.
    pub pull: f32,
    /// Seed for negative sampling.
    pub seed: u64,
    /// The link the model was trained with ([`crate::artifact::ModelManifest::link`]).
    pub link: Link,
}

impl Default for TuneConfig {
    fn default() -> Self {
        TuneConfig { steps: 40, lr: 0.05, negatives: 512, pull: 0.05, seed: 0, link: Link::Softplus }
    }
}

/// What fine-tuning produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Tuned {
    /// The tuned vector `u`.
    pub vector: Vec<f32>,
    /// The loss at every step (before that step's update).
    pub losses: Vec<f32>,
}

/// Why fine-tuning could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TuneError {
    /// Bad arguments (widths, indices, settings).
    #[error("cannot fine-tune: {0}")]
    Invalid(String),
    /// The backend failed to return results.
    #[error("the training backend failed: {0}")]
    Backend(String),
    /// The loss became NaN or infinite.
    #[error("fine-tuning diverged (loss {0})")]
    Diverged(f32),
}

#[derive(Module, Debug)]
struct Personal<B: Backend> {
    u: Param<Tensor<B, 2>>,
}

/// Fine-tunes `start` (the tower's vector) on `positives` (catalog indices) against the
/// catalog `view`. Needs at least one positive and one other item.
pub async fn fine_tune<B: AutodiffBackend>(
    view: CatalogView<'_>,
    start: &[f32],
    positives: &[u32],
    cfg: &TuneConfig,
    device: &B::Device,
) -> Result<Tuned, TuneError> {
    let (n, d) = (view.len(), view.dim());
    if start.len() != d {
        return Err(TuneError::Invalid(format!("the vector has {} values, the catalog {d}", start.len())));
    }
    if !start.iter().all(|v| v.is_finite()) {
        return Err(TuneError::Invalid("the vector is not finite".into()));
    }
    let mut pos: Vec<u32> = positives.to_vec();
    pos.sort_unstable();
    pos.dedup();
    if pos.is_empty() || pos.iter().any(|&i| i as usize >= n) || pos.len() >= n {
        return Err(TuneError::Invalid(format!("{} positives for a catalog of {n}", pos.len())));
    }
    if cfg.steps == 0 || cfg.negatives == 0 || !(cfg.lr.is_finite() && cfg.lr > 0.0) || !(cfg.pull.is_finite() && cfg.pull >= 0.0) {
        return Err(TuneError::Invalid("steps and negatives must be >= 1, lr > 0, pull >= 0".into()));
    }
    let rows = |ids: &[u32]| -> Vec<f32> { ids.iter().flat_map(|&i| view.dequantize(i as usize)).collect() };
    let p = pos.len();
    let positives_t = Tensor::<B, 2>::from_data(TensorData::new(rows(&pos), [p, d]), device);
    let anchor = Tensor::<B, 2>::from_data(TensorData::new(start.to_vec(), [1, d]), device);
    let mut model = Personal { u: Param::from_tensor(anchor.clone()) };
    let mut optim = AdamConfig::new().init::<B, Personal<B>>();
    // The negatives: every other item when there are few, else a seeded sample without repeats.
    let mut others: Vec<u32> = (0..n as u32).filter(|i| pos.binary_search(i).is_err()).collect();
    let m = cfg.negatives.min(others.len());
    if m < others.len() {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        for i in 0..m {
            let j = rng.random_range(i..others.len());
            others.swap(i, j);
        }
        others.truncate(m);
    }
    let neg = Tensor::<B, 2>::from_data(TensorData::new(rows(&others), [m, d]), device).transpose();
    let mut target = vec![0f32; p * (1 + m)];
    for r in 0..p {
        target[r * (1 + m)] = 1.0;
    }
    let targets = Tensor::<B, 2>::from_data(TensorData::new(target, [p, 1 + m]), device);
    let mut losses = Vec::with_capacity(cfg.steps);
    // Held while the graphs are recorded, not across the reads below (see `autodiff_lock`).
    let autodiff = crate::model::autodiff_lock();
    for _ in 0..cfg.steps {
        let u = model.u.val();
        let sp = positives_t.clone().mul(u.clone().expand([p, d])).sum_dim(1); // [p, 1]
        let sn = u.clone().matmul(neg.clone()).expand([p, m]); // [p, m]
        let logits = crate::model::link_logits(Tensor::cat(vec![sp, sn], 1), cfg.link);
        let ce = burn::tensor::loss::cross_entropy_with_logits(logits, targets.clone());
        let pull = (u - anchor.clone()).powi_scalar(2).sum().mul_scalar(cfg.pull);
        let loss = ce + pull;
        losses.push(loss.clone().inner());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(cfg.lr, model, grads);
    }
    drop(autodiff);
    let losses: Vec<f32> = read(Tensor::cat(losses, 0)).await?;
    if let Some(bad) = losses.iter().find(|l| !l.is_finite()) {
        return Err(TuneError::Diverged(*bad));
    }
    let vector: Vec<f32> = read(model.u.val().inner().reshape([d])).await?;
    Ok(Tuned { vector, losses })
}

/// A tensor's values, read back asynchronously (WebGPU cannot block).
async fn read<B: Backend>(t: Tensor<B, 1>) -> Result<Vec<f32>, TuneError> {
    let data = t.into_data_async().await.map_err(|e| TuneError::Backend(format!("{e:?}")))?;
    data.to_vec().map_err(|e| TuneError::Backend(format!("{e:?}")))
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use crate::artifact::shard::CatalogShard;

    type B = burn::backend::Autodiff<burn::backend::Flex>;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        // The CPU backend's futures are ready at once.
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    #[test]
    fn the_loss_falls_and_the_positives_rise() {
        let (n, d) = (500, 16);
        let values: Vec<f32> = crate::testkit::gaussian(1, n * d).iter().map(|v| v * 0.3).collect();
        let shard = CatalogShard::from_f32("1", (0..n).map(|i| i.to_string()).collect(), d, &values).unwrap();
        let start: Vec<f32> = crate::testkit::gaussian(2, d).iter().map(|v| v * 0.3).collect();
        let positives = [3, 50, 99, 400];
        let dev = Default::default();
        // Both links learn; the plain one is what models trained before links were.
        for link in [Link::Softplus, Link::Exp] {
            let cfg = TuneConfig { link, ..TuneConfig::default() };
            let t = block_on(fine_tune::<B>(shard.view(), &start, &positives, &cfg, &dev)).unwrap();
            assert!(t.losses[39] < 0.95 * t.losses[0], "{link:?}: {:?}", t.losses);
        }
        let t = block_on(fine_tune::<B>(shard.view(), &start, &positives, &TuneConfig::default(), &dev)).unwrap();
        assert_eq!(t.losses.len(), 40);
        assert!(t.losses.windows(2).all(|w| w[1] <= w[0] + 1e-4), "the loss falls at every step: {:?}", t.losses);
        assert!(t.losses[39] < 0.95 * t.losses[0], "{:?}", t.losses);
        let rank_of = |u: &[f32], i: u32| {
            let s = crate::device::score::score_one(shard.view(), u, i);
            (0..n as u32).filter(|&j| crate::device::score::score_one(shard.view(), u, j) > s).count()
        };
        let before: usize = positives.iter().map(|&i| rank_of(&start, i)).sum();
        let after: usize = positives.iter().map(|&i| rank_of(&t.vector, i)).sum();
        assert!(after * 2 < before, "mean rank of the positives {before} -> {after}");
        // Deterministic for a seed; bad input is a typed error.
        assert_eq!(block_on(fine_tune::<B>(shard.view(), &start, &positives, &TuneConfig::default(), &dev)).unwrap(), t);
        assert!(block_on(fine_tune::<B>(shard.view(), &start[1..], &positives, &TuneConfig::default(), &dev)).is_err());
        assert!(block_on(fine_tune::<B>(shard.view(), &start, &[600], &TuneConfig::default(), &dev)).is_err());
        assert!(block_on(fine_tune::<B>(shard.view(), &start, &[], &TuneConfig::default(), &dev)).is_err());
    }
}
