//! Secure aggregation: SecAgg+ (Bell, Bonawitz, Gascón, Lepoint, Raykova, CCS 2020), as sans-IO
//! client and server state machines (bytes in, bytes out). The server learns the sum modulo 2³²
//! of the inputs of the clients that survived to the masked-input stage, and nothing else about
//! any one of them, while at least `threshold` of each client's neighbours survive; below that the
//! round aborts with a typed error before anything can be unmasked.
//!
//! Each client shares keys with its neighbours in a random k-regular graph ([`graph`]) rather
//! than with everyone, so its cost grows with log n. Stages:
//! 1. **advertise keys**: two fresh X25519 public keys (one to encrypt shares, one to agree masks);
//! 2. **share keys**: Shamir shares (t of k+1) of a self-mask seed and of the mask secret key,
//!    sealed to each neighbour with ChaCha20-Poly1305 under their agreed key;
//! 3. **masked input**: the input plus the self mask plus, for every neighbour that shared keys,
//!    the pairwise mask (+ towards higher indices, − towards lower), modulo 2³²;
//! 4. **unmask**: each survivor sends, for each neighbour, one share: of the self-mask seed if that
//!    neighbour's input is in the sum, of its mask key if it dropped before sending it — never
//!    both kinds for one client (the client refuses a request that would allow it), so the server
//!    can remove exactly the masks that did not cancel.
//!
//! Every client message is signed with the device's enrolled Ed25519 key; the server checks it
//! and clients check each other's advertised keys. Messages are framed by [`crate::codec`]
//! (`wire`: magic, version, type, lengths checked before allocating) and fuzzed.
//!
//! ```
//! use hearth_core::secagg::{Params, client::Client, server::{Server, Step}};
//! let params = Params::for_clients([1; 16], 3, 4, 2);
//! let seeds: Vec<[u8; 32]> = (0..3).map(|i| [i as u8 + 1; 32]).collect();
//! let keys: Vec<[u8; 32]> = seeds.iter().map(|s| hearth_core::secagg::crypto::signing_key(s).unwrap().1).collect();
//! let mut server = Server::new(params.clone(), keys, [7; 32]).unwrap();
//! let mut clients = vec![];
//! for (i, s) in seeds.iter().enumerate() {
//!     let (c, msg) = Client::new(params.clone(), i as u32, *s, [i as u8 + 50; 32]).unwrap();
//!     server.receive(&msg).unwrap();
//!     clients.push(c);
//! }
//! let inputs = [[1u32, 2, 3, 4], [10, 20, 30, 40], [100, 200, 300, u32::MAX]];
//! let mut step = server.advance().unwrap();
//! let mut stage = 0;
//! let sum = loop {
//!     match step {
//!         Step::Send(out) => {
//!             for (i, msg) in out {
//!                 let c = &mut clients[i as usize];
//!                 let reply = match stage { 0 => c.share_keys(&msg), 1 => c.masked_input(&msg, &inputs[i as usize]), _ => c.unmask(&msg) };
//!                 server.receive(&reply.unwrap()).unwrap();
//!             }
//!             stage += 1;
//!             step = server.advance().unwrap();
//!         }
//!         Step::Done(result) => break result.sum,
//!     }
//! };
//! assert_eq!(sum, vec![111, 222, 333, 43]);
//! ```

pub mod client;
pub mod crypto;
pub mod graph;
pub mod server;
pub mod wire;

use serde::{Deserialize, Serialize};

