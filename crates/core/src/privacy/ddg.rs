//! The distributed discrete Gaussian mechanism (Kairouz, Liu, Steinke, ICML 2021), as TFF's
//! `DistributedDpSumFactory` runs it: each device rotates its clipped update (random signs, then
//! Walsh–Hadamard blocks), scales it, rounds it stochastically to integers (conditionally: again
//! until the rounded norm is within the bound the accountant uses), adds its share of discrete
//! Gaussian noise and wraps it into 32-bit words for secure aggregation. The *sum* over the
//! survivors then carries noise of standard deviation `noise_multiplier · clip` once at least
//! `min_survivors` devices are in it. The server decodes the sum (signed words, unscaled,
//! rotated back) and checks it is in range before using it.
//!
//! ```
//! use hearth_core::privacy::ddg::{DdgConfig, DdgPlan};
//! use rand::SeedableRng;
//! let plan = DdgPlan::new(3000, &DdgConfig { min_survivors: 4, max_clients: 8, ..DdgConfig::default() }).unwrap();
//! let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
//! let update = vec![0.01f32; 3000];
//! let words: Vec<Vec<u32>> = (0..4).map(|_| plan.encode(&update, [9; 32], &mut rng).unwrap()).collect();
//! let sum = words.iter().fold(vec![0u32; plan.padded], |acc, w| acc.iter().zip(w).map(|(a, b)| a.wrapping_add(*b)).collect());
//! let decoded = plan.decode(&sum, [9; 32], 4).unwrap();
//! assert!((decoded.iter().sum::<f64>() / 3000.0 - 0.04).abs() < 0.01);
//! ```

use rand::{CryptoRng, Rng, RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use super::noise;
use super::rdp::Mechanism;

/// Why an update could not be encoded or a sum decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DdgError {
    /// The configuration cannot give the promised noise or range.
    #[error("distributed noise configuration: {0}")]
    Config(String),
    /// An update or a sum of another length than the plan's.
    #[error("expected {expected} values, got {got}")]
    Length {
        /// What the plan says.
        expected: usize,
        /// What came.
        got: usize,
    },
    /// An update with a NaN or infinite value.
    #[error("the update holds a value that is not finite")]
    NotFinite,
    /// Conditional rounding did not reach the norm bound in its tries (never for honest inputs in
    /// practice: each try succeeds with probability ≥ 1 − β).
    #[error("stochastic rounding stayed above the norm bound in {0} tries")]
    Rounding(u32),
    /// The decoded sum is outside what `survivors` honest devices can produce: a device sent an
    /// out-of-range vector (or the noise wrapped, with negligible probability). The round's sum
    /// must not be used.
    #[error("the sum is out of range ({what}: {value:.1} > bound {bound:.1}); the round is dropped")]
    OutOfRange {
        /// Which check failed.
        what: &'static str,
        /// The value found.
        value: f64,
        /// The bound for honest devices.
        bound: f64,
    },
}

/// What the operator chooses for a round's distributed noise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DdgConfig {
    /// The L2 norm each device's update is clipped to.
    pub clip: f64,
    /// Noise standard deviation of the sum, over `clip`, once `min_survivors` devices are in it.
    pub noise_multiplier: f64,
    /// The fewest survivors the round accepts: each device's share of noise is sized for them.
    pub min_survivors: u32,
    /// The most devices the round admits (sizes the scale so that the sum does not wrap).
    pub max_clients: u32,
    /// Conditional rounding's β (TFF recommends e^{−1/2}; 0 turns it off).
    pub beta: f64,
    /// Probability that one coordinate of the sum wraps around 2^32 (sizes the scale).
    pub wrap_probability: f64,
}

impl Default for DdgConfig {
    fn default() -> DdgConfig {
        DdgConfig { clip: 1.0, noise_multiplier: 1.0, min_survivors: 10, max_clients: 1000, beta: (-0.5f64).exp(), wrap_probability: 1e-4 }
    }
}

