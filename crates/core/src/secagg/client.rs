//! The client side of SecAgg+: one device's state through a round, as a sans-IO state machine.
//! Each method takes the server's message (bytes) and returns this client's signed answer, or an
//! error after which the client sends nothing more in the round. The input enters only at the
//! masked-input stage and leaves only masked.

use std::collections::{BTreeMap, BTreeSet};

use rand::{RngCore, SeedableRng};

use super::crypto::{self, SHARE_BYTES, Share};
use super::graph::Graph;
use super::wire::{self, Advertise, MaskedInput, Message, ShareKeys, Signed, Unmask};
use super::{Params, SecAggError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Advertised,
    SharedKeys,
    SentInput,
    Done,
}

/// One client in one round.
pub struct Client {
    params: Params,
    index: u32,
    signer: ring::signature::Ed25519KeyPair,
    rng: rand_chacha::ChaCha20Rng,
    seal_secret: [u8; 32],
    mask_secret: [u8; 32],
    stage: Stage,
    sid: [u8; 32],
    graph: Option<Graph>,
    /// Neighbours' (seal, mask) public keys, for those that advertised keys (self included).
    keys: BTreeMap<u32, ([u8; 32], [u8; 32])>,
    self_seed: [u8; 32],
    own: Option<(Share, Share)>,
    /// Shares held for each neighbour that sealed them to this client (self included): the
    /// neighbours this client's masked input includes pairwise masks with.
    held: BTreeMap<u32, (Share, Share)>,
}

fn random32(rng: &mut rand_chacha::ChaCha20Rng) -> [u8; 32] {
    let mut b = [0u8; 32];
    rng.fill_bytes(&mut b);
    b
}

impl Client {
    /// A client with index `index` in the round `params` describes, signing with the Ed25519 key
    /// of `signing_seed` (its enrolled key) and drawing every secret from a ChaCha20 stream
    /// seeded with `rng_seed` (from the platform's CSPRNG). Returns the client and its first
    /// message (its advertised keys).
    pub fn new(params: Params, index: u32, signing_seed: [u8; 32], rng_seed: [u8; 32]) -> Result<(Client, Vec<u8>), SecAggError> {
        params.check()?;
        if index >= params.clients {
            return Err(SecAggError::UnknownClient(index));
        }
        let (signer, _) = crypto::signing_key(&signing_seed)?;
        let mut rng = rand_chacha::ChaCha20Rng::from_seed(rng_seed);
        let (seal_secret, mask_secret) = (random32(&mut rng), random32(&mut rng));
        let advert = Advertise { round: params.round, index, seal_key: crypto::public_key(&seal_secret), mask_key: crypto::public_key(&mask_secret) };
        let msg = advert.encode(&signer);
        let client = Client {
            params,
            index,
            signer,
            rng,
            seal_secret,
            mask_secret,
            stage: Stage::Advertised,
            sid: [0; 32],
            graph: None,
            keys: BTreeMap::new(),
            self_seed: [0; 32],
            own: None,
            held: BTreeMap::new(),
        };
        Ok((client, msg))
    }

    /// This client's index.
    pub fn index(&self) -> u32 {
        self.index
    }

    fn expect(&self, stage: Stage) -> Result<(), SecAggError> {
        if self.stage == stage { Ok(()) } else { Err(SecAggError::WrongStage) }
    }

    fn graph(&self) -> Result<&Graph, SecAggError> {
        self.graph.as_ref().ok_or(SecAggError::WrongStage)
    }

