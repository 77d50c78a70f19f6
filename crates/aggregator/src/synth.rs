//! Reproducible test data of other shapes than MovieLens: the project's own generators, so a
//! model's defaults are checked on data they were not tuned on.
//!
//! Both shapes draw people's tastes from a few latent "scenes" (clusters of items), with a
//! heavy-tailed (Zipf) popularity inside and across scenes, so most items are seen once or
//! twice and a few by everyone; the same seed gives the same bytes.
//!
//! - [`Shape::LongTail`]: music-listening counts like an artist-plays export. No timestamps, no
//!   item tags, the rating column is a heavy-tailed play count, rows sorted by user and then
//!   item id (as such exports are), about 1.2k people and 5k artists.
//! - [`Shape::WideCatalog`]: many more items than people (400 people, 8k items) with real
//!   timestamps (people drift between scenes: the next item is usually from the scene of the
//!   last one), 1–5 ratings and an items file with noisy scene tags.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Which dataset to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// Implicit play counts, no timestamps or tags, sorted by user then item.
    LongTail,
    /// Far more items than users, timestamps, ratings and item tags.
    WideCatalog,
}

/// A generated dataset: an interactions CSV and, for shapes with content, an items CSV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synthetic {
    /// `user,item,rating[,timestamp]` with a header.
    pub interactions: String,
    /// `item,title,tags` with a header, when the shape has item tags.
    pub items: Option<String>,
}

/// Sizes and mixing of one shape.
struct Params {
    users: usize,
    items: usize,
    scenes: usize,
    /// Zipf exponent of item popularity.
    zipf: f64,
    /// Share of draws from overall popularity instead of the person's scenes.
    mainstream: f64,
    /// Range of distinct items per person.
    per_user: (usize, usize),
}

impl Shape {
    fn params(self) -> Params {
        match self {
            Shape::LongTail => Params {
                users: 1200,
                items: 5000,
                scenes: 40,
                zipf: 1.05,
                mainstream: 0.2,
                per_user: (15, 70),
            },
            Shape::WideCatalog => Params {
                users: 400,
                items: 8000,
                scenes: 30,
                zipf: 0.9,
                mainstream: 0.15,
                per_user: (20, 110),
            },
        }
    }
}

/// Draws an index with probability proportional to `cumulative` weights (prefix sums).
fn draw(cumulative: &[f64], rng: &mut ChaCha8Rng) -> usize {
    let total = cumulative.last().copied().unwrap_or(0.0);
    let x = rng.random::<f64>() * total;
    cumulative.partition_point(|&c| c <= x).min(cumulative.len().saturating_sub(1))
}

fn prefix_sums(weights: impl Iterator<Item = f64>) -> Vec<f64> {
    weights
        .scan(0.0, |acc, w| {
            *acc += w;
            Some(*acc)
        })
        .collect()
}

