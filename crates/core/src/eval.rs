//! Offline evaluation: HR@K and NDCG@K under both leave-one-out protocols (the held-out item
//! among sampled negatives, and full ranking over every item the user has not trained on),
//! and catalog coverage.
//!
//! Score ties are broken at random with a seed, never in the held-out item's favour: a model that
//! scores everything equal gets the expected HR of random guessing, not a perfect one.
//!
//! ```
//! use hearth_core::eval::{rank_of_target, hit_and_ndcg};
//! use rand::SeedableRng;
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
//! // target scores 0.5; one candidate above, none tied: rank 1 (0-based), a hit at K = 10.
//! let rank = rank_of_target(0.5, &[0.9, 0.1, 0.2], &mut rng);
//! assert_eq!(rank, 1);
//! let (hr, ndcg) = hit_and_ndcg(rank, 10);
//! assert_eq!(hr, 1.0);
//! assert!((ndcg - 1.0 / 3f64.log2()).abs() < 1e-12);
//! ```

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::{Heldout, Interaction};

/// Anything that scores every catalog item for a user.
pub trait Recommender {
    /// Writes a score for each item into `out` (`out.len()` is the catalog size). Higher is
    /// better. `history` is the user's training items in time order.
    fn score_all(&self, user: u32, history: &[u32], out: &mut [f32]);
}

/// Popularity baseline: an item's score is its number of training interactions.
#[derive(Debug, Clone)]
pub struct MostPopular {
    counts: Vec<f32>,
}

impl MostPopular {
    /// Counts interactions per item.
    pub fn fit(n_items: usize, train: &[Interaction]) -> MostPopular {
        let mut counts = vec![0f32; n_items];
        for x in train {
            counts[x.item as usize] += 1.0;
        }
        MostPopular { counts }
    }
}

impl Recommender for MostPopular {
    fn score_all(&self, _user: u32, _history: &[u32], out: &mut [f32]) {
        out.copy_from_slice(&self.counts);
    }
}

/// Orders scores with NaN below everything.
fn key(score: f32) -> f32 {
    if score.is_nan() { f32::NEG_INFINITY } else { score }
}

/// 0-based rank of a target scoring `target` among `others`: the number of others scoring
/// strictly higher, plus a uniformly random share of those tied with it.
pub fn rank_of_target(target: f32, others: &[f32], rng: &mut impl Rng) -> usize {
    let t = key(target);
    let mut above = 0usize;
    let mut tied = 0usize;
    for &s in others {
        let s = key(s);
        if s > t {
            above += 1;
        } else if s == t {
            tied += 1;
        }
    }
    above + if tied > 0 { rng.random_range(0..=tied) } else { 0 }
}

/// HR@K and NDCG@K contributions of one held-out item at 0-based `rank`.
pub fn hit_and_ndcg(rank: usize, k: usize) -> (f64, f64) {
    if rank < k { (1.0, 1.0 / ((rank + 2) as f64).log2()) } else { (0.0, 0.0) }
}

/// Top-`k` item indices by score, ties broken by a random key from `rng` (not by index, which
/// would favour low ids). Items marked in `excluded` are skipped.
pub fn top_k(scores: &[f32], excluded: &[bool], k: usize, rng: &mut impl Rng) -> Vec<u32> {
    let mut cands: Vec<(f32, u32, u32)> = scores
        .iter()
        .enumerate()
        .filter(|(i, _)| !excluded[*i])
        .map(|(i, &s)| (key(s), rng.random::<u32>(), i as u32))
        .collect();
    let cmp = |a: &(f32, u32, u32), b: &(f32, u32, u32)| {
        b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
    };
    let k = k.min(cands.len());
    if k == 0 {
        return vec![];
    }
    if k < cands.len() {
        cands.select_nth_unstable_by(k - 1, cmp);
        cands.truncate(k);
    }
    cands.sort_unstable_by(cmp);
    cands.into_iter().map(|c| c.2).collect()
}

/// HR@K and NDCG@K, averaged over users.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HitRates {
    /// Fraction of users whose held-out item ranks in the top K.
    #[serde(rename = "hr@10")]
    pub hr: f64,
    /// Mean NDCG@K (one relevant item: 1/log2(rank+2) when in the top K).
    #[serde(rename = "ndcg@10")]
    pub ndcg: f64,
}

