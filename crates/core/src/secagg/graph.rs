//! The neighbour graph of SecAgg+: a random Harary graph (Bell et al. 2020; Google's
//! `fcp/secagg` builds the same). The n clients sit on a ring in a random order drawn from the
//! round's graph seed; each is a neighbour of the k/2 before and the k/2 after it, and of itself.
//! With k ≥ n − 1 it is the complete graph of the original SecAgg.

use rand::SeedableRng;
use rand::seq::SliceRandom;

/// The graph of one round: who shares keys and masks with whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    /// Ring position → client index.
    order: Vec<u32>,
    /// Client index → ring position.
    position: Vec<u32>,
    /// Neighbours on each side.
    half: u32,
}

impl Graph {
    /// The graph of `clients` clients of degree `degree` (even; each client also neighbours
    /// itself), its ring order shuffled by `seed`.
    pub fn new(clients: u32, degree: u32, seed: [u8; 32]) -> Graph {
        let mut order: Vec<u32> = (0..clients).collect();
        order.shuffle(&mut rand_chacha::ChaCha20Rng::from_seed(seed));
        let mut position = vec![0; clients as usize];
        for (p, &c) in order.iter().enumerate() {
            position[c as usize] = p as u32;
        }
        let half = if degree + 1 >= clients { clients / 2 } else { degree / 2 };
        Graph { order, position, half }
    }

    /// Clients in the round.
    pub fn clients(&self) -> u32 {
        self.order.len() as u32
    }

    /// `client`'s neighbours, itself included, in ring order (its share of each secret is the one
    /// at its place in this list: x = place + 1). Empty for an index outside the round.
    pub fn neighbours(&self, client: u32) -> Vec<u32> {
        let n = self.order.len() as i64;
        let Some(&p) = self.position.get(client as usize) else { return vec![] };
        if 2 * i64::from(self.half) + 1 >= n {
            // Complete graph: everyone, in ring order starting after `client`'s left half.
            return (0..n).map(|o| self.order[((i64::from(p) - i64::from(self.half) + o).rem_euclid(n)) as usize]).collect();
        }
        (-i64::from(self.half)..=i64::from(self.half)).map(|o| self.order[((i64::from(p) + o).rem_euclid(n)) as usize]).collect()
    }

    /// Whether `a` and `b` are neighbours (a client is its own).
    pub fn adjacent(&self, a: u32, b: u32) -> bool {
        let n = self.order.len() as u32;
        let (Some(&pa), Some(&pb)) = (self.position.get(a as usize), self.position.get(b as usize)) else { return false };
        let d = pa.abs_diff(pb);
        d.min(n - d) <= self.half
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_has_degree_plus_one_neighbours_symmetrically() {
        for (n, k) in [(1, 2), (2, 2), (5, 4), (6, 4), (30, 8), (1000, 30), (11, 40)] {
            let g = Graph::new(n, k, [n as u8; 32]);
            for c in 0..n {
                let nb = g.neighbours(c);
                let want = if k + 1 >= n { n } else { k + 1 };
                assert_eq!(nb.len() as u32, want, "n {n} k {k} client {c}");
                assert!(nb.contains(&c));
                let mut sorted = nb.clone();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), nb.len(), "no duplicates");
                for &o in &nb {
                    assert!(g.adjacent(c, o) && g.adjacent(o, c), "n {n} k {k}: {c} ~ {o}");
                    assert!(g.neighbours(o).contains(&c));
                }
            }
            assert!(g.neighbours(n).is_empty());
        }
        // The order depends on the seed.
        assert_ne!(Graph::new(100, 10, [1; 32]).neighbours(0), Graph::new(100, 10, [2; 32]).neighbours(0));
    }
}
