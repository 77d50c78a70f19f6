//! Rényi differential privacy accounting: the Poisson-subsampled Gaussian exactly as Google's
//! `dp-accounting` 0.6.0 computes it (`rdp/rdp_privacy_accountant.py`), its RDP → (ε, δ)
//! conversion, and the sum of discrete Gaussians that a round with distributed noise really adds
//! (Kairouz, Liu, Steinke, ICML 2021, Eq. 17) with Zhu and Wang's bound for Poisson subsampling
//! of any mechanism (ICML 2019, Thm. 5), as `google-research/federated`'s `distributed_dp`
//! accounts it.
//!
//! Known answers: `../shared/testvectors/dp_epsilon.tsv` (dp-accounting 0.6.0 on PyPI), read by
//! this module's tests.
//!
//! ```
//! use hearth_core::privacy::rdp::{Accountant, Mechanism};
//! let mut a = Accountant::default();
//! a.compose(&Mechanism::SubsampledGaussian { q: 0.01, noise_multiplier: 1.0 }, 100).unwrap();
//! let (eps, _order) = a.epsilon(1e-5).unwrap();
//! assert!((eps - 1.21415).abs() < 1e-4);
//! ```

use serde::{Deserialize, Serialize};

/// Why an accounting step was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RdpError {
    /// A sampling rate outside [0, 1].
    #[error("the sampling rate {0} is not in [0, 1]")]
    SamplingRate(f64),
    /// A negative or non-finite noise parameter.
    #[error("the noise parameter {0} must be a finite number >= 0")]
    Noise(f64),
    /// δ outside [0, 1].
    #[error("delta {0} is not in [0, 1]")]
    Delta(f64),
    /// A distributed-noise round with no client, no dimension or no sensitivity.
    #[error("distributed noise needs at least one client, a dimension and a finite sensitivity: {0}")]
    Distributed(String),
}

/// The orders dp-accounting's `RdpAccountant` uses by default: 1.1, 1.2, …, 10.9, 11, …, 63,
/// 128, 256, 512, 1024 (156 of them; 2.0, 3.0, … are computed as `1 + x / 10`, as there).
pub fn default_orders() -> Vec<f64> {
    let mut orders: Vec<f64> = (1..100).map(|x| 1.0 + x as f64 / 10.0).collect();
    orders.extend((11..64).map(f64::from));
    orders.extend([128.0, 256.0, 512.0, 1024.0]);
    orders
}

/// Integer orders 2..=128 and 256: the orders the distributed mechanism's bound is computed at
/// (Zhu and Wang's bound is for integer orders).
pub fn integer_orders() -> Vec<f64> {
    (2..=128).map(f64::from).chain([256.0]).collect()
}

/// `log(e^x + e^y)`.
fn log_add(x: f64, y: f64) -> f64 {
    let (a, b) = if x < y { (x, y) } else { (y, x) };
    if a == f64::NEG_INFINITY { b } else { (a - b).exp().ln_1p() + b }
}

/// `log |binom(n, k)|` for real `n` (log |Γ| as scipy's `gammaln`).
fn log_comb(n: f64, k: f64) -> f64 {
    libm::lgamma(n + 1.0) - libm::lgamma(k + 1.0) - libm::lgamma(n - k + 1.0)
}

/// `log erfc(x)`, accurate where `erfc` underflows (dp-accounting's asymptotic series).
fn log_erfc(x: f64) -> f64 {
    if x < 25.0 {
        libm::erfc(x).ln()
    } else {
        -std::f64::consts::PI.ln() / 2.0 - x.ln() - x * x - 0.5 * x.powi(-2) + 0.625 * x.powi(-4) - 37.0 / 24.0 * x.powi(-6)
            + 353.0 / 64.0 * x.powi(-8)
    }
}

fn log_a_int(q: f64, sigma: f64, alpha: u32) -> f64 {
    let (lq, l1mq) = (q.ln(), (-q).ln_1p());
    (0..=alpha).fold(f64::NEG_INFINITY, |acc, i| {
        let i_f = f64::from(i);
        let s = log_comb(f64::from(alpha), i_f) + i_f * lq + (f64::from(alpha) - i_f) * l1mq + (i_f * i_f - i_f) / (2.0 * sigma * sigma);
        log_add(acc, s)
    })
}