/// Generates `shape` with `seed`.
pub fn generate(shape: Shape, seed: u64) -> Synthetic {
    let p = shape.params();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Popularity rank r gets weight (r + 1)^-zipf; ranks are shuffled over item ids, so an id
    // says nothing about popularity, and scenes are assigned at random.
    let mut rank: Vec<usize> = (0..p.items).collect();
    rank.shuffle(&mut rng);
    let weight: Vec<f64> = rank.iter().map(|&r| ((r + 1) as f64).powf(-p.zipf)).collect();
    let scene_of: Vec<usize> = (0..p.items).map(|_| rng.random_range(0..p.scenes)).collect();
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); p.scenes];
    for (i, &s) in scene_of.iter().enumerate() {
        members[s].push(i);
    }
    let scene_cum: Vec<Vec<f64>> = members.iter().map(|m| prefix_sums(m.iter().map(|&i| weight[i]))).collect();
    let global_cum = prefix_sums(weight.iter().copied());

    let mut rows: Vec<(usize, usize, u32, i64)> = Vec::new();
    for u in 0..p.users {
        // Two to three scenes, the first dominant.
        let n_scenes = rng.random_range(2..=3);
        let scenes: Vec<usize> = (0..n_scenes).map(|_| rng.random_range(0..p.scenes)).collect();
        let scene_w = prefix_sums((0..n_scenes).map(|k| if k == 0 { 3.0 } else { 1.0 }));
        let n = rng.random_range(p.per_user.0..=p.per_user.1);
        let mut taken = std::collections::HashSet::new();
        let mut scene = scenes[draw(&scene_w, &mut rng)];
        let mut t = 1_600_000_000 + rng.random_range(0..10_000_000i64);
        let mut attempts = 0;
        while taken.len() < n && attempts < 50 * n {
            attempts += 1;
            if shape == Shape::WideCatalog {
                // Drift: mostly stay in the scene of the last item.
                if rng.random::<f64>() < 0.25 {
                    scene = scenes[draw(&scene_w, &mut rng)];
                }
            } else {
                scene = scenes[draw(&scene_w, &mut rng)];
            }
            let item = if rng.random::<f64>() < p.mainstream || members[scene].is_empty() {
                draw(&global_cum, &mut rng)
            } else {
                members[scene][draw(&scene_cum[scene], &mut rng)]
            };
            if !taken.insert(item) {
                continue;
            }
            let own = scenes.contains(&scene_of[item]);
            let rating = match shape {
                // Heavy-tailed play counts, higher for the person's own scenes.
                Shape::LongTail => {
                    let mu = if own { 3.0 } else { 1.5 };
                    let z: f64 = (0..4).map(|_| rng.random::<f64>() - 0.5).sum::<f64>() * 1.7;
                    (mu + z).exp().round().max(1.0) as u32
                }
                Shape::WideCatalog => {
                    let base = if own { 4 } else { 3 };
                    (base + rng.random_range(0..=2) - 1).clamp(1, 5)
                }
            };
            t += rng.random_range(60..200_000);
            rows.push((u, item, rating, t));
        }
    }
    let mut interactions = String::new();
    match shape {
        Shape::LongTail => {
            rows.sort_by_key(|&(u, i, _, _)| (u, i));
            interactions += "userID,artistID,weight\n";
            for (u, i, r, _) in &rows {
                interactions += &format!("{},{},{r}\n", u + 2, i + 1);
            }
        }
        Shape::WideCatalog => {
            rows.sort_by_key(|&(u, _, _, t)| (u, t));
            interactions += "user,item,rating,timestamp\n";
            for (u, i, r, t) in &rows {
                interactions += &format!("u{u},i{i},{r},{t}\n");
            }
        }
    }
    let items = (shape == Shape::WideCatalog).then(|| {
        let mut s = String::from("item,title,tags\n");
        for (i, &scene) in scene_of.iter().enumerate() {
            // The scene's tag most of the time, a random one otherwise, plus a format tag.
            let tag = if rng.random::<f64>() < 0.7 { scene } else { rng.random_range(0..p.scenes) };
            let format = ["book", "film", "album"][rng.random_range(0..3)];
            s += &format!("i{i},Item {i},scene-{tag}|{format}\n");
        }
        s
    });
    Synthetic { interactions, items }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_core::data::{Dataset, Order};

    #[test]
    fn same_seed_same_bytes_and_the_shapes_read_as_described() {
        assert_eq!(generate(Shape::LongTail, 7), generate(Shape::LongTail, 7));
        assert_ne!(generate(Shape::LongTail, 7).interactions, generate(Shape::LongTail, 8).interactions);

        let lt = generate(Shape::LongTail, 42);
        let ds = Dataset::from_csv("plays.csv", lt.interactions.as_bytes(), None).unwrap();
        assert_eq!(ds.order().order, Order::Unordered);
        assert!(ds.item_tags.is_empty());
        assert!(ds.items.len() > 3 * ds.users.len() / 2, "{} items", ds.items.len());
        let counts = ds.item_counts(&ds.interactions);
        let once_or_twice = counts.iter().filter(|&&c| c <= 2).count();
        assert!(once_or_twice * 5 > counts.len(), "a long tail: {once_or_twice} of {} items seen at most twice", counts.len());
        let max = *counts.iter().max().unwrap() as f64;
        assert!(max > 0.1 * ds.users.len() as f64, "a head: the top item is seen by {max} people");
        // Sorted by user, then numeric item id.
        let ids: Vec<(u32, u32)> = lt
            .interactions
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<u32> = l.split(',').take(2).map(|x| x.parse().unwrap()).collect();
                (f[0], f[1])
            })
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));

        let wc = generate(Shape::WideCatalog, 42);
        let items = wc.items.as_deref().unwrap();
        let ds = Dataset::from_csv("wide.csv", wc.interactions.as_bytes(), Some(("items.csv", items.as_bytes()))).unwrap();
        assert_eq!(ds.order().order, Order::Sequential);
        assert!(ds.items.len() >= 15 * ds.users.len());
        assert!(!ds.item_tags.is_empty());
    }
}