/// Everything a device and the server need to agree on for one round, derived from a
/// [`DdgConfig`] and the update's length. Deterministic: both sides compute the same plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DdgPlan {
    /// The update's length.
    pub dim: usize,
    /// The length after padding: Walsh–Hadamard blocks of powers of two, each ≥ [`MIN_BLOCK`].
    pub padded: usize,
    /// The clip norm (float units).
    pub clip: f64,
    /// The factor from float to integer units.
    pub scale: f64,
    /// Each device's discrete Gaussian σ (integer units).
    pub local_sigma: u64,
    /// The rounded update's L2 bound (integer units): the sensitivity the accountant uses.
    pub l2: f64,
    /// Its L1 bound (integer units).
    pub l1: f64,
    /// The survivors the noise was sized for.
    pub min_survivors: u32,
    /// Conditional rounding's β.
    pub beta: f64,
    /// How many standard deviations of the sum's noise stay inside the range.
    pub k_stddevs: f64,
}

/// The smallest Walsh–Hadamard block (padding is below this many values).
pub const MIN_BLOCK: usize = 1024;
/// Conditional rounding's tries before it gives up.
pub const ROUNDING_TRIES: u32 = 1000;

/// Φ⁻¹(1 − p/2) by bisection on `erfc` (k standard deviations hold all but p).
fn k_stddevs(p: f64) -> f64 {
    let (mut lo, mut hi) = (0.0f64, 40.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if libm::erfc(mid / std::f64::consts::SQRT_2) > p { lo = mid } else { hi = mid }
    }
    0.5 * (lo + hi)
}

/// The padded length for `dim`: a multiple of [`MIN_BLOCK`] (or the next power of two below it).
fn padded_len(dim: usize) -> usize {
    if dim <= MIN_BLOCK { dim.next_power_of_two().max(1) } else { dim.div_ceil(MIN_BLOCK) * MIN_BLOCK }
}

/// The Walsh–Hadamard blocks of a padded length: its binary decomposition, largest first.
fn blocks(padded: usize) -> impl Iterator<Item = (usize, usize)> {
    let mut start = 0;
    (0..usize::BITS).rev().filter(move |b| padded & (1 << b) != 0).map(move |b| {
        let len = 1usize << b;
        start += len;
        (start - len, len)
    })
}

/// In-place orthonormal Walsh–Hadamard transform of a power-of-two slice (its own inverse).
fn fwht(x: &mut [f64]) {
    let n = x.len();
    let mut h = 1;
    while h < n {
        for i in (0..n).step_by(2 * h) {
            for j in i..i + h {
                let (a, b) = (x[j], x[j + h]);
                x[j] = a + b;
                x[j + h] = a - b;
            }
        }
        h *= 2;
    }
    let norm = 1.0 / (n as f64).sqrt();
    x.iter_mut().for_each(|v| *v *= norm);
}

/// The random signs of a round's rotation, from its public seed.
fn signs(seed: [u8; 32], n: usize) -> Vec<f64> {
    let mut rng = rand_chacha::ChaCha20Rng::from_seed(seed);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let w = rng.next_u64();
        out.extend((0..64).take(n - out.len()).map(|b| if w >> b & 1 == 1 { -1.0 } else { 1.0 }));
    }
    out
}

/// The rotation: random signs, then orthonormal Walsh–Hadamard blocks.
fn rotate(x: &mut [f64], seed: [u8; 32]) {
    let signs = signs(seed, x.len());
    for (v, s) in x.iter_mut().zip(signs) {
        *v *= s;
    }
    for (start, len) in blocks(x.len()) {
        fwht(&mut x[start..start + len]);
    }
}

/// The rotation's inverse.
fn unrotate(x: &mut [f64], seed: [u8; 32]) {
    for (start, len) in blocks(x.len()) {
        fwht(&mut x[start..start + len]);
    }
    let signs = signs(seed, x.len());
    for (v, s) in x.iter_mut().zip(signs) {
        *v *= s;
    }
}