/// dp-accounting 0.6.0's fractional-order series (Mironov, Talwar, Zhang 2019, §3.3): terms in
/// absolute value, at most 1000 of them; an order that does not converge gives +∞ (and so drops
/// out of the minimum), as there.
fn log_a_frac(q: f64, sigma: f64, alpha: f64) -> f64 {
    let (mut log_a0, mut log_a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    let (lq, l1mq) = (q.ln(), (-q).ln_1p());
    let (mut last0, mut last1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let s2 = std::f64::consts::SQRT_2 * sigma;
    for i in 0..1000 {
        let i = f64::from(i);
        let coef = log_comb(alpha, i);
        let j = alpha - i;
        let t0 = coef + i * lq + j * l1mq;
        let t1 = coef + j * lq + i * l1mq;
        let e0 = 0.5f64.ln() + log_erfc((i - z0) / s2);
        let e1 = 0.5f64.ln() + log_erfc((z0 - j) / s2);
        let s0 = t0 + (i * i - i) / (2.0 * sigma * sigma) + e0;
        let s1 = t1 + (j * j - j) / (2.0 * sigma * sigma) + e1;
        log_a0 = log_add(log_a0, s0);
        log_a1 = log_add(log_a1, s1);
        let total = log_add(log_a0, log_a1);
        if s0 < last0 && s1 < last1 && s0.max(s1) < total - 30.0 {
            return total;
        }
        (last0, last1) = (s0, s1);
    }
    f64::INFINITY
}

/// RDP at `alpha` of one step of the Poisson-subsampled Gaussian (sampling rate `q`, noise
/// multiplier `sigma`, L2 sensitivity 1, add/remove-one neighbours).
pub fn subsampled_gaussian(q: f64, sigma: f64, alpha: f64) -> f64 {
    if q == 0.0 {
        0.0
    } else if alpha.is_infinite() || sigma == 0.0 {
        f64::INFINITY
    } else if q == 1.0 {
        alpha / (2.0 * sigma * sigma)
    } else if alpha.fract() == 0.0 && alpha <= f64::from(u32::MAX) {
        log_a_int(q, sigma, alpha as u32) / (alpha - 1.0)
    } else {
        log_a_frac(q, sigma, alpha) / (alpha - 1.0)
    }
}

/// The τ of Kairouz, Liu and Steinke (Eq. 17): how far a sum of `n` discrete Gaussians of
/// variance parameter `sigma²` (integer units) is from one discrete Gaussian.
pub fn ddg_tau(sigma: f64, n: u32) -> f64 {
    let two_pi2_s2 = 2.0 * std::f64::consts::PI.powi(2) * sigma * sigma;
    10.0 * (1..n).map(|k| (-two_pi2_s2 * f64::from(k) / f64::from(k + 1)).exp()).sum::<f64>()
}

/// RDP at `alpha` of the sum of `n` discrete Gaussians N_Z(0, σ²)^d (σ in integer units) for a
/// change of one person's integer input with L2 norm ≤ `l2` and L1 norm ≤ `l1` (Kairouz, Liu,
/// Steinke 2021, Eq. 17; `compute_rdp_dgaussian` in google-research's `distributed_dp`).
pub fn ddg_sum(alpha: f64, sigma: f64, n: u32, dim: u64, l2: f64, l1: f64) -> f64 {
    let tau = ddg_tau(sigma, n);
    let root_n_sigma = f64::from(n).sqrt() * sigma;
    let (e2, e1) = (l2 / root_n_sigma, l1 / root_n_sigma);
    let d = dim as f64;
    let a = alpha / 2.0 * e2 * e2 + tau * d;
    let b = alpha / 2.0 * (e2 * e2 + 2.0 * e1 * tau + tau * tau * d);
    let c = alpha / 2.0 * (e2 + d.sqrt() * tau).powi(2);
    a.min(b).min(c)
}

/// Zhu and Wang's upper bound (ICML 2019, Thm. 5) on the RDP at integer order `alpha` ≥ 2 of a
/// mechanism whose RDP is `eps(l)` at integer orders `l`, under Poisson subsampling at rate `q`.
pub fn zhu_wang(alpha: u32, q: f64, eps: impl Fn(u32) -> f64) -> f64 {
    let a = f64::from(alpha);
    let l1mq = (-q).ln_1p();
    let lq = q.ln();
    let mut log_sum = (a - 1.0) * l1mq + (a * q - q + 1.0).ln();
    if alpha >= 2 {
        log_sum = log_add(log_sum, log_comb(a, 2.0) + 2.0 * lq + (a - 2.0) * l1mq + eps(2));
    }
    for l in 3..=alpha {
        let lf = f64::from(l);
        log_sum = log_add(log_sum, 3f64.ln() + log_comb(a, lf) + (a - lf) * l1mq + lf * lq + (lf - 1.0) * eps(l));
    }
    log_sum / (a - 1.0)
}

/// (ε, the order it was reached at) for an RDP curve, as dp-accounting 0.6.0's `compute_epsilon`:
/// `ε(α) = r + log1p(−1/α) − (ln δ + ln α) / (α − 1)` (Canonne, Kamath, Steinke 2020; Asoodeh et
/// al. 2020), 0 where δ alone covers the divergence, +∞ for orders at most 1.01.
pub fn epsilon(orders: &[f64], rdp: &[f64], delta: f64) -> Result<(f64, f64), RdpError> {
    if !(0.0..=1.0).contains(&delta) {
        return Err(RdpError::Delta(delta));
    }
    if delta == 0.0 {
        return Ok(if rdp.iter().all(|&r| r == 0.0) { (0.0, 0.0) } else { (f64::INFINITY, 0.0) });
    }
    let mut best = (f64::INFINITY, orders.first().copied().unwrap_or(0.0));
    for (&a, &r) in orders.iter().zip(rdp) {
        let e = if r < 0.0 || delta * delta + (-r).exp_m1() > 0.0 {
            0.0
        } else if a > 1.01 {
            r + (-1.0 / a).ln_1p() - (delta * a).ln() / (a - 1.0)
        } else {
            f64::INFINITY
        };
        if e < best.0 {
            best = (e, a);
        }
    }
    Ok((best.0.max(0.0), best.1))
}

/// One round's mechanism, as the accountant composes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Mechanism {
    /// Poisson sampling at rate `q` of a Gaussian with this noise multiplier (noise standard
    /// deviation over L2 sensitivity): the central mechanism, and dp-accounting's reference.
    SubsampledGaussian {
        /// Sampling rate.
        q: f64,
        /// σ / Δ₂.
        noise_multiplier: f64,
    },
    /// Poisson sampling at rate `q` of the sum of the discrete Gaussian noise of `clients`
    /// survivors (σ each, integer units), on a `dim`-dimensional integer vector whose change by
    /// one person is bounded by `l2` and `l1` (integer units): the mechanism hearth's rounds use.
    SubsampledDistributedGaussian {
        /// Sampling rate.
        q: f64,
        /// Each client's discrete Gaussian σ (integer units).
        sigma: f64,
        /// Clients whose noise is in the sum (the survivors, never more).
        clients: u32,
        /// Padded dimension.
        dim: u64,
        /// L2 sensitivity (integer units).
        l2: f64,
        /// L1 sensitivity (integer units).
        l1: f64,
    },
}

impl Mechanism {
    fn check(&self) -> Result<(), RdpError> {
        let q = match *self {
            Mechanism::SubsampledGaussian { q, noise_multiplier } => {
                if !(noise_multiplier.is_finite() && noise_multiplier >= 0.0) {
                    return Err(RdpError::Noise(noise_multiplier));
                }
                q
            }
            Mechanism::SubsampledDistributedGaussian { q, sigma, clients, dim, l2, l1 } => {
                if !(sigma.is_finite() && sigma >= 0.0) {
                    return Err(RdpError::Noise(sigma));
                }
                if clients == 0 || dim == 0 || !(l2.is_finite() && l2 > 0.0 && l1.is_finite() && l1 > 0.0) {
                    return Err(RdpError::Distributed(format!("{clients} clients, dimension {dim}, sensitivity {l2} (L2) {l1} (L1)")));
                }
                q
            }
        };
        if !(0.0..=1.0).contains(&q) {
            return Err(RdpError::SamplingRate(q));
        }
        Ok(())
    }

    /// This mechanism's RDP at each of `orders` (one step).
    pub fn rdp(&self, orders: &[f64]) -> Result<Vec<f64>, RdpError> {
        self.check()?;
        Ok(match *self {
            Mechanism::SubsampledGaussian { q, noise_multiplier } => {
                orders.iter().map(|&a| subsampled_gaussian(q, noise_multiplier, a)).collect()
            }
            Mechanism::SubsampledDistributedGaussian { q, sigma, clients, dim, l2, l1 } => {
                let eps = |l: u32| ddg_sum(f64::from(l), sigma, clients, dim, l2, l1);
                orders
                    .iter()
                    .map(|&a| {
                        if q == 0.0 {
                            0.0
                        } else if sigma == 0.0 {
                            f64::INFINITY
                        } else if q == 1.0 {
                            ddg_sum(a, sigma, clients, dim, l2, l1)
                        } else if a.fract() == 0.0 && (2.0..=4096.0).contains(&a) {
                            zhu_wang(a as u32, q, eps).min(ddg_sum(a, sigma, clients, dim, l2, l1))
                        } else {
                            // Zhu and Wang's bound is for integer orders only: no bound here.
                            f64::INFINITY
                        }
                    })
                    .collect()
            }
        })
    }
}

/// An RDP accountant: the curve of everything composed so far at fixed orders.
#[derive(Debug, Clone, PartialEq)]
pub struct Accountant {
    orders: Vec<f64>,
    rdp: Vec<f64>,
}

impl Default for Accountant {
    /// dp-accounting's default orders.
    fn default() -> Accountant {
        Accountant::with_orders(default_orders())
    }
}

impl Accountant {
    /// An accountant at these orders (each > 1).
    pub fn with_orders(orders: Vec<f64>) -> Accountant {
        let rdp = vec![0.0; orders.len()];
        Accountant { orders, rdp }
    }

    /// Composes `steps` runs of `m`.
    pub fn compose(&mut self, m: &Mechanism, steps: u32) -> Result<&mut Accountant, RdpError> {
        let one = m.rdp(&self.orders)?;
        for (acc, r) in self.rdp.iter_mut().zip(one) {
            *acc += f64::from(steps) * r;
        }
        Ok(self)
    }

    /// (ε, order) at `delta` for everything composed.
    pub fn epsilon(&self, delta: f64) -> Result<(f64, f64), RdpError> {
        epsilon(&self.orders, &self.rdp, delta)
    }

    /// The orders and the composed RDP at each.
    pub fn curve(&self) -> (&[f64], &[f64]) {
        (&self.orders, &self.rdp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `../shared/testvectors/dp_epsilon.tsv`: rows of (q, σ, steps, δ, ε by RDP, ε by PLD).
    fn vectors() -> Vec<[f64; 6]> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/testvectors/dp_epsilon.tsv");
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let rows: Vec<[f64; 6]> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("q\t") && !l.trim().is_empty())
            .map(|l| {
                let v: Vec<f64> = l.split('\t').map(|c| c.trim().parse().unwrap()).collect();
                [v[0], v[1], v[2], v[3], v[4], v[5]]
            })
            .collect();
        assert!(rows.len() >= 12, "{path} has {} rows", rows.len());
        rows
    }

    #[test]
    fn epsilon_matches_dp_accounting_on_every_test_vector() {
        for [q, sigma, steps, delta, want, pld] in vectors() {
            let mut a = Accountant::default();
            a.compose(&Mechanism::SubsampledGaussian { q, noise_multiplier: sigma }, steps as u32).unwrap();
            let (eps, order) = a.epsilon(delta).unwrap();
            assert!(((eps - want) / want).abs() < 1e-4, "q {q} σ {sigma} T {steps}: {eps} (order {order}) vs {want}");
            // The PLD figure is tighter; RDP is an upper bound on it.
            assert!(eps >= pld, "q {q} σ {sigma} T {steps}: RDP {eps} below PLD {pld}");
        }
    }

    #[test]
    fn per_order_values_match_the_reference() {
        // From the Python port of dp-accounting 0.6.0 that was checked against the library
        // (agreement 1e-10): per step, at these orders.
        let orders = [1.1, 1.4, 1.5, 2.0, 2.5, 10.9, 32.0, 1024.0];
        let want_a = [9.924711021e-05, 1.242228317e-04, 1.323685029e-04, 1.718134221e-04, 2.177720242e-04, 0.3876114113, 11.24627594, 507.3903282];
        let got = Mechanism::SubsampledGaussian { q: 0.01, noise_multiplier: 1.0 }.rdp(&orders).unwrap();
        for ((g, w), a) in got.iter().zip(want_a).zip(orders) {
            assert!(((g - w) / w).abs() < 1e-6, "order {a}: {g} vs {w}");
        }
        // Fractional orders that do not converge in 1000 terms drop out, as in dp-accounting.
        let got = Mechanism::SubsampledGaussian { q: 0.1, noise_multiplier: 1.1 }.rdp(&orders).unwrap();
        let want_b = [f64::INFINITY, f64::INFINITY, 0.01146351494, 0.01276994995, 0.01740873267, 1.971776919, 10.84627846, 420.83566];
        for ((g, w), a) in got.iter().zip(want_b).zip(orders) {
            assert!((g.is_infinite() && w.is_infinite()) || ((g - w) / w).abs() < 1e-6, "order {a}: {g} vs {w}");
        }
    }

    #[test]
    fn edge_cases_and_refusals() {
        let m = |q, z| Mechanism::SubsampledGaussian { q, noise_multiplier: z };
        assert_eq!(m(0.0, 0.0).rdp(&[2.0]).unwrap(), [0.0]);
        assert_eq!(m(0.5, 0.0).rdp(&[2.0]).unwrap(), [f64::INFINITY]);
        assert_eq!(m(1.0, 2.0).rdp(&[3.0]).unwrap(), [3.0 / 8.0]);
        assert_eq!(m(1.5, 1.0).rdp(&[2.0]), Err(RdpError::SamplingRate(1.5)));
        assert!(matches!(m(0.1, -1.0).rdp(&[2.0]), Err(RdpError::Noise(_))));
        assert!(matches!(m(0.1, f64::NAN).rdp(&[2.0]), Err(RdpError::Noise(_))));
        assert_eq!(epsilon(&[2.0], &[1.0], 2.0), Err(RdpError::Delta(2.0)));
        assert_eq!(epsilon(&[2.0], &[0.0], 0.0), Ok((0.0, 0.0)));
        assert_eq!(epsilon(&[2.0], &[0.1], 0.0).unwrap().0, f64::INFINITY);
        // Nothing composed: nothing spent.
        assert_eq!(Accountant::default().epsilon(1e-5).unwrap().0, 0.0);
    }

    #[test]
    fn a_sum_of_discrete_gaussians_with_wide_noise_accounts_like_a_gaussian() {
        // σ large in integer units: τ vanishes and the sum of n discrete Gaussians is a
        // Gaussian of noise multiplier √n·σ/Δ₂.
        let (n, sigma, l2) = (100u32, 785.0, 7846.71);
        assert!(ddg_tau(sigma, n) == 0.0);
        assert!(ddg_tau(1.0, 100) > 1e-4 && ddg_tau(1.0, 100) < 1e-3);
        let z = f64::from(n).sqrt() * sigma / l2;
        for a in [2.0, 8.0, 32.0] {
            let r = ddg_sum(a, sigma, n, 1 << 16, l2, l2 * 256.0);
            assert!((r - a / (2.0 * z * z)).abs() < 1e-12, "{a}: {r}");
        }
        // Under subsampling, Zhu and Wang's general bound is looser than the Gaussian-specific one
        // but of the same order (google-research's worked example: 2.448 against 2.105).
        let mut ddg = Accountant::with_orders(integer_orders());
        ddg.compose(&Mechanism::SubsampledDistributedGaussian { q: 0.01, sigma, clients: n, dim: 1 << 16, l2, l1: l2 * 256.0 }, 1000).unwrap();
        let mut gauss = Accountant::with_orders(integer_orders());
        gauss.compose(&Mechanism::SubsampledGaussian { q: 0.01, noise_multiplier: z }, 1000).unwrap();
        let (e_ddg, e_g) = (ddg.epsilon(1e-5).unwrap().0, gauss.epsilon(1e-5).unwrap().0);
        assert!(e_ddg > e_g && e_ddg < 1.3 * e_g, "{e_ddg} vs {e_g}");
        // Fewer survivors than planned: less noise in the sum, more ε.
        let mut fewer = Accountant::with_orders(integer_orders());
        fewer.compose(&Mechanism::SubsampledDistributedGaussian { q: 0.01, sigma, clients: 80, dim: 1 << 16, l2, l1: l2 * 256.0 }, 1000).unwrap();
        assert!(fewer.epsilon(1e-5).unwrap().0 > e_ddg);
    }
}