    /// Stage 2: checks the neighbours' signed keys, and seals to each a share of this client's
    /// self-mask seed and of its mask key.
    pub fn share_keys(&mut self, request: &[u8]) -> Result<Vec<u8>, SecAggError> {
        self.expect(Stage::Advertised)?;
        let Message::ShareKeysRequest(req) = wire::decode(request)?.message else { return Err(SecAggError::WrongStage) };
        if req.params.round != self.params.round {
            return Err(SecAggError::WrongRound);
        }
        if req.params != self.params {
            return Err(SecAggError::Refused("the round's parameters changed"));
        }
        let graph = Graph::new(self.params.clients, self.params.degree, req.graph_seed);
        let expected = graph.neighbours(self.index);
        if req.neighbours.iter().map(|n| n.index).collect::<Vec<_>>() != expected {
            return Err(SecAggError::Refused("the neighbours are not the round's graph"));
        }
        let mut keys = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for n in &req.neighbours {
            let Some(bytes) = &n.advert else { continue };
            let d = wire::decode(bytes)?;
            let Message::Advertise(a) = &d.message else { return Err(SecAggError::Malformed("a neighbour's keys are not an advertisement".into())) };
            if a.round != self.params.round {
                return Err(SecAggError::WrongRound);
            }
            if a.index != n.index || !d.verify(&n.verifying_key) {
                return Err(SecAggError::BadSignature(n.index));
            }
            if !seen.insert(a.seal_key) || !seen.insert(a.mask_key) {
                return Err(SecAggError::Refused("two neighbours advertised the same key"));
            }
            keys.insert(n.index, (a.seal_key, a.mask_key));
        }
        let mine = (crypto::public_key(&self.seal_secret), crypto::public_key(&self.mask_secret));
        if keys.get(&self.index) != Some(&mine) {
            return Err(SecAggError::Refused("this client's own keys are missing or altered"));
        }
        let t = self.params.threshold as usize;
        if keys.len() < t {
            return Err(SecAggError::Abort(format!("{} of this client's neighbours are alive, {t} needed", keys.len())));
        }
        self.sid = self.params.session_id(&req.graph_seed);
        self.self_seed = random32(&mut self.rng);
        let size = expected.len();
        let seed_shares = crypto::split(&self.self_seed, t, size, random32(&mut self.rng))?;
        let key_shares = crypto::split(&self.mask_secret, t, size, random32(&mut self.rng))?;
        let mut sealed = Vec::with_capacity(keys.len());
        for (place, &j) in expected.iter().enumerate() {
            let pair = (seed_shares[place], key_shares[place]);
            if j == self.index {
                self.own = Some(pair);
                continue;
            }
            let Some((seal_key, _)) = keys.get(&j) else { continue };
            let key = super::share_key(&self.sid, &crypto::agree(&self.seal_secret, seal_key)?, self.index, j);
            let plain = [pair.0.as_slice(), &pair.1].concat();
            sealed.push((j, crypto::seal(&key, &self.sid, self.index, j, &plain)?));
        }
        let msg = ShareKeys { round: self.params.round, index: self.index, commitment: super::seed_commitment(&self.sid, &self.self_seed), sealed };
        self.keys = keys;
        self.graph = Some(graph);
        self.stage = Stage::SharedKeys;
        Ok(msg.encode(&self.signer))
    }

