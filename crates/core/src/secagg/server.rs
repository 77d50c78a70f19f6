//! The server side of SecAgg+ as a sans-IO state machine: [`Server::receive`] takes each
//! client's signed message for the current stage (refusing late, early, replayed, unsigned or
//! foreign ones without changing anything), and [`Server::advance`] closes the stage (its
//! deadline passed, or everyone answered) and says what to send next, or gives the sum.
//!
//! Before it asks anyone to unmask, the server checks that every secret it will need has at
//! least `threshold` holders among the survivors; otherwise the round aborts and no share is ever
//! requested. For each client it asks only for one kind of share — of the self-mask seed if the
//! client's masked input is in the sum, of its mask key if it dropped after sharing keys — so it
//! never holds both for anyone ([`Server::both_kinds_held`] is how tests check it).

use std::collections::{BTreeMap, BTreeSet};

use super::crypto::{self, Share};
use super::graph::Graph;
use super::wire::{self, Advertise, MaskedInputRequest, Message, Neighbour, ShareKeysRequest, Signed, UnmaskRequest};
use super::{Params, SecAggError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Advertise,
    ShareKeys,
    MaskedInput,
    Unmask,
    Done,
    Aborted,
}

/// What the server does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send each (client index, message).
    Send(Vec<(u32, Vec<u8>)>),
    /// The round is complete.
    Done(Outcome),
}

/// A completed round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The sum modulo 2³² of the survivors' inputs.
    pub sum: Vec<u32>,
    /// The clients whose inputs are in it.
    pub survivors: Vec<u32>,
    /// Clients that shared keys but sent no masked input (their masks were removed).
    pub dropped: Vec<u32>,
}

/// The server of one round.
pub struct Server {
    params: Params,
    graph_seed: [u8; 32],
    graph: Graph,
    sid: [u8; 32],
    verifying_keys: Vec<[u8; 32]>,
    stage: Stage,
    adverts: BTreeMap<u32, (Vec<u8>, Advertise)>,
    commitments: BTreeMap<u32, [u8; 32]>,
    /// Sender → recipients it sealed shares to.
    sealed_by: BTreeMap<u32, BTreeSet<u32>>,
    /// Recipient → (sender, sealed shares).
    sealed_to: BTreeMap<u32, Vec<(u32, Vec<u8>)>>,
    inputs: BTreeSet<u32>,
    sum: Vec<u32>,
    asked: BTreeMap<u32, UnmaskRequest>,
    answered: BTreeSet<u32>,
    seed_shares: BTreeMap<u32, Vec<Share>>,
    key_shares: BTreeMap<u32, Vec<Share>>,
}

impl Server {
    /// The server of the round `params` describes, for clients whose enrolled Ed25519 keys are
    /// `verifying_keys` (by index), with the neighbour graph drawn from `graph_seed` (from the
    /// server's CSPRNG).
    pub fn new(params: Params, verifying_keys: Vec<[u8; 32]>, graph_seed: [u8; 32]) -> Result<Server, SecAggError> {
        params.check()?;
        if verifying_keys.len() != params.clients as usize {
            return Err(SecAggError::Params(format!("{} keys for {} clients", verifying_keys.len(), params.clients)));
        }
        Ok(Server {
            graph: Graph::new(params.clients, params.degree, graph_seed),
            sid: params.session_id(&graph_seed),
            sum: vec![0; params.dim as usize],
            params,
            graph_seed,
            verifying_keys,
            stage: Stage::Advertise,
            adverts: BTreeMap::new(),
            commitments: BTreeMap::new(),
            sealed_by: BTreeMap::new(),
            sealed_to: BTreeMap::new(),
            inputs: BTreeSet::new(),
            asked: BTreeMap::new(),
            answered: BTreeSet::new(),
            seed_shares: BTreeMap::new(),
            key_shares: BTreeMap::new(),
        })
    }

    /// The round's parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Owners for whom the server holds both kinds of share (always empty: the protocol's core
    /// rule; tests assert it).
    pub fn both_kinds_held(&self) -> Vec<u32> {
        self.seed_shares.keys().filter(|u| self.key_shares.get(u).is_some_and(|v| !v.is_empty())).copied().collect()
    }

    /// Clients whose masked input has been accepted so far.
    pub fn inputs_received(&self) -> usize {
        self.inputs.len()
    }

