//! Scoring a catalog against a user vector and selecting the top k.
//!
//! Every scorer computes, for item `i`, `score_i = f32(dot(q, row_i)) * scale_i` with an exact
//! `i32` dot product of int8 values, and ranks by score (higher first), ties by lower item index.
//! The query's own scale is positive and common to all items, so it does not change the order; it
//! is applied once to the selected hits ([`finish`]). Because the dot product is exact and each
//! step is one correctly rounded f32 multiplication, the reference, SIMD and GPU scorers return
//! identical hits, bit for bit.
//!
//! - [`reference_top_k`]: the specification, plain Rust.
//! - [`top_k`]: the fast CPU path: AVX2 (runtime detection) or wasm `simd128` (compile time), a
//!   portable loop otherwise; [`top_k_threads`] splits the catalog over threads.
//! - [`exact_top_k`]: f32 scoring of unquantized embeddings (the baseline and recall reference).
//! - `gpu` (feature `gpu`): the WGSL scorer on a caller-provided wgpu device.
//!
//! ```
//! use hearth_core::artifact::shard::CatalogShard;
//! use hearth_core::quant::quantize;
//! use hearth_core::device::score::{top_k, reference_top_k};
//! let shard = CatalogShard::from_f32("1", vec!["a".into(), "b".into(), "c".into()], 2,
//!     &[1.0, 0.0, 0.0, 1.0, 0.7, 0.7]).unwrap();
//! let q = quantize(&[1.0, 0.2]).unwrap();
//! let hits = top_k(shard.view(), &q, 2);
//! assert_eq!(hits.iter().map(|h| h.index).collect::<Vec<_>>(), vec![0, 2]);
//! assert_eq!(hits, reference_top_k(shard.view(), &q, 2));
//! ```

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::quant::{CatalogView, QuantizedVector};

#[cfg(feature = "gpu")]
pub mod gpu;
mod simd;

/// One selected item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// Item index in the catalog.
    pub index: u32,
    /// Its score.
    pub score: f32,
}

/// The ranking order: higher score first, then lower index. A total order on non-NaN scores
/// (`-0.0` and `0.0` compare equal, as on the GPU).
pub fn rank_cmp(a: &Hit, b: &Hit) -> Ordering {
    b.score.partial_cmp(&a.score).unwrap_or(Ordering::Equal).then(a.index.cmp(&b.index))
}

/// A heap entry ordered so that the worst kept hit is on top.
#[derive(Clone, Copy)]
struct Worst(Hit);

impl PartialEq for Worst {
    fn eq(&self, o: &Self) -> bool {
        rank_cmp(&self.0, &o.0) == Ordering::Equal
    }
}
impl Eq for Worst {}
impl PartialOrd for Worst {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Worst {
    fn cmp(&self, o: &Self) -> Ordering {
        rank_cmp(&self.0, &o.0)
    }
}

/// Partial selection of the best `k` hits offered.
pub struct TopK {
    k: usize,
    heap: BinaryHeap<Worst>,
}

impl TopK {
    /// An empty selection of at most `k`.
    pub fn new(k: usize) -> Self {
        TopK { k, heap: BinaryHeap::with_capacity(k + 1) }
    }

    /// Scores below or equal to this cannot enter when offered in increasing index order
    /// (`-inf` until `k` hits are kept).
    #[inline]
    pub fn threshold(&self) -> f32 {
        match self.heap.peek() {
            Some(w) if self.heap.len() == self.k => w.0.score,
            _ => f32::NEG_INFINITY,
        }
    }

    /// Offers one hit.
    #[inline]
    pub fn offer(&mut self, hit: Hit) {
        if self.heap.len() < self.k {
            self.heap.push(Worst(hit));
        } else if let Some(mut top) = self.heap.peek_mut()
            && rank_cmp(&hit, &top.0) == Ordering::Less
        {
            *top = Worst(hit);
        }
    }

    /// The kept hits, best first.
    pub fn into_sorted(self) -> Vec<Hit> {
        let mut v: Vec<Hit> = self.heap.into_iter().map(|w| w.0).collect();
        v.sort_by(rank_cmp);
        v
    }
}

/// Multiplies selected hits by the query's scale (the last step of every scorer).
pub fn finish(mut hits: Vec<Hit>, query_scale: f32) -> Vec<Hit> {
    for h in &mut hits {
        h.score *= query_scale;
    }
    hits
}

fn check_query(view: &CatalogView<'_>, q: &QuantizedVector) {
    assert_eq!(q.values.len(), view.dim(), "query width {} differs from the catalog's {}", q.values.len(), view.dim());
}

/// The specification: exact integer dot products, then partial selection.
///
/// Panics if the query's width differs from the catalog's (a programming error: both come from
/// the same model).
pub fn reference_top_k(view: CatalogView<'_>, q: &QuantizedVector, k: usize) -> Vec<Hit> {
    check_query(&view, q);
    let mut top = TopK::new(k);
    for i in 0..view.len() {
        let dot: i32 = view.row(i).iter().zip(&q.values).map(|(&a, &b)| a as i32 * b as i32).sum();
        top.offer(Hit { index: i as u32, score: dot as f32 * view.scales()[i] });
    }
    finish(top.into_sorted(), q.scale)
}

/// Which CPU kernel [`top_k`] uses on this machine.
pub fn cpu_kernel() -> &'static str {
    simd::kernel_name()
}