/// Scales `update` down to L2 norm ≤ `clip` (unchanged if already within). Returns the norm it had.
pub fn clip_l2(update: &mut [f32], clip: f64) -> f64 {
    let norm = update.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
    if norm > clip && norm > 0.0 {
        let f = clip / norm;
        update.iter_mut().for_each(|v| *v = (f64::from(*v) * f) as f32);
    }
    norm
}

impl DdgPlan {
    /// The plan for updates of `dim` values (TFF's `DistributedDpSumFactory` parameters with 32-bit
    /// words: the scale leaves `k_stddevs` standard deviations of the sum of `max_clients` clipped
    /// updates plus their noise inside the range).
    pub fn new(dim: usize, c: &DdgConfig) -> Result<DdgPlan, DdgError> {
        let bad = |m: String| Err(DdgError::Config(m));
        if dim == 0 || dim > 1 << 26 {
            return bad(format!("an update of {dim} values"));
        }
        if !(c.clip.is_finite() && c.clip > 0.0 && c.noise_multiplier.is_finite() && c.noise_multiplier >= 0.0) {
            return bad(format!("clip {} and noise multiplier {} must be finite, the clip above 0", c.clip, c.noise_multiplier));
        }
        if c.min_survivors == 0 || c.max_clients < c.min_survivors {
            return bad(format!("at least one survivor, and no more than the {} admitted (asked {})", c.max_clients, c.min_survivors));
        }
        if !((0.0..1.0).contains(&c.beta) && c.wrap_probability > 0.0 && c.wrap_probability < 1.0) {
            return bad("beta in [0, 1) and a wrap probability in (0, 1)".into());
        }
        let padded = padded_len(dim);
        let d = padded as f64;
        let n = f64::from(c.max_clients);
        let k = k_stddevs(c.wrap_probability);
        let local_stddev = c.noise_multiplier * c.clip / f64::from(c.min_survivors).sqrt();
        let range = 2f64.powi(64) - n * k * k; // (2^b)² − n·k², b = 32
        if range <= 0.0 {
            return bad(format!("{} clients cannot share 32-bit words", c.max_clients));
        }
        let scale = (range.sqrt() / (2.0 * k * (c.clip * c.clip * n * n / d + n * local_stddev * local_stddev).sqrt())).min(1e6);
        let gamma = 1.0 / scale;
        let b1 = c.clip + gamma * d.sqrt();
        let inflated = if c.beta > 0.0 {
            let b2 = (c.clip * c.clip + gamma * gamma * d / 4.0 + (2.0 * (1.0 / c.beta).ln()).sqrt() * gamma * (c.clip + gamma * d.sqrt() / 2.0)).sqrt();
            b1.min(b2)
        } else {
            b1
        };
        let l2 = (inflated + 1e-5) * scale;
        let l1 = (l2 * d.sqrt().min(l2)).ceil();
        let sigma = (local_stddev * scale).ceil();
        if sigma > noise::MAX_SIGMA as f64 {
            return bad(format!("a local σ of {sigma} integer units is beyond the sampler's {}", noise::MAX_SIGMA));
        }
        Ok(DdgPlan {
            dim,
            padded,
            clip: c.clip,
            scale,
            local_sigma: sigma as u64,
            l2,
            l1,
            min_survivors: c.min_survivors,
            beta: c.beta,
            k_stddevs: k,
        })
    }