    /// Stage 3: opens the shares sealed to this client and sends `input` (`dim` words) masked:
    /// plus the self mask, plus or minus a pairwise mask with every neighbour that shared keys.
    pub fn masked_input(&mut self, request: &[u8], input: &[u32]) -> Result<Vec<u8>, SecAggError> {
        self.expect(Stage::SharedKeys)?;
        let Message::MaskedInputRequest(req) = wire::decode(request)?.message else { return Err(SecAggError::WrongStage) };
        if req.round != self.params.round {
            return Err(SecAggError::WrongRound);
        }
        if input.len() != self.params.dim as usize {
            return Err(SecAggError::Params(format!("an input of {} words, the round sums {}", input.len(), self.params.dim)));
        }
        let graph = self.graph()?;
        let mut held = BTreeMap::new();
        for (src, sealed) in &req.sealed {
            let src = *src;
            let Some((seal_key, _)) = self.keys.get(&src).filter(|_| src != self.index) else { return Err(SecAggError::UnknownClient(src)) };
            if held.contains_key(&src) {
                return Err(SecAggError::Duplicate(src));
            }
            let key = super::share_key(&self.sid, &crypto::agree(&self.seal_secret, seal_key)?, src, self.index);
            let plain = crypto::open(&key, &self.sid, src, self.index, sealed)?;
            // The shares are at this client's place in the sender's neighbour list.
            let place = graph.neighbours(src).iter().position(|&n| n == self.index).ok_or(SecAggError::UnknownClient(src))?;
            if plain.len() != 2 * SHARE_BYTES || plain[0] as usize != place + 1 || plain[SHARE_BYTES] as usize != place + 1 {
                return Err(SecAggError::Decrypt { from: src });
            }
            let mut a = [0u8; SHARE_BYTES];
            let mut b = [0u8; SHARE_BYTES];
            a.copy_from_slice(&plain[..SHARE_BYTES]);
            b.copy_from_slice(&plain[SHARE_BYTES..]);
            held.insert(src, (a, b));
        }
        held.insert(self.index, self.own.ok_or(SecAggError::WrongStage)?);
        let t = self.params.threshold as usize;
        if held.len() < t {
            return Err(SecAggError::Abort(format!("{} of this client's neighbours shared keys, {t} needed", held.len())));
        }
        let mut words = input.to_vec();
        crypto::apply_mask(&mut words, &super::self_mask_key(&self.sid, &self.self_seed, self.index), true);
        for &j in held.keys().filter(|&&j| j != self.index) {
            let (_, mask_key) = self.keys[&j];
            let key = super::pair_mask_key(&self.sid, &crypto::agree(&self.mask_secret, &mask_key)?, self.index, j);
            crypto::apply_mask(&mut words, &key, self.index < j);
        }
        self.held = held;
        self.stage = Stage::SentInput;
        Ok(MaskedInput { round: self.params.round, index: self.index, words }.encode(&self.signer))
    }

    /// Stage 4: for each neighbour the server names, the one share it may have: of the self-mask
    /// seed of a survivor, of the mask key of one that dropped. Answered once; a request that
    /// names this client as dropped, a client in both lists, or one that never shared keys with
    /// this client is refused (it could reveal an input).
    pub fn unmask(&mut self, request: &[u8]) -> Result<Vec<u8>, SecAggError> {
        if self.stage == Stage::Done {
            return Err(SecAggError::Refused("this client already answered the unmasking"));
        }
        self.expect(Stage::SentInput)?;
        let Message::UnmaskRequest(req) = wire::decode(request)?.message else { return Err(SecAggError::WrongStage) };
        if req.round != self.params.round {
            return Err(SecAggError::WrongRound);
        }
        let survivors: BTreeSet<u32> = req.survivors.iter().copied().collect();
        let dropped: BTreeSet<u32> = req.dropped.iter().copied().collect();
        if survivors.len() != req.survivors.len() || dropped.len() != req.dropped.len() {
            return Err(SecAggError::Refused("a client is named twice"));
        }
        if !survivors.is_disjoint(&dropped) {
            return Err(SecAggError::Refused("a client is named both as a survivor and as dropped"));
        }
        if !survivors.contains(&self.index) {
            return Err(SecAggError::Refused("this client's own input is in the sum, so it is a survivor"));
        }
        if let Some(&u) = survivors.iter().chain(&dropped).find(|u| !self.held.contains_key(u)) {
            return Err(SecAggError::UnknownClient(u));
        }
        let t = self.params.threshold as usize;
        if survivors.len() < t {
            return Err(SecAggError::Refused("fewer survivors than the threshold"));
        }
        let msg = Unmask {
            round: self.params.round,
            index: self.index,
            seed_shares: survivors.iter().map(|&u| (u, self.held[&u].0)).collect(),
            key_shares: dropped.iter().map(|&u| (u, self.held[&u].1)).collect(),
        };
        self.stage = Stage::Done;
        Ok(msg.encode(&self.signer))
    }
}