/// Both protocols' results for one recommender.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Held-out item ranked among its sampled (or given) candidates.
    pub sampled: HitRates,
    /// Held-out item ranked among every item the user has no training interaction with.
    pub full: HitRates,
    /// Fraction of the catalog that appears in at least one user's full-ranking top K.
    pub coverage: f64,
}

/// What to evaluate against.
#[derive(Debug, Clone)]
pub struct Protocol<'a> {
    /// Catalog size.
    pub n_items: usize,
    /// Training interactions (define what full ranking excludes).
    pub train: &'a [Interaction],
    /// Held-out items.
    pub test: &'a [Heldout],
    /// Candidates per test user (same order as `test`); the held-out item is ranked among these
    /// (the held-out item itself, if listed, is ignored).
    pub candidates: &'a [Vec<u32>],
    /// Cut-off K.
    pub k: usize,
    /// Seed for random tie-breaking.
    pub seed: u64,
}

/// Evaluates a recommender under both protocols.
pub fn evaluate(rec: &dyn Recommender, p: &Protocol<'_>) -> Metrics {
    let histories = crate::data::histories(p.train, max_user(p) + 1);
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
    let mut scores = vec![0f32; p.n_items];
    let mut excluded = vec![false; p.n_items];
    let mut recommended = vec![false; p.n_items];
    let mut others = Vec::with_capacity(p.n_items);
    let (mut s_hr, mut s_ndcg, mut f_hr, mut f_ndcg) = (0f64, 0f64, 0f64, 0f64);
    for (h, cands) in p.test.iter().zip(p.candidates) {
        let history = &histories[h.user as usize];
        rec.score_all(h.user, history, &mut scores);
        let target = scores[h.item as usize];

        others.clear();
        others.extend(cands.iter().filter(|&&c| c != h.item).map(|&c| scores[c as usize]));
        let (hr, ndcg) = hit_and_ndcg(rank_of_target(target, &others, &mut rng), p.k);
        s_hr += hr;
        s_ndcg += ndcg;

        for &j in history {
            excluded[j as usize] = true;
        }
        // The held-out item is a candidate even if the user also has it in training (re-watch).
        let target_excluded = std::mem::replace(&mut excluded[h.item as usize], true);
        others.clear();
        others.extend(scores.iter().zip(&excluded).filter(|(_, e)| !**e).map(|(s, _)| *s));
        let (hr, ndcg) = hit_and_ndcg(rank_of_target(target, &others, &mut rng), p.k);
        f_hr += hr;
        f_ndcg += ndcg;
        excluded[h.item as usize] = target_excluded;

        for j in top_k(&scores, &excluded, p.k, &mut rng) {
            recommended[j as usize] = true;
        }
        for &j in history {
            excluded[j as usize] = false;
        }
    }
    let n = p.test.len().max(1) as f64;
    Metrics {
        sampled: HitRates { hr: s_hr / n, ndcg: s_ndcg / n },
        full: HitRates { hr: f_hr / n, ndcg: f_ndcg / n },
        coverage: recommended.iter().filter(|r| **r).count() as f64 / p.n_items.max(1) as f64,
    }
}

fn max_user(p: &Protocol<'_>) -> usize {
    let a = p.train.iter().map(|x| x.user as usize).max().unwrap_or(0);
    let b = p.test.iter().map(|h| h.user as usize).max().unwrap_or(0);
    a.max(b)
}

/// Platt scaling of a score into a probability: `1 / (1 + exp(a·s + b))`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Calibration {
    /// Slope (negative when higher scores are more likely).
    pub a: f64,
    /// Offset.
    pub b: f64,
}

impl Default for Calibration {
    /// An uncalibrated logistic of the raw score.
    fn default() -> Self {
        Calibration { a: -1.0, b: 0.0 }
    }
}

impl Calibration {
    /// The probability for a score.
    pub fn probability(&self, score: f32) -> f32 {
        let z = self.a * f64::from(score) + self.b;
        (1.0 / (1.0 + z.exp())) as f32
    }