/// The fast CPU scorer on the calling thread. Same hits as [`reference_top_k`].
pub fn top_k(view: CatalogView<'_>, q: &QuantizedVector, k: usize) -> Vec<Hit> {
    check_query(&view, q);
    let mut top = TopK::new(k);
    simd::scan(view, &q.values, 0, &mut top);
    finish(top.into_sorted(), q.scale)
}

pub use simd::CpuKernel;

/// [`top_k`] with a chosen kernel (the portable loop when this CPU cannot run it): for tests
/// that every kernel gives the reference's hits, and for benchmarks that compare them.
pub fn top_k_with(kernel: CpuKernel, view: CatalogView<'_>, q: &QuantizedVector, k: usize) -> Vec<Hit> {
    check_query(&view, q);
    let mut top = TopK::new(k);
    simd::scan_with(kernel, view, &q.values, 0, &mut top);
    finish(top.into_sorted(), q.scale)
}

/// Forces the portable kernel (for tests of the fallback and for benchmarks).
pub fn top_k_portable(view: CatalogView<'_>, q: &QuantizedVector, k: usize) -> Vec<Hit> {
    check_query(&view, q);
    let mut top = TopK::new(k);
    simd::scan_portable(view, &q.values, 0, &mut top);
    finish(top.into_sorted(), q.scale)
}

/// Smallest part worth its own thread: below this, waking a worker costs more than it saves.
const MIN_PART_BYTES: usize = 4 << 20;

/// The fast CPU scorer split into up to `threads` contiguous parts scanned on rayon's pool (each
/// part at least 4 MiB of rows), whose selections merge in rank order. Same hits as
/// [`reference_top_k`]. One thread on wasm32 ([`crate::platform::threads`]).
pub fn top_k_threads(view: CatalogView<'_>, q: &QuantizedVector, k: usize, threads: usize) -> Vec<Hit> {
    check_query(&view, q);
    let threads = crate::platform::threads(threads).min((view.rows().len() / MIN_PART_BYTES).max(1));
    if threads == 1 {
        return top_k(view, q, k);
    }
    let chunk = view.len().div_ceil(threads).next_multiple_of(8);
    let parts: Vec<Vec<Hit>> = crate::platform::par_map(threads, |t| {
        let start = (t * chunk).min(view.len());
        let end = ((t + 1) * chunk).min(view.len());
        let mut top = TopK::new(k);
        simd::scan(view.slice(start..end), &q.values, start as u32, &mut top);
        top.into_sorted()
    });
    let mut top = TopK::new(k);
    for h in parts.into_iter().flatten() {
        top.offer(h);
    }
    finish(top.into_sorted(), q.scale)
}

/// Reads every byte a scan of `view` reads, doing nothing else (OR of 256-bit loads where AVX2
/// exists): the physical floor the scoring benchmark compares against.
pub fn memory_floor(view: CatalogView<'_>) -> u32 {
    simd::read_floor(view)
}

/// How many candidates to fetch from the int8 scan for a final top `k` after [`refine`]:
/// `2k`, at least `k + 16`.
pub fn refine_candidates(k: usize) -> usize {
    (2 * k).max(k + 16)
}

/// Re-ranks int8 candidates with the unquantized query: each candidate's score becomes
/// `dot(f32(row), user) * scale` (the query's quantization error removed; the items stay int8),
/// and the best `k` are kept in rank order. Deterministic: the same candidates give the same
/// result on every scorer.
///
/// Panics if `user`'s width differs from the catalog's.
pub fn refine(view: CatalogView<'_>, user: &[f32], candidates: &[Hit], k: usize) -> Vec<Hit> {
    assert_eq!(user.len(), view.dim(), "user width {} differs from the catalog's {}", user.len(), view.dim());
    let mut hits: Vec<Hit> = candidates.iter().map(|h| Hit { index: h.index, score: score_one(view, user, h.index) }).collect();
    hits.sort_by(rank_cmp);
    hits.truncate(k);
    hits
}

/// One item's score for an unquantized user vector: `dot(f32(row), user) * scale` (what
/// [`refine`], ranking and calibration use).
pub fn score_one(view: CatalogView<'_>, user: &[f32], index: u32) -> f32 {
    let i = index as usize;
    let dot: f32 = view.row(i).iter().zip(user).map(|(&a, &b)| a as f32 * b).sum();
    dot * view.scales()[i]
}