/// Why a secure-aggregation step failed. A client that gets an error sends nothing more in the
/// round; a server that gets [`SecAggError::Abort`] reveals nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecAggError {
    /// A message that does not decode (bad magic, unknown version or type, bad lengths).
    #[error("malformed secure-aggregation message: {0}")]
    Malformed(String),
    /// A message of another round.
    #[error("the message is for another round")]
    WrongRound,
    /// A message for another stage than the current one (late, early or replayed).
    #[error("the message is for another stage of the round")]
    WrongStage,
    /// A client index that is not in the round, or a message about someone who is not a neighbour.
    #[error("client {0} is not part of this exchange")]
    UnknownClient(u32),
    /// The same client sent this stage's message twice.
    #[error("client {0} already sent this stage's message")]
    Duplicate(u32),
    /// A signature that does not verify with the client's enrolled key.
    #[error("the signature of client {0} does not verify")]
    BadSignature(u32),
    /// A public key that cannot be used (small order), or a signing seed that is not one.
    #[error("a key is not usable")]
    BadKey,
    /// A share sealed by `from` that does not open.
    #[error("the shares from client {from} do not open")]
    Decrypt {
        /// Its sender.
        from: u32,
    },
    /// Fewer shares than the threshold.
    #[error("{have} shares, {need} needed")]
    TooFewShares {
        /// Shares at hand.
        have: usize,
        /// The threshold.
        need: usize,
    },
    /// A request the protocol forbids: it would reveal a client's input (both kinds of share for
    /// one client, a second unmasking, survivors that were never alive, …).
    #[error("refused: {0}")]
    Refused(&'static str),
    /// A primitive failed (never expected with valid inputs).
    #[error("a cryptographic operation failed")]
    Crypto,
    /// The round cannot complete without revealing something: too few clients or neighbours
    /// survived. Nothing is unmasked.
    #[error("the round is aborted: {0}")]
    Abort(String),
    /// Parameters that do not describe a round (threshold above the degree, no clients, …).
    #[error("bad parameters: {0}")]
    Params(String),
}

/// A round's public parameters, the same for the server and every client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    /// The round's id (random, chosen by the server).
    pub round: [u8; 16],
    /// Clients selected for the round (indices 0..clients).
    pub clients: u32,
    /// Neighbours each client has besides itself (even; ≥ clients − 1 means everyone).
    pub degree: u32,
    /// Shares needed to rebuild a secret (among the degree + 1 a client hands out).
    pub threshold: u32,
    /// The fewest clients whose inputs may form the sum.
    pub min_survivors: u32,
    /// Words in each input.
    pub dim: u32,
}

/// The most clients a round takes, and the most words in an input.
pub const MAX_CLIENTS: u32 = 1 << 16;
/// See [`MAX_CLIENTS`].
pub const MAX_DIM: u32 = 1 << 24;

impl Params {
    /// Parameters for `clients` clients and inputs of `dim` words: degree 2·⌈1.5·log₂ n⌉ (30 for
    /// 1,000 clients, as Google's parameter finder gives for 5 % dropouts and 5 % corrupt
    /// clients), threshold a majority of the neighbourhood plus one, and at least half the
    /// clients (or `min_survivors` if larger) must survive.
    pub fn for_clients(round: [u8; 16], clients: u32, dim: u32, min_survivors: u32) -> Params {
        let log = f64::from(clients.max(2)).log2();
        let degree = (2 * (1.5 * log).ceil() as u32).min(if clients <= 1 { 0 } else { (clients - 1) + (clients - 1) % 2 });
        let size = degree.min(clients.saturating_sub(1)) + 1;
        let threshold = (size / 2 + 1).min(size).max(1);
        Params { round, clients, degree, threshold, min_survivors: min_survivors.max(clients / 2).max(1).min(clients), dim }
    }

