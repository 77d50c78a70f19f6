//! Ranking: from scored candidates to the list a person sees.
//!
//! [`rank`] takes the personal candidates the scorer found (int8 scan, best first), the catalog's
//! popularity order, the person's history and the exclusions, and returns `k` items, each with a
//! calibrated confidence ("% match") and a reason:
//!
//! 1. **Exclusions**: items the person has seen and items the caller excludes (rights, territory,
//!    an explicit list) never appear.
//! 2. **Fusion**: weighted reciprocal rank fusion of the personal and popular orders; the personal
//!    weight grows with the history, `h / (h + warm_history)`, so a new person sees what is
//!    popular and an established one sees their own list.
//! 3. **Diversity**: maximal marginal relevance over the fused pool, `(1 − λ)·relevance −
//!    λ·max cosine to the items already chosen` (cosines of the int8 item rows; λ = 0 keeps the
//!    fused order).
//! 4. **Exploration**: a share of the slots (default 10 %) goes to items drawn, with the session's
//!    seed, from the pool beyond the top `3k`, placed in the lower half of the list.
//! 5. **Confidence**: Platt-calibrated probability of the person's score for the item
//!    ([`Calibration`], fitted on held-out data).
//! 6. **Reason**: the history item closest to the recommended one in embedding space ("because
//!    you liked X"), else "popular" or "something new".

use std::collections::HashSet;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::eval::Calibration;
use crate::quant::CatalogView;
use crate::device::score::Hit;

/// How to rank.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RankConfig {
    /// Items to return.
    pub k: usize,
    /// MMR λ in [0, 1]: 0 ranks by relevance alone, higher values trade relevance for variety.
    pub diversity: f32,
    /// Share of the `k` slots for exploration, in [0, 1].
    pub explore: f32,
    /// Seed of this session's exploration draws.
    pub seed: u64,
    /// The reciprocal rank fusion constant (60 in the RRF paper).
    pub rrf_k: f32,
    /// History length at which personal and popular weigh the same.
    pub warm_history: usize,
    /// In [0, 1], scales the personal list's fusion weight: 1 for a model that beat
    /// most-popular on validation, less for one that did not, so its lists lean on what is
    /// popular (the model's manifest says which: `ModelManifest::personal_trust`).
    pub personal_trust: f32,
}

impl RankConfig {
    /// The defaults (also `RankConfig::default()`), usable in constants.
    pub const DEFAULT: RankConfig = RankConfig { k: 10, diversity: 0.3, explore: 0.1, seed: 0, rrf_k: 60.0, warm_history: 10, personal_trust: 1.0 };
}

impl Default for RankConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Where a recommended item came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The person's own candidates.
    Personal,
    /// The popular list.
    Popular,
    /// Both lists.
    Both,
    /// An exploration draw.
    Explore,
}

/// Why an item is recommended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reason {
    /// It is close to `item`, from the person's history ("because you liked …").
    Similar {
        /// The history item (catalog index).
        item: u32,
        /// Cosine similarity of the two item vectors.
        similarity: f32,
    },
    /// Popular with everyone (little history, or nothing in it is close).
    Popular,
    /// Something new, drawn for exploration.
    Explore,
}

/// One recommended item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranked {
    /// Catalog index.
    pub index: u32,
    /// The person's score for it (user vector · item row).
    pub score: f32,
    /// Calibrated probability that the person engages with it (the "% match").
    pub confidence: f32,
    /// Where it came from.
    pub source: Source,
    /// Why.
    pub reason: Reason,
}

/// What [`rank`] works from.
#[derive(Debug, Clone, Copy)]
pub struct RankInput<'a> {
    /// The catalog's int8 item rows.
    pub view: CatalogView<'a>,
    /// The person's user vector.
    pub user: &'a [f32],
    /// The person's candidates, best first (e.g. `score::search` with a few times `k`).
    pub personal: &'a [Hit],
    /// Catalog indices by popularity, most popular first.
    pub popular: &'a [u32],
    /// The person's positive history, oldest first (for the fusion weight and the reasons).
    pub history: &'a [u32],
    /// Everything the person has interacted with (never recommended).
    pub seen: &'a HashSet<u32>,
    /// Items the caller excludes (rights, territory, an explicit list).
    pub excluded: &'a HashSet<u32>,
    /// Score calibration for the confidence.
    pub calibration: Calibration,
}

/// Why ranking could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RankError {
    /// The user vector does not match the catalog's width.
    #[error("user vector of {got} values for a catalog of width {want}")]
    Width {
        /// Values given.
        got: usize,
        /// The catalog's width.
        want: usize,
    },
    /// A configuration value is out of range.
    #[error("{0}")]
    Config(&'static str),
}