    /// Takes one client message for the current stage. Any error leaves the state unchanged.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<(), SecAggError> {
        let d = wire::decode(bytes)?;
        let (round, index, stage) = match &d.message {
            Message::Advertise(m) => (m.round, m.index, Stage::Advertise),
            Message::ShareKeys(m) => (m.round, m.index, Stage::ShareKeys),
            Message::MaskedInput(m) => (m.round, m.index, Stage::MaskedInput),
            Message::Unmask(m) => (m.round, m.index, Stage::Unmask),
            _ => return Err(SecAggError::Malformed("a server message sent to the server".into())),
        };
        if round != self.params.round {
            return Err(SecAggError::WrongRound);
        }
        let Some(key) = self.verifying_keys.get(index as usize) else { return Err(SecAggError::UnknownClient(index)) };
        if !d.verify(key) {
            return Err(SecAggError::BadSignature(index));
        }
        if stage != self.stage {
            return Err(SecAggError::WrongStage);
        }
        match d.message {
            Message::Advertise(m) => {
                if self.adverts.contains_key(&index) {
                    return Err(SecAggError::Duplicate(index));
                }
                self.adverts.insert(index, (bytes.to_vec(), m));
            }
            Message::ShareKeys(m) => {
                if !self.adverts.contains_key(&index) {
                    return Err(SecAggError::UnknownClient(index));
                }
                if self.sealed_by.contains_key(&index) {
                    return Err(SecAggError::Duplicate(index));
                }
                let mut to = BTreeSet::new();
                for (dst, _) in &m.sealed {
                    if *dst == index || !self.adverts.contains_key(dst) || !self.graph.adjacent(index, *dst) || !to.insert(*dst) {
                        return Err(SecAggError::UnknownClient(*dst));
                    }
                }
                for (dst, sealed) in m.sealed {
                    self.sealed_to.entry(dst).or_default().push((index, sealed));
                }
                self.sealed_by.insert(index, to);
                self.commitments.insert(index, m.commitment);
            }
            Message::MaskedInput(m) => {
                if !self.sealed_by.contains_key(&index) {
                    return Err(SecAggError::UnknownClient(index));
                }
                if self.inputs.contains(&index) {
                    return Err(SecAggError::Duplicate(index));
                }
                if m.words.len() != self.params.dim as usize {
                    return Err(SecAggError::Malformed(format!("{} words, the round sums {}", m.words.len(), self.params.dim)));
                }
                for (s, w) in self.sum.iter_mut().zip(&m.words) {
                    *s = s.wrapping_add(*w);
                }
                self.inputs.insert(index);
            }
            Message::Unmask(m) => {
                let Some(req) = self.asked.get(&index) else { return Err(SecAggError::UnknownClient(index)) };
                if self.answered.contains(&index) {
                    return Err(SecAggError::Duplicate(index));
                }
                // Exactly the shares asked for: never another kind, never another client's.
                let owners = |v: &[(u32, Share)]| v.iter().map(|(u, _)| *u).collect::<Vec<_>>();
                if owners(&m.seed_shares) != req.survivors || owners(&m.key_shares) != req.dropped {
                    return Err(SecAggError::Refused("shares other than those asked for"));
                }
                for (u, s) in m.seed_shares {
                    self.seed_shares.entry(u).or_default().push(s);
                }
                for (u, s) in m.key_shares {
                    self.key_shares.entry(u).or_default().push(s);
                }
                self.answered.insert(index);
            }
            _ => unreachable!("server messages were refused above"),
        }
        Ok(())
    }

    fn abort(&mut self, why: String) -> SecAggError {
        self.stage = Stage::Aborted;
        SecAggError::Abort(why)
    }

    /// Closes the current stage: the messages to send for the next one, or the sum. An abort
    /// (too few clients or holders of a needed secret) ends the round with nothing revealed.
    pub fn advance(&mut self) -> Result<Step, SecAggError> {
        let min = self.params.min_survivors as usize;
        let t = self.params.threshold as usize;
        match self.stage {
            Stage::Advertise => {
                if self.adverts.len() < min {
                    return Err(self.abort(format!("{} clients advertised keys, {min} needed", self.adverts.len())));
                }
                let out = self
                    .adverts
                    .keys()
                    .map(|&c| {
                        let neighbours = self
                            .graph
                            .neighbours(c)
                            .into_iter()
                            .map(|n| Neighbour { index: n, verifying_key: self.verifying_keys[n as usize], advert: self.adverts.get(&n).map(|(raw, _)| raw.clone()) })
                            .collect();
                        (c, ShareKeysRequest { params: self.params.clone(), graph_seed: self.graph_seed, neighbours }.encode())
                    })
                    .collect();
                self.stage = Stage::ShareKeys;
                Ok(Step::Send(out))
            }
            Stage::ShareKeys => {
                if self.sealed_by.len() < min {
                    return Err(self.abort(format!("{} clients shared keys, {min} needed", self.sealed_by.len())));
                }
                let out = self
                    .sealed_by
                    .keys()
                    .map(|&c| {
                        let sealed = self.sealed_to.get(&c).cloned().unwrap_or_default();
                        (c, MaskedInputRequest { round: self.params.round, sealed }.encode())
                    })
                    .collect();
                self.stage = Stage::MaskedInput;
                Ok(Step::Send(out))
            }
            Stage::MaskedInput => {
                if self.inputs.len() < min {
                    return Err(self.abort(format!("{} masked inputs, {min} needed", self.inputs.len())));
                }
                // Who holds shares of `u` and will be asked: survivors u sealed to, and u itself.
                let holders = |u: u32| -> usize {
                    self.inputs.iter().filter(|&&v| v == u || self.sealed_by.get(&u).is_some_and(|to| to.contains(&v))).count()
                };
                for &u in self.sealed_by.keys() {
                    // A dropped client matters only if a survivor's input carries a mask with it.
                    let needed = self.inputs.contains(&u) || self.sealed_by[&u].iter().any(|v| self.inputs.contains(v));
                    if needed && holders(u) < t {
                        return Err(self.abort(format!("client {u}'s secret has {} holders among the survivors, {t} needed", holders(u))));
                    }
                }
                let mut out = vec![];
                for &v in &self.inputs {
                    let holds = |u: &u32| *u == v || self.sealed_by.get(u).is_some_and(|to| to.contains(&v));
                    let mine: Vec<u32> = self.graph.neighbours(v).into_iter().filter(|u| self.sealed_by.contains_key(u) && holds(u)).collect();
                    let (mut survivors, mut dropped): (Vec<u32>, Vec<u32>) = mine.into_iter().partition(|u| self.inputs.contains(u));
                    survivors.sort_unstable();
                    dropped.sort_unstable();
                    let req = UnmaskRequest { round: self.params.round, survivors, dropped };
                    out.push((v, req.encode()));
                    self.asked.insert(v, req);
                }
                self.stage = Stage::Unmask;
                Ok(Step::Send(out))
            }
            Stage::Unmask => {
                let outcome = self.unmask().map_err(|e| self.abort(e.to_string()))?;
                self.stage = Stage::Done;
                Ok(Step::Done(outcome))
            }
            Stage::Done | Stage::Aborted => Err(SecAggError::WrongStage),
        }
    }

    /// Rebuilds the survivors' self-mask seeds and the dropped clients' mask keys, and removes
    /// the masks that did not cancel.
    fn unmask(&self) -> Result<Outcome, SecAggError> {
        let t = self.params.threshold as usize;
        let mut sum = self.sum.clone();
        for &u in &self.inputs {
            let shares = self.seed_shares.get(&u).map(Vec::as_slice).unwrap_or_default();
            let seed = crypto::combine(shares, t)?;
            if self.commitments.get(&u) != Some(&super::seed_commitment(&self.sid, &seed)) {
                return Err(SecAggError::Refused("a rebuilt self-mask seed does not match its commitment"));
            }
            crypto::apply_mask(&mut sum, &super::self_mask_key(&self.sid, &seed, u), false);
        }
        let mut dropped = vec![];
        for (&u, to) in &self.sealed_by {
            let masked_with: Vec<u32> = to.iter().copied().filter(|v| self.inputs.contains(v)).collect();
            if self.inputs.contains(&u) || masked_with.is_empty() {
                continue;
            }
            dropped.push(u);
            let shares = self.key_shares.get(&u).map(Vec::as_slice).unwrap_or_default();
            let secret = crypto::combine(shares, t)?;
            let (_, advert) = &self.adverts[&u];
            if crypto::public_key(&secret) != advert.mask_key {
                return Err(SecAggError::Refused("a rebuilt mask key does not match its public key"));
            }
            for v in masked_with {
                let key = super::pair_mask_key(&self.sid, &crypto::agree(&secret, &self.adverts[&v].1.mask_key)?, u, v);
                // v added the mask if v < u, subtracted it otherwise: undo that.
                crypto::apply_mask(&mut sum, &key, v > u);
            }
        }
        Ok(Outcome { sum, survivors: self.inputs.iter().copied().collect(), dropped })
    }
}
