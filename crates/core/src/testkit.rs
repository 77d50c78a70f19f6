//! Helpers for tests and benchmarks (feature `testkit`, or this crate's own tests): seeded
//! Gaussian data and top-k recall. Not part of the product's API.

use crate::device::score::Hit;

/// `n` seeded standard-normal values (Box–Muller over ChaCha8): the synthetic catalogs and
/// queries of the scoring benchmark and tests.
pub fn gaussian(seed: u64, n: usize) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = rng.random_range(f64::EPSILON..1.0);
        let u2: f64 = rng.random();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push((r * t.cos()) as f32);
        out.push((r * t.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// Fraction of `truth`'s items that `found` also holds (top-k recall).
pub fn recall(found: &[Hit], truth: &[Hit]) -> f64 {
    if truth.is_empty() {
        return 1.0;
    }
    let hits = truth.iter().filter(|t| found.iter().any(|f| f.index == t.index)).count();
    hits as f64 / truth.len() as f64
}