    /// A device's part: clips `update` to the plan's norm, rotates it with the round's public
    /// `rotation` seed, scales and rounds it (conditionally), adds its discrete Gaussian noise
    /// from `rng` and wraps it into 32-bit words (`padded` of them), ready to be masked.
    pub fn encode<R: Rng + CryptoRng + ?Sized>(&self, update: &[f32], rotation: [u8; 32], rng: &mut R) -> Result<Vec<u32>, DdgError> {
        if update.len() != self.dim {
            return Err(DdgError::Length { expected: self.dim, got: update.len() });
        }
        if !update.iter().all(|v| v.is_finite()) {
            return Err(DdgError::NotFinite);
        }
        let mut x: Vec<f64> = update.iter().map(|&v| f64::from(v)).collect();
        let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm > self.clip {
            let f = self.clip / norm;
            x.iter_mut().for_each(|v| *v *= f);
        }
        x.resize(self.padded, 0.0);
        rotate(&mut x, rotation);
        x.iter_mut().for_each(|v| *v *= self.scale);
        let floors: Vec<f64> = x.iter().map(|v| v.floor()).collect();
        let mut rounded = vec![0i64; self.padded];
        let mut tries = 0;
        loop {
            tries += 1;
            let mut sq = 0.0;
            for ((r, &v), &f) in rounded.iter_mut().zip(&x).zip(&floors) {
                let up = rng.random::<f64>() < v - f;
                *r = f as i64 + i64::from(up);
                sq += (*r as f64).powi(2);
            }
            if self.beta == 0.0 || sq.sqrt() <= self.l2 {
                break;
            }
            if tries >= ROUNDING_TRIES {
                return Err(DdgError::Rounding(tries));
            }
        }
        Ok(rounded.into_iter().map(|r| (r + noise::discrete_gaussian(rng, self.local_sigma)) as u32).collect())
    }

    /// The server's part: the wrapped sum of `survivors` devices' words, checked against what
    /// honest devices can produce, unscaled and rotated back: the sum of their clipped updates
    /// plus the noise (`dim` values; divide by `survivors` for the mean).
    pub fn decode(&self, sum: &[u32], rotation: [u8; 32], survivors: u32) -> Result<Vec<f64>, DdgError> {
        if sum.len() != self.padded {
            return Err(DdgError::Length { expected: self.padded, got: sum.len() });
        }
        let n = f64::from(survivors.max(1));
        let noise_sd = f64::from(survivors).sqrt() * self.local_sigma as f64;
        let signed: Vec<f64> = sum.iter().map(|&w| f64::from(w as i32)).collect();
        // Each device's rotated, rounded vector has L2 (so every coordinate) at most `l2`; the
        // noise stays within k standard deviations but with probability ~wrap_probability per
        // coordinate, so the per-coordinate bound allows twice that.
        let coord_bound = n * self.l2 + 2.0 * self.k_stddevs * noise_sd;
        if let Some(worst) = signed.iter().map(|v| v.abs()).reduce(f64::max).filter(|&w| w > coord_bound) {
            return Err(DdgError::OutOfRange { what: "a coordinate", value: worst, bound: coord_bound });
        }
        // The sum's norm: at most n·l2 from the updates plus the noise's, which exceeds
        // σ_sum·(√padded + t) with probability below e^{−t²/2} (Gaussian concentration; t = 2k).
        let norm = signed.iter().map(|v| v * v).sum::<f64>().sqrt();
        let norm_bound = self.norm_bound(survivors);
        if norm > norm_bound {
            return Err(DdgError::OutOfRange { what: "the L2 norm", value: norm, bound: norm_bound });
        }
        let mut x: Vec<f64> = signed.into_iter().map(|v| v / self.scale).collect();
        unrotate(&mut x, rotation);
        x.truncate(self.dim);
        Ok(x)
    }

    /// The largest L2 norm (integer units) a sum of `survivors` honest devices' words has, but
    /// with negligible probability: every update's bound plus the noise's.
    pub fn norm_bound(&self, survivors: u32) -> f64 {
        let noise_sd = f64::from(survivors).sqrt() * self.local_sigma as f64;
        f64::from(survivors.max(1)) * self.l2 + noise_sd * ((self.padded as f64).sqrt() + 2.0 * self.k_stddevs)
    }