fn norm(row: &[i8]) -> f32 {
    (row.iter().map(|&v| i32::from(v) * i32::from(v)).sum::<i32>() as f32).sqrt()
}

fn cosine(a: &[i8], na: f32, b: &[i8], nb: f32) -> f32 {
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    a.iter().zip(b).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum::<i32>() as f32 / (na * nb)
}

/// Ranks as the module docs describe. Returns up to `k` distinct items (fewer when the pool
/// after exclusions is smaller).
pub fn rank(input: &RankInput<'_>, cfg: &RankConfig) -> Result<Vec<Ranked>, RankError> {
    let view = input.view;
    let dim = view.dim();
    if input.user.len() != dim {
        return Err(RankError::Width { got: input.user.len(), want: dim });
    }
    let valid = (0.0..=1.0).contains(&cfg.diversity) && (0.0..=1.0).contains(&cfg.explore) && cfg.rrf_k.is_finite() && cfg.rrf_k > 0.0;
    if !valid {
        return Err(RankError::Config("diversity and explore must be in [0, 1] and rrf_k positive"));
    }
    let n = view.len() as u32;
    let allowed = |i: u32| i < n && !input.seen.contains(&i) && !input.excluded.contains(&i);

    // Fusion over the union of both lists (each cut to the same depth).
    let depth = input.personal.len().max(cfg.k * 5).max(1);
    let personal: Vec<u32> = input.personal.iter().map(|h| h.index).filter(|&i| allowed(i)).collect();
    let popular: Vec<u32> = input.popular.iter().copied().filter(|&i| allowed(i)).take(depth).collect();
    let h = input.history.len() as f32;
    let w_personal = cfg.personal_trust.clamp(0.0, 1.0) * h / (h + cfg.warm_history.max(1) as f32);
    let mut pool: Vec<(u32, f32, Source)> = vec![];
    let mut at = std::collections::HashMap::new();
    for (list, w, src) in [(&personal, w_personal, Source::Personal), (&popular, 1.0 - w_personal, Source::Popular)] {
        for (r, &i) in list.iter().enumerate() {
            let add = w / (cfg.rrf_k + r as f32 + 1.0);
            match at.get(&i) {
                Some(&p) => {
                    let e: &mut (u32, f32, Source) = &mut pool[p];
                    e.1 += add;
                    e.2 = Source::Both;
                }
                None => {
                    at.insert(i, pool.len());
                    pool.push((i, add, src));
                }
            }
        }
    }
    pool.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));

    let score = |i: u32| crate::device::score::score_one(view, input.user, i);
    let norms: Vec<f32> = pool.iter().map(|&(i, _, _)| norm(view.row(i as usize))).collect();

    // Exploration slots and the items they may draw from (beyond the top 3k of the fused order).
    let k = cfg.k.min(pool.len());
    let n_explore = ((cfg.k as f32 * cfg.explore).round() as usize).min(pool.len().saturating_sub(3 * cfg.k));
    let n_main = k.saturating_sub(n_explore);

    // MMR over the fused pool.
    let (top, bottom) = (pool.first().map_or(0.0, |p| p.1), pool.last().map_or(0.0, |p| p.1));
    let spread = if top > bottom { top - bottom } else { 1.0 };
    let mut chosen: Vec<usize> = vec![];
    let mut max_sim = vec![f32::NEG_INFINITY; pool.len()];
    let mut taken = vec![false; pool.len()];
    while chosen.len() < n_main {
        let mut best: Option<(usize, f32)> = None;
        for (p, &(_, fused, _)) in pool.iter().enumerate() {
            if taken[p] {
                continue;
            }
            let rel = (fused - bottom) / spread;
            let div = if chosen.is_empty() { 0.0 } else { max_sim[p] };
            let v = (1.0 - cfg.diversity) * rel - cfg.diversity * div;
            if best.is_none_or(|(_, bv)| v > bv) {
                best = Some((p, v));
            }
        }
        let Some((p, _)) = best else { break };
        taken[p] = true;
        chosen.push(p);
        if cfg.diversity > 0.0 {
            let (ri, nr) = (view.row(pool[p].0 as usize), norms[p]);
            for (q, m) in max_sim.iter_mut().enumerate() {
                if !taken[q] {
                    *m = m.max(cosine(ri, nr, view.row(pool[q].0 as usize), norms[q]));
                }
            }
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut far: Vec<usize> = (3 * cfg.k..pool.len()).filter(|&p| !taken[p]).collect();
    far.shuffle(&mut rng);

    // Reasons: the closest of the person's (most recent 200) history items.
    let hist: Vec<(u32, &[i8], f32)> = input
        .history
        .iter()
        .rev()
        .take(200)
        .filter(|&&i| i < n)
        .map(|&i| (i, view.row(i as usize), norm(view.row(i as usize))))
        .collect();
    let reason = |p: usize| -> Reason {
        let (i, _, src) = pool[p];
        let best = hist
            .iter()
            .map(|&(hi, row, nh)| (hi, cosine(view.row(i as usize), norms[p], row, nh)))
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
        match best {
            Some((item, similarity)) if similarity > 0.0 && src != Source::Popular => Reason::Similar { item, similarity },
            _ => Reason::Popular,
        }
    };
    let item = |p: usize, explore: bool| {
        let i = pool[p].0;
        let s = score(i);
        Ranked {
            index: i,
            score: s,
            confidence: input.calibration.probability(s),
            source: if explore { Source::Explore } else { pool[p].2 },
            reason: if explore { Reason::Explore } else { reason(p) },
        }
    };
    let mut out: Vec<Ranked> = chosen.iter().map(|&p| item(p, false)).collect();
    for &p in far.iter().take(n_explore) {
        let lo = out.len() / 2;
        let at = rng.random_range(lo..=out.len());
        out.insert(at, item(p, true));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::shard::CatalogShard;

    /// Items in `clusters` tight clusters around random centres; the user likes cluster 0.
    fn catalog(n: usize, dim: usize, clusters: usize, seed: u64) -> (CatalogShard, Vec<f32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let centres: Vec<Vec<f32>> = (0..clusters).map(|_| (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect()).collect();
        let values: Vec<f32> =
            (0..n).flat_map(|i| centres[i % clusters].iter().map(|c| c + rng.random_range(-0.15..0.15)).collect::<Vec<_>>()).collect();
        let shard = CatalogShard::from_f32("1", (0..n).map(|i| format!("item-{i}")).collect(), dim, &values).unwrap();
        (shard, centres[0].clone())
    }

    fn personal(view: CatalogView<'_>, user: &[f32], depth: usize) -> Vec<Hit> {
        crate::device::score::search(view, user, depth, 1).unwrap()
    }

    fn mean_pairwise_cosine(view: CatalogView<'_>, items: &[u32]) -> f32 {
        let mut s = 0.0;
        let mut c = 0;
        for (x, &a) in items.iter().enumerate() {
            for &b in &items[x + 1..] {
                let (ra, rb) = (view.row(a as usize), view.row(b as usize));
                s += cosine(ra, norm(ra), rb, norm(rb));
                c += 1;
            }
        }
        s / c.max(1) as f32
    }

    /// The ranking tests' scene: 2000 items in 8 clusters, a person whose 30 history items are all
    /// in cluster 0, their top 60 candidates, an arbitrary popularity order, 3 excluded items.
    struct Scene {
        shard: CatalogShard,
        user: Vec<f32>,
        cands: Vec<Hit>,
        popular: Vec<u32>,
        history: Vec<u32>,
        seen: HashSet<u32>,
        excluded: HashSet<u32>,
    }

    impl Scene {
        fn new() -> Self {
            let (shard, user) = catalog(2000, 16, 8, 1);
            let cands = personal(shard.view(), &user, 60);
            let history: Vec<u32> = (0..30).map(|i| i * 8).collect();
            let seen = history.iter().copied().collect();
            let excluded = cands.iter().take(3).map(|h| h.index).collect();
            Scene { shard, user, cands, popular: (0..2000).rev().collect(), history, seen, excluded }
        }

        fn input(&self) -> RankInput<'_> {
            RankInput {
                view: self.shard.view(),
                user: &self.user,
                personal: &self.cands,
                popular: &self.popular,
                history: &self.history,
                seen: &self.seen,
                excluded: &self.excluded,
                calibration: Calibration::default(),
            }
        }
    }

    const PLAIN: RankConfig = RankConfig { diversity: 0.0, explore: 0.0, ..RankConfig::DEFAULT };

    fn ids(list: &[Ranked]) -> Vec<u32> {
        list.iter().map(|r| r.index).collect()
    }

    #[test]
    fn the_list_holds_ten_distinct_items_none_seen_or_excluded_all_from_the_persons_cluster() {
        let scene = Scene::new();
        let ids = ids(&rank(&scene.input(), &PLAIN).unwrap());
        assert_eq!(ids.len(), 10);
        assert!(ids.iter().all(|i| !scene.seen.contains(i) && !scene.excluded.contains(i)), "exclusions hold");
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 10, "no duplicates");
        // With 30 history items the personal list dominates: all from the person's cluster.
        assert!(ids.iter().all(|i| i % 8 == 0), "{ids:?}");
    }

    #[test]
    fn each_reason_names_the_closest_history_item_and_confidence_follows_the_score() {
        let scene = Scene::new();
        let view = scene.shard.view();
        let list = rank(&scene.input(), &PLAIN).unwrap();
        for r in &list {
            let Reason::Similar { item, similarity } = r.reason else { panic!("{r:?}") };
            let row = view.row(r.index as usize);
            let best = scene.history.iter().map(|&h| cosine(row, norm(row), view.row(h as usize), norm(view.row(h as usize)))).fold(f32::MIN, f32::max);
            assert_eq!(similarity, best);
            assert!(scene.history.contains(&item));
        }
        for w in list.windows(2) {
            assert_eq!(w[0].score > w[1].score, w[0].confidence > w[1].confidence);
        }
    }

    #[test]
    fn diversity_spreads_the_list_over_more_clusters() {
        let scene = Scene::new();
        let view = scene.shard.view();
        let plain = ids(&rank(&scene.input(), &PLAIN).unwrap());
        let diverse = ids(&rank(&scene.input(), &RankConfig { diversity: 0.7, ..PLAIN }).unwrap());
        assert!(mean_pairwise_cosine(view, &diverse) < mean_pairwise_cosine(view, &plain) - 0.1);
    }

    #[test]
    fn exploration_fills_one_late_slot_from_beyond_the_top_reproducibly_per_seed() {
        let scene = Scene::new();
        let input = scene.input();
        let plain = ids(&rank(&input, &PLAIN).unwrap());
        let cfg = RankConfig { explore: 0.1, seed: 5, ..PLAIN };
        let a = rank(&input, &cfg).unwrap();
        let explore: Vec<&Ranked> = a.iter().filter(|r| r.source == Source::Explore).collect();
        assert_eq!(explore.len(), 1);
        assert_eq!(explore[0].reason, Reason::Explore);
        assert!(a.iter().position(|r| r.source == Source::Explore).unwrap() >= 4);
        assert!(!plain.contains(&explore[0].index));
        assert_eq!(rank(&input, &cfg).unwrap(), a, "same seed, same list");
        let others: HashSet<u32> = (0..20)
            .map(|s| rank(&input, &RankConfig { seed: s, ..cfg }).unwrap())
            .flat_map(|l| l.into_iter().filter(|r| r.source == Source::Explore).map(|r| r.index))
            .collect();
        assert!(others.len() > 5, "seeds draw different items: {others:?}");
    }

    #[test]
    fn a_new_person_gets_the_popular_order_with_a_popular_reason() {
        let scene = Scene::new();
        let fresh = RankInput { history: &[], seen: &HashSet::new(), ..scene.input() };
        let cold = rank(&fresh, &PLAIN).unwrap();
        let want: Vec<u32> = scene.popular.iter().copied().filter(|i| !scene.excluded.contains(i)).take(10).collect();
        assert_eq!(ids(&cold), want);
        assert!(cold.iter().all(|r| r.reason == Reason::Popular && r.source != Source::Personal));
    }

    #[test]
    fn a_weak_model_leans_on_the_popular_list_and_no_trust_gives_its_order() {
        // A model its manifest marks as weak (it did not beat most-popular on validation).
        let scene = Scene::new();
        let input = scene.input();
        let popular_share = |trust: f32| {
            let l = rank(&input, &RankConfig { personal_trust: trust, ..PLAIN }).unwrap();
            l.iter().filter(|r| r.source == Source::Popular).count()
        };
        assert_eq!(popular_share(1.0), 0);
        assert!(popular_share(0.5) >= 3, "{}", popular_share(0.5));
        let none = rank(&input, &RankConfig { personal_trust: 0.0, ..PLAIN }).unwrap();
        let want: Vec<u32> =
            scene.popular.iter().copied().filter(|i| !scene.excluded.contains(i) && !scene.seen.contains(i)).take(10).collect();
        assert_eq!(ids(&none), want);
    }

    #[test]
    fn a_user_vector_of_another_width_and_an_out_of_range_setting_are_typed_errors() {
        let scene = Scene::new();
        let input = scene.input();
        assert!(matches!(rank(&RankInput { user: &[1.0], ..input }, &PLAIN), Err(RankError::Width { .. })));
        assert!(matches!(rank(&input, &RankConfig { diversity: 2.0, ..PLAIN }), Err(RankError::Config(_))));
    }

    #[test]
    fn platt_fit_recovers_a_known_sigmoid() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let truth = Calibration { a: -2.0, b: 1.0 };
        let (mut pos, mut neg) = (vec![], vec![]);
        for _ in 0..20_000 {
            let s: f32 = rng.random_range(-3.0..4.0);
            if rng.random::<f32>() < truth.probability(s) { pos.push(s) } else { neg.push(s) }
        }
        let fit = Calibration::fit(&pos, &neg).unwrap();
        assert!((fit.a - truth.a).abs() < 0.1 && (fit.b - truth.b).abs() < 0.1, "{fit:?}");
        assert_eq!(Calibration::fit(&[], &neg), None);
        assert_eq!(Calibration::fit(&[f32::NAN], &neg), None);
    }
}