    /// Checks the parameters describe a round.
    pub fn check(&self) -> Result<(), SecAggError> {
        let size = self.neighbourhood();
        let bad = |m: String| Err(SecAggError::Params(m));
        if self.clients == 0 || self.clients > MAX_CLIENTS {
            return bad(format!("{} clients (1 to {MAX_CLIENTS})", self.clients));
        }
        if self.dim == 0 || self.dim > MAX_DIM {
            return bad(format!("inputs of {} words (1 to {MAX_DIM})", self.dim));
        }
        if self.degree % 2 == 1 || size > 255 {
            return bad(format!("degree {} (even, at most 254 neighbours)", self.degree));
        }
        if self.threshold == 0 || self.threshold > size || (size > 1 && self.threshold < 2) {
            return bad(format!("threshold {} of {size} neighbours", self.threshold));
        }
        if self.min_survivors == 0 || self.min_survivors > self.clients {
            return bad(format!("{} survivors of {} clients", self.min_survivors, self.clients));
        }
        Ok(())
    }

    /// Neighbourhood size (the client included).
    pub fn neighbourhood(&self) -> u32 {
        self.degree.min(self.clients.saturating_sub(1)) + 1
    }

    /// The session id both sides bind every key and mask to: SHA-256 of the protocol name, the
    /// parameters and the graph seed.
    pub fn session_id(&self, graph_seed: &[u8; 32]) -> [u8; 32] {
        let mut b = b"hearth secagg+ v1".to_vec();
        b.extend_from_slice(&self.round);
        for v in [self.clients, self.degree, self.threshold, self.min_survivors, self.dim] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(graph_seed);
        let mut out = [0u8; 32];
        out.copy_from_slice(crate::codec::sha256(&b).as_ref());
        out
    }
}

/// The self-mask key of client `i` from its seed.
pub(crate) fn self_mask_key(sid: &[u8; 32], seed: &[u8; 32], i: u32) -> [u8; 32] {
    crypto::derive(sid, seed, &[b"hearth secagg+ v1 self mask", &i.to_le_bytes()])
}

/// The pairwise mask key of clients `a` and `b` from their agreed secret (symmetric in a, b).
pub(crate) fn pair_mask_key(sid: &[u8; 32], agreed: &[u8; 32], a: u32, b: u32) -> [u8; 32] {
    let (lo, hi) = (a.min(b), a.max(b));
    crypto::derive(sid, agreed, &[b"hearth secagg+ v1 pair mask", &lo.to_le_bytes(), &hi.to_le_bytes()])
}

/// The key two clients seal their shares to each other with.
pub(crate) fn share_key(sid: &[u8; 32], agreed: &[u8; 32], a: u32, b: u32) -> [u8; 32] {
    let (lo, hi) = (a.min(b), a.max(b));
    crypto::derive(sid, agreed, &[b"hearth secagg+ v1 share key", &lo.to_le_bytes(), &hi.to_le_bytes()])
}

/// The commitment to a self-mask seed a client signs at the share-keys stage: the server checks
/// the seed it rebuilds against it.
pub(crate) fn seed_commitment(sid: &[u8; 32], seed: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(crate::codec::sha256(&[b"hearth secagg+ v1 seed".as_slice(), sid, seed].concat()).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_parameters_check_and_grow_with_log_n() {
        for n in [1u32, 2, 3, 5, 10, 100, 1000, 10_000] {
            let p = Params::for_clients([0; 16], n, 8, 1);
            p.check().unwrap_or_else(|e| panic!("{n}: {e}"));
            assert!(p.threshold > p.neighbourhood() / 2 || p.neighbourhood() == 1, "{p:?}");
        }
        assert_eq!(Params::for_clients([0; 16], 1000, 8, 1).degree, 30);
        assert_eq!(Params::for_clients([0; 16], 100, 8, 1).degree, 20);
        let p = Params::for_clients([0; 16], 100, 8, 1);
        for bad in [
            Params { clients: 0, ..p.clone() },
            Params { dim: 0, ..p.clone() },
            Params { degree: 3, ..p.clone() },
            Params { threshold: 99, ..p.clone() },
            Params { threshold: 1, ..p.clone() },
            Params { min_survivors: 101, ..p.clone() },
        ] {
            assert!(matches!(bad.check(), Err(SecAggError::Params(_))), "{bad:?}");
        }
    }
}