    /// Fits Platt's sigmoid to scores of held-out positives and negatives (Newton's method with
    /// Platt's smoothed targets, as in Lin, Lin and Weng's note on Platt scaling). `None` without
    /// both kinds of example or with non-finite scores.
    pub fn fit(positives: &[f32], negatives: &[f32]) -> Option<Calibration> {
        let (np, nn) = (positives.len() as f64, negatives.len() as f64);
        if np == 0.0 || nn == 0.0 || positives.iter().chain(negatives).any(|s| !s.is_finite()) {
            return None;
        }
        let (hi, lo) = ((np + 1.0) / (np + 2.0), 1.0 / (nn + 2.0));
        let data: Vec<(f64, f64)> = positives.iter().map(|&s| (f64::from(s), hi)).chain(negatives.iter().map(|&s| (f64::from(s), lo))).collect();
        let (mut a, mut b) = (0.0f64, ((nn + 1.0) / (np + 1.0)).ln());
        let loss = |a: f64, b: f64| -> f64 {
            data.iter()
                .map(|&(s, t)| {
                    let z = a * s + b;
                    // -[t log p + (1 - t) log(1 - p)] with p = 1 / (1 + e^z), computed stably.
                    if z >= 0.0 { t * z + (1.0 + (-z).exp()).ln() } else { (t - 1.0) * z + (1.0 + z.exp()).ln() }
                })
                .sum()
        };
        let mut f = loss(a, b);
        for _ in 0..100 {
            let (mut h11, mut h22, mut h21, mut g1, mut g2) = (1e-12, 1e-12, 0.0, 0.0, 0.0);
            for &(s, t) in &data {
                let z = a * s + b;
                let (p, q) = if z >= 0.0 {
                    let e = (-z).exp();
                    (e / (1.0 + e), 1.0 / (1.0 + e))
                } else {
                    let e = z.exp();
                    (1.0 / (1.0 + e), e / (1.0 + e))
                };
                let d2 = p * q;
                h11 += s * s * d2;
                h22 += d2;
                h21 += s * d2;
                let d1 = t - p;
                g1 += s * d1;
                g2 += d1;
            }
            if g1.abs() < 1e-9 && g2.abs() < 1e-9 {
                break;
            }
            let det = h11 * h22 - h21 * h21;
            let (da, db) = (-(h22 * g1 - h21 * g2) / det, -(-h21 * g1 + h11 * g2) / det);
            let gd = g1 * da + g2 * db;
            let mut step = 1.0;
            while step >= 1e-10 {
                let (na, nb) = (a + step * da, b + step * db);
                let nf = loss(na, nb);
                if nf < f + 1e-4 * step * gd {
                    (a, b, f) = (na, nb, nf);
                    break;
                }
                step /= 2.0;
            }
            if step < 1e-10 {
                break;
            }
        }
        (a.is_finite() && b.is_finite()).then_some(Calibration { a, b })
    }
}