    /// The mechanism one round with `survivors` devices in the sum ran, sampled at rate `q`, for
    /// the accountant. Counts one survivor fewer than were summed: under add/remove-one
    /// neighbours, the removed person's share of the noise is missing too.
    pub fn mechanism(&self, q: f64, survivors: u32) -> Mechanism {
        Mechanism::SubsampledDistributedGaussian {
            q,
            sigma: self.local_sigma as f64,
            clients: survivors.saturating_sub(1).max(1),
            dim: self.padded as u64,
            l2: self.l2,
            l1: self.l1,
        }
    }

    /// The standard deviation, in float units, of the noise in a sum of `survivors` devices.
    pub fn sum_noise_stddev(&self, survivors: u32) -> f64 {
        f64::from(survivors).sqrt() * self.local_sigma as f64 / self.scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: u64) -> rand_chacha::ChaCha20Rng {
        rand_chacha::ChaCha20Rng::seed_from_u64(seed)
    }

    fn wrapped_sum(words: &[Vec<u32>]) -> Vec<u32> {
        let mut sum = vec![0u32; words[0].len()];
        for w in words {
            for (s, v) in sum.iter_mut().zip(w) {
                *s = s.wrapping_add(*v);
            }
        }
        sum
    }

    #[test]
    fn the_rotation_is_orthonormal_and_inverts() {
        for dim in [1, 5, 1024, 3000, 5121] {
            let padded = padded_len(dim);
            assert!(padded >= dim && padded - dim < MIN_BLOCK.max(dim), "{dim} -> {padded}");
            assert_eq!(blocks(padded).map(|(_, l)| l).sum::<usize>(), padded);
            let x: Vec<f64> = (0..padded).map(|i| ((i * 37 % 101) as f64 - 50.0) / 7.0).collect();
            let mut y = x.clone();
            rotate(&mut y, [3; 32]);
            let n = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
            assert!((n(&x) - n(&y)).abs() < 1e-9 * n(&x));
            unrotate(&mut y, [3; 32]);
            assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-9), "{dim}");
        }
    }

    #[test]
    fn the_sum_of_survivors_decodes_to_the_sum_of_clipped_updates_plus_the_planned_noise() {
        let (dim, n) = (3000, 20u32);
        let plan = DdgPlan::new(dim, &DdgConfig { clip: 1.0, noise_multiplier: 0.5, min_survivors: n, max_clients: 50, ..Default::default() }).unwrap();
        let mut r = rng(5);
        let updates: Vec<Vec<f32>> = (0..n).map(|i| (0..dim).map(|j| ((i as usize * 7 + j) % 13) as f32 / 400.0 - 0.015).collect()).collect();
        let mut clipped = updates.clone();
        clipped.iter_mut().for_each(|u| {
            clip_l2(u, 1.0);
        });
        let words: Vec<Vec<u32>> = updates.iter().map(|u| plan.encode(u, [1; 32], &mut r).unwrap()).collect();
        let got = plan.decode(&wrapped_sum(&words), [1; 32], n).unwrap();
        let want: Vec<f64> = (0..dim).map(|j| clipped.iter().map(|u| f64::from(u[j])).sum()).collect();
        let err: Vec<f64> = got.iter().zip(&want).map(|(g, w)| g - w).collect();
        let sd = (err.iter().map(|e| e * e).sum::<f64>() / dim as f64).sqrt();
        // The noise of the sum: σ = z·clip = 0.5 (plus rounding, negligible at this scale).
        let planned = plan.sum_noise_stddev(n);
        assert!((planned - 0.5).abs() < 0.01, "{planned}");
        assert!((sd - planned).abs() < 0.05 * planned, "noise {sd} vs planned {planned}");
        let mean = err.iter().sum::<f64>() / dim as f64;
        assert!(mean.abs() < 4.0 * planned / (dim as f64).sqrt(), "unbiased: {mean}");
    }

    #[test]
    fn without_noise_the_sum_is_exact_to_the_rounding() {
        let plan = DdgPlan::new(1500, &DdgConfig { noise_multiplier: 0.0, min_survivors: 3, max_clients: 3, ..Default::default() }).unwrap();
        assert_eq!(plan.local_sigma, 0);
        let mut r = rng(2);
        let u: Vec<f32> = (0..1500).map(|j| (j as f32 - 750.0) / 1e5).collect();
        let words: Vec<Vec<u32>> = (0..3).map(|_| plan.encode(&u, [4; 32], &mut r).unwrap()).collect();
        let got = plan.decode(&wrapped_sum(&words), [4; 32], 3).unwrap();
        for (j, g) in got.iter().enumerate() {
            assert!((g - 3.0 * f64::from(u[j])).abs() < 4.0 / plan.scale * 40.0, "{j}: {g}");
        }
    }

    #[test]
    fn a_device_that_sends_an_out_of_range_vector_gets_the_round_dropped() {
        let plan = DdgPlan::new(2048, &DdgConfig { min_survivors: 10, max_clients: 10, ..Default::default() }).unwrap();
        let mut r = rng(8);
        let mut words: Vec<Vec<u32>> = (0..9).map(|_| plan.encode(&vec![0.01; 2048], [0; 32], &mut r).unwrap()).collect();
        // Honest: decodes.
        let honest = plan.decode(&wrapped_sum(&words), [0; 32], 9).unwrap();
        assert_eq!(honest.len(), 2048);
        // One device adds a huge value to one coordinate (far beyond its clip).
        let mut evil = plan.encode(&vec![0.0; 2048], [0; 32], &mut r).unwrap();
        evil[17] = evil[17].wrapping_add(1 << 30);
        words.push(evil);
        let e = plan.decode(&wrapped_sum(&words), [0; 32], 10).err().expect("refused");
        assert!(matches!(e, DdgError::OutOfRange { what: "a coordinate", .. }), "{e}");
        // Another spreads twice the norm bound thinly across every coordinate (each in range).
        words.pop();
        let per = (2.0 * plan.norm_bound(10) / (2048f64).sqrt()) as u32;
        let mut spread = plan.encode(&vec![0.0; 2048], [0; 32], &mut r).unwrap();
        spread.iter_mut().for_each(|w| *w = w.wrapping_add(per));
        words.push(spread);
        let e = plan.decode(&wrapped_sum(&words), [0; 32], 10).err().expect("refused");
        assert!(matches!(e, DdgError::OutOfRange { what: "the L2 norm", .. }), "{e}");
    }

    #[test]
    fn bad_inputs_are_refused() {
        let plan = DdgPlan::new(10, &DdgConfig::default()).unwrap();
        let mut r = rng(1);
        assert_eq!(plan.encode(&[0.0; 9], [0; 32], &mut r), Err(DdgError::Length { expected: 10, got: 9 }));
        assert_eq!(plan.encode(&[f32::NAN; 10], [0; 32], &mut r), Err(DdgError::NotFinite));
        assert!(matches!(plan.decode(&[0; 3], [0; 32], 1), Err(DdgError::Length { .. })));
        for c in [
            DdgConfig { clip: 0.0, ..Default::default() },
            DdgConfig { noise_multiplier: f64::NAN, ..Default::default() },
            DdgConfig { min_survivors: 0, ..Default::default() },
            DdgConfig { min_survivors: 20, max_clients: 10, ..Default::default() },
            DdgConfig { beta: 1.0, ..Default::default() },
        ] {
            assert!(matches!(DdgPlan::new(10, &c), Err(DdgError::Config(_))), "{c:?}");
        }
        assert!(matches!(DdgPlan::new(0, &DdgConfig::default()), Err(DdgError::Config(_))));
        // A huge update is clipped, not refused.
        assert!(plan.encode(&[1e30; 10], [0; 32], &mut r).is_ok());
    }

    #[test]
    fn the_wrap_bound_matches_tff() {
        // Φ⁻¹(1 − 1e-4 / 2) = 3.8906 (TFF's k_stddevs for the default wrap probability).
        assert!((k_stddevs(1e-4) - 3.890592).abs() < 1e-5);
    }
}
