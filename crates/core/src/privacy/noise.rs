//! The exact discrete Gaussian sampler of Canonne, Kamath and Steinke (NeurIPS 2020, Alg. 1–3):
//! integer arithmetic only, every coin from a caller-given cryptographic RNG by unbiased range
//! sampling, so the noise a device adds has exactly the distribution the accountant assumes
//! (no floating-point `exp`, no `rand % m`).
//!
//! ```
//! use rand::SeedableRng;
//! let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
//! let y = hearth_core::privacy::noise::discrete_gaussian(&mut rng, 30);
//! assert!(y.abs() < 30 * 20);
//! ```

use rand::{CryptoRng, Rng};

/// Bernoulli(n / d), 0 ≤ n ≤ d, d > 0.
fn bernoulli<R: Rng + CryptoRng + ?Sized>(rng: &mut R, n: u128, d: u128) -> bool {
    rng.random_range(0..d) < n
}

/// Bernoulli(exp(−n / d)) for 0 ≤ n / d ≤ 1.
fn bernoulli_exp_le1<R: Rng + CryptoRng + ?Sized>(rng: &mut R, n: u128, d: u128) -> bool {
    let mut k: u128 = 1;
    while bernoulli(rng, n, d * k) {
        k += 1;
    }
    k % 2 == 1
}

/// Bernoulli(exp(−n / d)) for any n / d ≥ 0.
fn bernoulli_exp<R: Rng + CryptoRng + ?Sized>(rng: &mut R, mut n: u128, d: u128) -> bool {
    while n > d {
        if !bernoulli_exp_le1(rng, 1, 1) {
            return false;
        }
        n -= d;
    }
    bernoulli_exp_le1(rng, n, d)
}

/// Geometric(1 − exp(−1/t)) on {0, 1, …}.
fn geometric_exp<R: Rng + CryptoRng + ?Sized>(rng: &mut R, t: u128) -> u128 {
    let u = loop {
        let u = rng.random_range(0..t);
        if bernoulli_exp(rng, u, t) {
            break u;
        }
    };
    let mut v = 0u128;
    while bernoulli_exp(rng, 1, 1) {
        v += 1;
    }
    v * t + u
}

/// The discrete Laplace distribution, P[y] ∝ exp(−|y| / t).
fn discrete_laplace<R: Rng + CryptoRng + ?Sized>(rng: &mut R, t: u128) -> i128 {
    loop {
        let negative = bernoulli(rng, 1, 2);
        let magnitude = geometric_exp(rng, t);
        if negative && magnitude == 0 {
            continue;
        }
        return if negative { -(magnitude as i128) } else { magnitude as i128 };
    }
}

/// The largest σ [`discrete_gaussian`] takes: every intermediate product fits in 128 bits.
pub const MAX_SIGMA: u64 = 1 << 24;

/// One draw of the discrete Gaussian N_Z(0, σ²), P[y] ∝ exp(−y² / 2σ²), for an integer σ in
/// `0..=MAX_SIGMA` (larger σ is clamped to it; 0 gives 0).
pub fn discrete_gaussian<R: Rng + CryptoRng + ?Sized>(rng: &mut R, sigma: u64) -> i64 {
    let sigma = u128::from(sigma.min(MAX_SIGMA));
    if sigma == 0 {
        return 0;
    }
    let s2 = sigma * sigma;
    let t = sigma + 1; // ⌊√σ²⌋ + 1
    loop {
        let y = discrete_laplace(rng, t);
        // Accept with probability exp(−(|y| − σ²/t)² / 2σ²) = exp(−(|y|·t − σ²)² / (2σ²t²)).
        let a = y.unsigned_abs() * t;
        let diff = a.abs_diff(s2);
        let Some(num) = diff.checked_mul(diff) else { continue };
        if bernoulli_exp(rng, num, 2 * s2 * t * t) {
            return y as i64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn moments_match_the_discrete_gaussian() {
        // For σ ≥ 1 the discrete Gaussian's variance is σ² to within 1e-7 relative; its mean is 0.
        for (sigma, n) in [(1u64, 40_000), (3, 40_000), (50, 20_000), (4000, 10_000)] {
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(sigma);
            let xs: Vec<f64> = (0..n).map(|_| discrete_gaussian(&mut rng, sigma) as f64).collect();
            let mean = xs.iter().sum::<f64>() / n as f64;
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            let s2 = (sigma * sigma) as f64;
            // Standard errors: mean σ/√n, variance σ²·√(2/n); 5 of them.
            assert!(mean.abs() < 5.0 * sigma as f64 / (n as f64).sqrt(), "σ {sigma}: mean {mean}");
            assert!((var - s2).abs() < 5.0 * s2 * (2.0 / n as f64).sqrt(), "σ {sigma}: variance {var} vs {s2}");
        }
    }

    #[test]
    fn the_probabilities_of_small_values_are_exact() {
        // σ = 1: P[y] = e^{-y²/2} / Σ_z e^{-z²/2}; a chi-square over y ∈ {-3..3} and the tails.
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
        let n = 60_000;
        let z: f64 = (-40..=40).map(|k: i32| (-(f64::from(k * k)) / 2.0).exp()).sum();
        let p = |y: i32| (-(f64::from(y * y)) / 2.0).exp() / z;
        let mut counts = [0u32; 9]; // ≤ -4, -3..=3, ≥ 4
        for _ in 0..n {
            let y = discrete_gaussian(&mut rng, 1).clamp(-4, 4);
            counts[(y + 4) as usize] += 1;
        }
        let tail = 1.0 - (-3..=3).map(p).sum::<f64>();
        let expected: Vec<f64> = std::iter::once(tail / 2.0).chain((-3..=3).map(p)).chain(std::iter::once(tail / 2.0)).map(|q| q * n as f64).collect();
        let chi2: f64 = counts.iter().zip(&expected).map(|(&c, &e)| (f64::from(c) - e).powi(2) / e).sum();
        // 8 degrees of freedom: the 99.9th percentile is 26.1.
        assert!(chi2 < 26.1, "chi-square {chi2}: {counts:?} vs {expected:?}");
        assert_eq!(discrete_gaussian(&mut rng, 0), 0);
    }
}