/// The CPU path end to end: quantize `user`, scan for [`refine_candidates`]`(k)` on `threads`
/// threads (one on wasm32), [`refine`] to `k`. Errors if `user` holds NaN or infinity.
pub fn search(view: CatalogView<'_>, user: &[f32], k: usize, threads: usize) -> Result<Vec<Hit>, crate::quant::QuantError> {
    let q = crate::quant::quantize(user)?;
    let candidates = top_k_threads(view, &q, refine_candidates(k), threads);
    Ok(refine(view, user, &candidates, k))
}

/// Exact f32 scoring of unquantized embeddings (`items`: `n × dim`, item-major).
pub fn exact_top_k(items: &[f32], dim: usize, user: &[f32], k: usize) -> Vec<Hit> {
    assert_eq!(user.len(), dim);
    let mut top = TopK::new(k);
    for (i, row) in items.chunks_exact(dim).enumerate() {
        top.offer(Hit { index: i as u32, score: dot_f32(row, user) });
    }
    top.into_sorted()
}

/// An f32 dot product with eight independent accumulators (vectorized by the compiler).
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::shard::CatalogShard;
    use crate::quant::quantize;
    use crate::testkit::{gaussian, recall};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_case(seed: u64) -> (CatalogShard, QuantizedVector, usize) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = rng.random_range(1..5000);
        let dim = [1, 3, 7, 31, 32, 33, 64, 100, 128, 129][rng.random_range(0..10)];
        let values: Vec<f32> = (0..n * dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let shard = CatalogShard::from_f32("t", (0..n).map(|i| i.to_string()).collect(), dim, &values).unwrap();
        let user: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        (shard, quantize(&user).unwrap(), rng.random_range(1..50))
    }

    #[test]
    fn all_cpu_paths_agree_on_random_catalogs() {
        for seed in 0..40 {
            let (shard, q, k) = random_case(seed);
            let want = reference_top_k(shard.view(), &q, k);
            assert_eq!(want.len(), k.min(shard.len()));
            assert_eq!(top_k(shard.view(), &q, k), want, "seed {seed} ({})", cpu_kernel());
            assert_eq!(top_k_portable(shard.view(), &q, k), want, "seed {seed} portable");
            for kernel in CpuKernel::all_available() {
                assert_eq!(top_k_with(kernel, shard.view(), &q, k), want, "seed {seed} {}", kernel.name());
            }
            for t in [2, 3] {
                assert_eq!(top_k_threads(shard.view(), &q, k, t), want, "seed {seed} threads {t}");
            }
        }
    }

    #[test]
    fn threaded_parts_merge_to_the_same_hits() {
        // 12.8 MB of rows: three 4 MiB parts.
        let (n, dim) = (200_003, 64);
        let shard = CatalogShard::from_f32("t", (0..n).map(|i| i.to_string()).collect(), dim, &gaussian(5, n * dim)).unwrap();
        for seed in 0..3 {
            let q = quantize(&gaussian(50 + seed, dim)).unwrap();
            let want = reference_top_k(shard.view(), &q, 25);
            for t in [2, 3, 8] {
                assert_eq!(top_k_threads(shard.view(), &q, 25, t), want, "{t} threads");
            }
        }
        assert_ne!(memory_floor(shard.view()), 0);
    }

    #[test]
    fn ties_break_by_lower_index_and_extremes_are_exact() {
        // Many identical rows: all scores tie, so the top k are the first k indices.
        let dim = 64;
        let rows = vec![127i8; 1000 * dim];
        let scales = vec![1.0f32; 1000];
        let view = CatalogView::new(dim, &scales, &rows).unwrap();
        let q = QuantizedVector { values: vec![-127; dim], scale: 1.0 };
        let hits = top_k(view, &q, 5);
        assert_eq!(hits.iter().map(|h| h.index).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
        assert_eq!(hits[0].score, -127.0 * 127.0 * 64.0);
        assert_eq!(hits, reference_top_k(view, &q, 5));
        // A zero query (scale 0): every score is 0, ties by index.
        let z = QuantizedVector { values: vec![0; dim], scale: 0.0 };
        assert_eq!(top_k(view, &z, 2).iter().map(|h| h.index).collect::<Vec<_>>(), vec![0, 1]);
        // k larger than the catalog, and k = 0.
        assert_eq!(top_k(view, &q, 5000).len(), 1000);
        assert!(top_k(view, &q, 0).is_empty());
    }

    #[test]
    fn exact_f32_and_recall() {
        let (shard, _, _) = random_case(7);
        let items: Vec<f32> = (0..shard.len()).flat_map(|i| shard.dequantize(i)).collect();
        let user: Vec<f32> = (0..shard.dim()).map(|i| (i as f32 * 0.37).sin()).collect();
        let exact = exact_top_k(&items, shard.dim(), &user, 10);
        assert_eq!(recall(&exact, &exact), 1.0);
        let q = quantize(&user).unwrap();
        assert!(recall(&top_k(shard.view(), &q, 10), &exact) >= 0.5);
    }
}