/// Expected calibration error of `c` on held-out scores: positives (label 1) and negatives
/// (label 0) binned by predicted probability into `bins` equal-width bins; the mean over all
/// examples of |predicted − observed| per bin, weighted by the bin's share. 0 when perfectly
/// calibrated; 0 for no examples.
pub fn expected_calibration_error(c: &Calibration, positives: &[f32], negatives: &[f32], bins: usize) -> f64 {
    let bins = bins.max(1);
    let mut acc = vec![(0f64, 0f64, 0usize); bins];
    for (scores, label) in [(positives, 1.0), (negatives, 0.0)] {
        for &s in scores {
            let p = f64::from(c.probability(s));
            let b = ((p * bins as f64) as usize).min(bins - 1);
            acc[b].0 += p;
            acc[b].1 += label;
            acc[b].2 += 1;
        }
    }
    let total = (positives.len() + negatives.len()).max(1) as f64;
    acc.iter().filter(|b| b.2 > 0).map(|b| (b.0 - b.1).abs() / total).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<f32>);
    impl Recommender for Fixed {
        fn score_all(&self, _: u32, _: &[u32], out: &mut [f32]) {
            out.copy_from_slice(&self.0);
        }
    }

    fn x(user: u32, item: u32, t: i64) -> Interaction {
        Interaction { user, item, rating: 1.0, timestamp: t }
    }

    #[test]
    fn ndcg_by_hand() {
        assert_eq!(hit_and_ndcg(0, 10), (1.0, 1.0));
        let (_, n) = hit_and_ndcg(2, 10);
        assert!((n - 0.5).abs() < 1e-12, "rank 2 -> 1/log2(4) = 0.5");
        assert_eq!(hit_and_ndcg(10, 10), (0.0, 0.0));
    }

    #[test]
    fn ties_are_never_optimistic() {
        // All 100 candidates tie: expected HR@10 is 10/100, not 1.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let others = vec![1.0f32; 99];
        let trials = 20_000;
        let hits: f64 =
            (0..trials).map(|_| hit_and_ndcg(rank_of_target(1.0, &others, &mut rng), 10).0).sum();
        let hr = hits / trials as f64;
        assert!((hr - 0.10).abs() < 0.01, "hr {hr}");
        // NaN ranks last.
        assert_eq!(rank_of_target(f32::NAN, &[0.0, -1.0], &mut rng), 2);
    }

    #[test]
    fn hand_computed_protocols() {
        // 6 items. user 0 trained on 0 and 1, held-out 5. Scores: item i -> i as f32 except 5 -> 2.5.
        // Sampled among {2, 3, 4}: above = 3, 4 -> rank 2.
        // Full ranking excludes 0 and 1: candidates 2, 3, 4 (+5): rank 2 as well.
        // With K = 2, miss; with K = 3, hit with NDCG 0.5.
        let rec = Fixed(vec![0.0, 1.0, 2.0, 3.0, 4.0, 2.5]);
        let train = [x(0, 0, 1), x(0, 1, 2)];
        let test = [Heldout { user: 0, item: 5 }];
        let cands = [vec![2, 3, 4]];
        let p = Protocol { n_items: 6, train: &train, test: &test, candidates: &cands, k: 3, seed: 0 };
        let m = evaluate(&rec, &p);
        assert_eq!(m.sampled, HitRates { hr: 1.0, ndcg: 0.5 });
        assert_eq!(m.full, HitRates { hr: 1.0, ndcg: 0.5 });
        // Top-3 of the unseen items: 4, 3, 5 -> coverage 3/6.
        assert!((m.coverage - 0.5).abs() < 1e-12);
        let m = evaluate(&rec, &Protocol { k: 2, ..p });
        assert_eq!(m.sampled.hr, 0.0);
        assert_eq!(m.full.hr, 0.0);
    }

    #[test]
    fn full_ranking_excludes_training_items() {
        // Trained items score highest but must not push the held-out item down.
        let rec = Fixed(vec![9.0, 8.0, 1.0, 0.5]);
        let train = [x(0, 0, 1), x(0, 1, 2)];
        let test = [Heldout { user: 0, item: 2 }];
        let cands = [vec![3]];
        let p = Protocol { n_items: 4, train: &train, test: &test, candidates: &cands, k: 1, seed: 0 };
        let m = evaluate(&rec, &p);
        assert_eq!(m.full, HitRates { hr: 1.0, ndcg: 1.0 });
    }

    #[test]
    fn most_popular_counts() {
        let train = [x(0, 1, 1), x(1, 1, 1), x(1, 2, 1)];
        let mp = MostPopular::fit(3, &train);
        let mut out = vec![0.0; 3];
        mp.score_all(0, &[], &mut out);
        assert_eq!(out, vec![0.0, 2.0, 1.0]);
    }

    #[test]
    fn top_k_breaks_ties_randomly_but_orders_scores() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let s = [1.0, 5.0, 3.0, 5.0, f32::NAN];
        let t = top_k(&s, &[false; 5], 3, &mut rng);
        assert_eq!(t.len(), 3);
        assert!(t[..2].contains(&1) && t[..2].contains(&3));
        assert_eq!(t[2], 2);
        let t = top_k(&s, &[false, true, false, true, false], 10, &mut rng);
        assert_eq!(t, vec![2, 0, 4]);
    }

    #[test]
    fn expected_calibration_error_is_zero_when_calibrated_and_large_when_not() {
        let c = Calibration { a: -1.0, b: 0.0 };
        // Score 0 means p = 0.5: one positive and one negative there is perfectly calibrated.
        assert_eq!(expected_calibration_error(&c, &[0.0], &[0.0], 10), 0.0);
        // Confident and always wrong: p ≈ 1 for negatives, p ≈ 0 for positives.
        let e = expected_calibration_error(&c, &[-20.0; 5], &[20.0; 5], 10);
        assert!(e > 0.99, "{e}");
        assert_eq!(expected_calibration_error(&c, &[], &[], 10), 0.0);
    }
}
