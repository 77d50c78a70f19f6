//! End-to-end encrypted sync of one person's history between their devices (sans-IO).
//!
//! Each replica keeps an automerge sync [`automerge::sync::State`] per other replica. Every
//! message that leaves a replica is an [`Envelope`]: `b"HRTHSYNC"` · version u8 (=1) · group id
//! (16 bytes) · nonce (12) · AES-256-GCM ciphertext of `sender id (16) · recipient id (16) ·
//! counter u64 · sender's epoch (number u64, id 8) · kind u8 · payload`, with the clear header as
//! associated data. The payload is an automerge sync message (kind 0) or, for a peer on an older
//! epoch (see [`crate::person::history`]'s compaction), the whole compacted document (kind 1), which
//! that peer [adopts](History::adopt) before syncing on as usual. A relay
//! stores and forwards envelopes by group id and learns nothing else: not the sender, not the
//! recipient, not the contents. Keys come from the group secret through HKDF-SHA256 (separate
//! labels for the group id and the message key). Messages for another group are refused before
//! decryption; replays (a counter not above the last one accepted from that sender) after it.
//!
//! A new device joins by pairing: it shows an offer (its X25519 public key: a QR payload), an
//! existing device answers with its own X25519 public key and the group secret sealed under the
//! agreed key; both show a six-digit code derived from the two public keys, which the person
//! compares to rule out a relay in the middle.

use std::collections::HashMap;

use automerge::sync::{Message, State};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::SystemRandom;
use ring::{agreement, digest, hkdf};

use crate::person::history::{Epoch, History};

/// Magic bytes of a sync envelope.
pub const SYNC_MAGIC: &[u8; 8] = b"HRTHSYNC";
/// Envelope version.
pub const SYNC_VERSION: u8 = 1;
/// Largest envelope accepted (16 MiB).
pub const MAX_ENVELOPE: usize = 16 << 20;
const HEADER: usize = 8 + 1 + 16 + NONCE_LEN;
const INNER: usize = 16 + 16 + 8 + 8 + 8 + 1;
const KIND_SYNC: u8 = 0;
const KIND_SNAPSHOT: u8 = 1;

/// A replica's id inside its group (random, not derived from anything about the person).
pub type ReplicaId = [u8; 16];

/// Why a sync step failed. Nothing is applied to the document on any error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// Not a sync envelope of a version this build reads.
    #[error("not a hearth sync envelope of a supported version")]
    BadFormat,
    /// Larger than [`MAX_ENVELOPE`].
    #[error("sync envelope of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// For another group.
    #[error("sync envelope is for another group")]
    WrongGroup,
    /// Does not decrypt under this group's key (tampered, truncated or forged).
    #[error("sync envelope does not authenticate")]
    Tampered,
    /// Already seen (or older than the last message accepted from its sender).
    #[error("sync envelope is a replay")]
    Replay,
    /// Decrypted, but the automerge message inside is malformed or refused.
    #[error("sync message rejected: {0}")]
    BadMessage(String),
    /// Pairing failed (bad offer or answer, or the key agreement failed).
    #[error("pairing failed")]
    Pairing,
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
}

fn random<const N: usize>() -> Result<[u8; N], SyncError> {
    crate::platform::random().map_err(|_| SyncError::Random)
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn hkdf32(secret: &[u8], label: &[u8]) -> [u8; 32] {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"hearth sync v1").extract(secret);
    let mut out = [0u8; 32];
    // Expanding 32 bytes from SHA-256 never fails (the limit is 255 * 32).
    if let Ok(okm) = prk.expand(&[label], Len(32)) {
        let _ = okm.fill(&mut out);
    }
    out
}

/// The secret shared by one person's devices, and the keys derived from it.
#[derive(Clone)]
pub struct Group {
    secret: [u8; 32],
    id: [u8; 16],
    key: [u8; 32],
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Group(..)")
    }
}

impl Group {
    /// A new group (on a person's first device).
    pub fn generate() -> Result<Group, SyncError> {
        Ok(Group::from_secret(random()?))
    }

    /// The group of a stored secret.
    pub fn from_secret(secret: [u8; 32]) -> Group {
        let id_bytes = hkdf32(&secret, b"group id");
        let id = std::array::from_fn(|i| id_bytes[i]);
        Group { secret, id, key: hkdf32(&secret, b"message key") }
    }

    /// The secret, for the device's key store.
    pub fn secret(&self) -> [u8; 32] {
        self.secret
    }

    /// The group id a relay files envelopes under (reveals nothing about the person).
    pub fn id(&self) -> [u8; 16] {
        self.id
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.key).unwrap_or_else(|_| unreachable!("32-byte key")))
    }

    fn seal(&self, inner: &[u8]) -> Result<Vec<u8>, SyncError> {
        let nonce: [u8; NONCE_LEN] = random()?;
        let mut out = Vec::with_capacity(HEADER + inner.len() + 16);
        out.extend_from_slice(SYNC_MAGIC);
        out.push(SYNC_VERSION);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        let mut body = inner.to_vec();
        self.aead()
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&out[..HEADER]), &mut body)
            .map_err(|_| SyncError::Tampered)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Seals `inner` (the plaintext layout in the module docs) as an envelope of this group.
    /// Replicas build their own; this is for tests and fuzzing of the receiving side.
    pub fn seal_raw(&self, inner: &[u8]) -> Result<Vec<u8>, SyncError> {
        self.seal(inner)
    }

    /// Checks and decrypts an envelope.
    pub fn open(&self, envelope: &[u8]) -> Result<Opened, SyncError> {
        if envelope.len() > MAX_ENVELOPE {
            return Err(SyncError::TooLarge(envelope.len()));
        }
        if envelope.len() < 9 || &envelope[..8] != SYNC_MAGIC || envelope[8] != SYNC_VERSION {
            return Err(SyncError::BadFormat);
        }
        if envelope.len() < HEADER + INNER + 16 {
            return Err(SyncError::Tampered);
        }
        if envelope[9..25] != self.id {
            return Err(SyncError::WrongGroup);
        }
        let nonce: [u8; NONCE_LEN] = std::array::from_fn(|i| envelope[25 + i]);
        let mut body = envelope[HEADER..].to_vec();
        let plain = self
            .aead()
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(&envelope[..HEADER]), &mut body)
            .map_err(|_| SyncError::Tampered)?;
        if plain.len() < INNER {
            return Err(SyncError::BadMessage("shorter than its header".into()));
        }
        let u64_at = |at: usize| u64::from_le_bytes(std::array::from_fn(|i| plain[at + i]));
        let snapshot = match plain[56] {
            KIND_SYNC => false,
            KIND_SNAPSHOT => true,
            k => return Err(SyncError::BadMessage(format!("unknown message kind {k}"))),
        };
        Ok(Opened {
            sender: std::array::from_fn(|i| plain[i]),
            recipient: std::array::from_fn(|i| plain[16 + i]),
            counter: u64_at(32),
            epoch: Epoch { number: u64_at(40), id: std::array::from_fn(|i| plain[48 + i]) },
            snapshot,
            payload: plain[INNER..].to_vec(),
        })
    }
}

/// A decrypted envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The replica that sent it.
    pub sender: ReplicaId,
    /// The replica it is for.
    pub recipient: ReplicaId,
    /// The sender's message counter (strictly increasing).
    pub counter: u64,
    /// The epoch of the sender's document.
    pub epoch: Epoch,
    /// Whether the payload is a whole document (else an automerge sync message).
    pub snapshot: bool,
    /// The payload.
    pub payload: Vec<u8>,
}

/// The group id of an envelope, for a relay to file it (no key needed).
pub fn envelope_group(envelope: &[u8]) -> Result<[u8; 16], SyncError> {
    if envelope.len() < HEADER || &envelope[..8] != SYNC_MAGIC || envelope[8] != SYNC_VERSION {
        return Err(SyncError::BadFormat);
    }
    Ok(std::array::from_fn(|i| envelope[9 + i]))
}

#[derive(Default)]
struct Peer {
    state: State,
    /// The peer is on an older epoch: send it our document.
    snapshot_due: bool,
    /// The peer's epoch as its last message gave it.
    seen: Epoch,
    /// (our epoch, the peer's) when we last sent it a snapshot: messages it sent before that
    /// snapshot reached it do not get a second one (the relay delivers in order).
    snapshot_sent: Option<(Epoch, Epoch)>,
}

/// One replica's sync endpoint: its id, the group, and per-peer automerge sync states.
pub struct Replica {
    group: Group,
    id: ReplicaId,
    counter: u64,
    peers: HashMap<ReplicaId, Peer>,
    last_seen: HashMap<ReplicaId, u64>,
    /// The epoch the sync states refer to.
    epoch: Epoch,
}

impl Replica {
    /// A new endpoint with a random id.
    pub fn new(group: Group) -> Result<Replica, SyncError> {
        Ok(Replica {
            group,
            id: random()?,
            counter: 0,
            peers: HashMap::new(),
            last_seen: HashMap::new(),
            epoch: Epoch::default(),
        })
    }

    /// Sync states describe one document: when the history moved to another epoch (compaction
    /// here, or adopting a snapshot), every peer starts over.
    fn follow_epoch(&mut self, history: &History) {
        let now = history.epoch();
        if now != self.epoch {
            for p in self.peers.values_mut() {
                p.state = State::default();
            }
            self.epoch = now;
        }
    }

    fn envelope(&mut self, peer: ReplicaId, kind: u8, payload: &[u8]) -> Result<Vec<u8>, SyncError> {
        self.counter += 1;
        let mut inner = Vec::with_capacity(INNER + payload.len());
        inner.extend_from_slice(&self.id);
        inner.extend_from_slice(&peer);
        inner.extend_from_slice(&self.counter.to_le_bytes());
        inner.extend_from_slice(&self.epoch.number.to_le_bytes());
        inner.extend_from_slice(&self.epoch.id);
        inner.push(kind);
        inner.extend_from_slice(payload);
        self.group.seal(&inner)
    }

    /// This replica's id.
    pub fn id(&self) -> ReplicaId {
        self.id
    }

    /// The next envelope for `peer`, if the doc has anything to tell it.
    pub fn outgoing(&mut self, history: &mut History, peer: ReplicaId) -> Result<Option<Vec<u8>>, SyncError> {
        self.follow_epoch(history);
        let p = self.peers.entry(peer).or_default();
        if p.snapshot_due {
            p.snapshot_due = false;
            p.snapshot_sent = Some((self.epoch, p.seen));
            p.state = State::default();
            let doc = history.save();
            return self.envelope(peer, KIND_SNAPSHOT, &doc).map(Some);
        }
        let Some(msg) = history.generate_sync_message(&mut p.state) else { return Ok(None) };
        self.envelope(peer, KIND_SYNC, &msg.encode()).map(Some)
    }

    /// Applies an envelope from the relay. `Ok(None)` when it is addressed to another replica
    /// (or is this replica's own); `Ok(Some(sender))` once handled. A message from a peer on an
    /// older epoch makes the next [`Replica::outgoing`] to it a snapshot; one from a newer epoch
    /// is applied only if it is that epoch's snapshot (else this replica announces its epoch so
    /// the peer sends one). Errors leave the document unchanged.
    pub fn incoming(&mut self, history: &mut History, envelope: &[u8]) -> Result<Option<ReplicaId>, SyncError> {
        let m = self.group.open(envelope)?;
        if m.recipient != self.id || m.sender == self.id {
            return Ok(None);
        }
        if self.last_seen.get(&m.sender).is_some_and(|&c| m.counter <= c) {
            return Err(SyncError::Replay);
        }
        self.follow_epoch(history);
        let bad = |e: &dyn std::fmt::Display| SyncError::BadMessage(e.to_string());
        match m.epoch.cmp(&self.epoch) {
            std::cmp::Ordering::Less => {
                let p = self.peers.entry(m.sender).or_default();
                p.seen = m.epoch;
                p.snapshot_due |= p.snapshot_sent != Some((self.epoch, m.epoch));
            }
            std::cmp::Ordering::Greater if m.snapshot => {
                let snapshot = History::load(&m.payload, history.device()).map_err(|e| bad(&e))?;
                if snapshot.epoch() != m.epoch {
                    return Err(SyncError::BadMessage("the snapshot is not of the epoch it claims".into()));
                }
                history.adopt_history(snapshot).map_err(|e| bad(&e))?;
                self.follow_epoch(history);
            }
            // Announce our epoch: a fresh state always yields a message.
            std::cmp::Ordering::Greater => self.peers.entry(m.sender).or_default().state = State::default(),
            std::cmp::Ordering::Equal if m.snapshot => {}
            std::cmp::Ordering::Equal => {
                let msg = Message::decode(&m.payload).map_err(|e| bad(&e))?;
                let p = self.peers.entry(m.sender).or_default();
                history.receive_sync_message(&mut p.state, msg).map_err(|e| bad(&e))?;
            }
        }
        self.last_seen.insert(m.sender, m.counter);
        Ok(Some(m.sender))
    }
}

/// The new device's side of pairing.
pub struct Pairing {
    private: agreement::EphemeralPrivateKey,
    public: [u8; 32],
}

/// Six-digit comparison code of a pairing, from both public keys.
fn code(offer: &[u8; 32], answer: &[u8; 32]) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"hearth pairing code");
    ctx.update(offer);
    ctx.update(answer);
    let d = ctx.finish();
    let n = u32::from_le_bytes([d.as_ref()[0], d.as_ref()[1], d.as_ref()[2], d.as_ref()[3]]) % 1_000_000;
    format!("{n:06}")
}

fn wrap_key(shared: &[u8], offer: &[u8; 32], answer: &[u8; 32]) -> LessSafeKey {
    let mut label = b"pairing wrap".to_vec();
    label.extend_from_slice(offer);
    label.extend_from_slice(answer);
    let k = hkdf32(shared, &label);
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k).unwrap_or_else(|_| unreachable!("32-byte key")))
}

impl Pairing {
    /// Starts pairing on the new device; the offer (33 bytes: version, public key) goes to the
    /// existing device, e.g. as a QR code.
    pub fn start() -> Result<(Pairing, Vec<u8>), SyncError> {
        let rng = SystemRandom::new();
        let private = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng).map_err(|_| SyncError::Random)?;
        let pk = private.compute_public_key().map_err(|_| SyncError::Pairing)?;
        let public: [u8; 32] = pk.as_ref().try_into().map_err(|_| SyncError::Pairing)?;
        let mut offer = vec![1u8];
        offer.extend_from_slice(&public);
        Ok((Pairing { private, public }, offer))
    }

    /// Finishes pairing with the existing device's answer: the group and the comparison code.
    pub fn finish(self, answer: &[u8]) -> Result<(Group, String), SyncError> {
        if answer.len() != 1 + 32 + 32 + 16 || answer[0] != 1 {
            return Err(SyncError::Pairing);
        }
        let their: [u8; 32] = std::array::from_fn(|i| answer[1 + i]);
        let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, their);
        let offer = self.public;
        let key = agreement::agree_ephemeral(self.private, &peer, |s| wrap_key(s, &offer, &their)).map_err(|_| SyncError::Pairing)?;
        let mut body = answer[33..].to_vec();
        let secret = key.open_in_place(Nonce::assume_unique_for_key([0; NONCE_LEN]), Aad::empty(), &mut body).map_err(|_| SyncError::Pairing)?;
        let secret: [u8; 32] = secret.try_into().map_err(|_| SyncError::Pairing)?;
        Ok((Group::from_secret(secret), code(&offer, &their)))
    }
}

/// The existing device's side: answers an offer with the group secret sealed for the new
/// device; returns the answer and the comparison code to show.
pub fn answer(group: &Group, offer: &[u8]) -> Result<(Vec<u8>, String), SyncError> {
    if offer.len() != 33 || offer[0] != 1 {
        return Err(SyncError::Pairing);
    }
    let theirs: [u8; 32] = std::array::from_fn(|i| offer[1 + i]);
    let rng = SystemRandom::new();
    let private = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng).map_err(|_| SyncError::Random)?;
    let pk = private.compute_public_key().map_err(|_| SyncError::Pairing)?;
    let mine: [u8; 32] = pk.as_ref().try_into().map_err(|_| SyncError::Pairing)?;
    let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, theirs);
    let key = agreement::agree_ephemeral(private, &peer, |s| wrap_key(s, &theirs, &mine)).map_err(|_| SyncError::Pairing)?;
    let mut body = group.secret.to_vec();
    // The wrap key is fresh for every pairing (ephemeral keys on both sides): a zero nonce is
    // used exactly once per key.
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key([0; NONCE_LEN]), Aad::empty(), &mut body)
        .map_err(|_| SyncError::Pairing)?;
    let mut out = vec![1u8];
    out.extend_from_slice(&mine);
    out.extend_from_slice(&body);
    Ok((out, code(&theirs, &mine)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::person::history::Kind;

    #[test]
    fn pairing_shares_the_group_and_both_sides_show_one_code() {
        let group = Group::generate().unwrap();
        let (pairing, offer) = Pairing::start().unwrap();
        let (reply, code_a) = answer(&group, &offer).unwrap();
        let (joined, code_b) = pairing.finish(&reply).unwrap();
        assert_eq!(joined.id(), group.id());
        assert_eq!(code_a, code_b);
        assert_eq!(code_a.len(), 6);
        // A tampered answer fails.
        let (pairing, offer) = Pairing::start().unwrap();
        let (mut reply, _) = answer(&group, &offer).unwrap();
        reply[40] ^= 1;
        assert_eq!(pairing.finish(&reply).err(), Some(SyncError::Pairing));
        assert_eq!(answer(&group, b"short").err(), Some(SyncError::Pairing));
    }

    #[test]
    fn two_replicas_sync_and_refuse_replays_and_other_groups() {
        let group = Group::generate().unwrap();
        let (mut a, mut b) = (History::new("a"), History::empty("b"));
        let (mut ra, mut rb) = (Replica::new(group.clone()).unwrap(), Replica::new(group.clone()).unwrap());
        a.record("m1", Kind::Play, 1, None, &[]).unwrap();
        let mut log = vec![];
        for _ in 0..10 {
            let mut quiet = true;
            if let Some(m) = ra.outgoing(&mut a, rb.id()).unwrap() {
                log.push(m.clone());
                rb.incoming(&mut b, &m).unwrap();
                quiet = false;
            }
            if let Some(m) = rb.outgoing(&mut b, ra.id()).unwrap() {
                ra.incoming(&mut a, &m).unwrap();
                quiet = false;
            }
            if quiet {
                break;
            }
        }
        assert_eq!(b.events(), a.events());
        b.check_format().unwrap();
        assert_eq!(rb.incoming(&mut b, &log[0]), Err(SyncError::Replay));
        let other = Replica::new(Group::generate().unwrap()).unwrap();
        let mut c = History::empty("c");
        let mut other = other;
        assert_eq!(other.incoming(&mut c, &log[0]), Err(SyncError::WrongGroup));
        let mut cut = log[0].clone();
        cut.truncate(cut.len() - 1);
        assert_eq!(rb.incoming(&mut b, &cut), Err(SyncError::Tampered));
        assert_eq!(rb.incoming(&mut b, b"HRTHSYNC\x02"), Err(SyncError::BadFormat));
        assert_eq!(envelope_group(&log[0]).unwrap(), group.id());
    }

    fn run(pairs: &mut [(&mut History, &mut Replica)]) -> usize {
        let ids: Vec<ReplicaId> = pairs.iter().map(|(_, r)| r.id()).collect();
        let mut snapshots = 0;
        for round in 0..50 {
            let mut out = vec![];
            for (h, r) in pairs.iter_mut() {
                for &p in &ids {
                    if p != r.id()
                        && let Some(m) = r.outgoing(h, p).unwrap()
                    {
                        out.push(m);
                    }
                }
            }
            if out.is_empty() {
                return snapshots;
            }
            for m in &out {
                snapshots += usize::from(group_of(pairs).open(m).unwrap().snapshot);
                for (h, r) in pairs.iter_mut() {
                    r.incoming(h, m).unwrap();
                }
            }
            assert!(round < 49, "no quiescence");
        }
        snapshots
    }

    fn group_of(pairs: &[(&mut History, &mut Replica)]) -> Group {
        pairs[0].1.group.clone()
    }

    #[test]
    fn compaction_reaches_peers_as_a_snapshot_and_keeps_their_offline_edits() {
        let group = Group::generate().unwrap();
        let (mut a, mut b) = (History::new("a"), History::empty("b"));
        let (mut ra, mut rb) = (Replica::new(group.clone()).unwrap(), Replica::new(group.clone()).unwrap());
        for i in 0..40 {
            a.record(&format!("m{}", i % 4), Kind::Play, i, None, &[]).unwrap();
        }
        assert_eq!(run(&mut [(&mut a, &mut ra), (&mut b, &mut rb)]), 1, "the empty replica gets one snapshot");
        assert_eq!(b.epoch(), a.epoch());
        // Offline: b records and forgets, a compacts.
        b.record("m9", Kind::Like, 50, None, &[]).unwrap();
        b.forget("m0", 51).unwrap();
        a.compact(2).unwrap();
        run(&mut [(&mut a, &mut ra), (&mut b, &mut rb)]);
        assert_eq!(a.epoch(), b.epoch());
        assert_eq!(a.items(), b.items());
        let items: Vec<String> = a.items().into_iter().map(|s| s.item).collect();
        assert_eq!(items, ["m1", "m2", "m3", "m9"]);
        // More edits sync as ordinary messages.
        a.record("m5", Kind::Add, 60, None, &[]).unwrap();
        assert_eq!(run(&mut [(&mut a, &mut ra), (&mut b, &mut rb)]), 0);
        assert_eq!(b.items().len(), 5);

        // A snapshot that is not a history, or not of the epoch it claims, changes nothing.
        let before = b.items();
        let (from, to, epoch) = (ra.id, rb.id, b.epoch().number);
        let newer = |n: u64, payload: &[u8], _: &mut Replica| {
            let mut inner = from.to_vec();
            inner.extend_from_slice(&to);
            inner.extend_from_slice(&(1000 + n).to_le_bytes());
            inner.extend_from_slice(&(epoch + n).to_le_bytes());
            inner.extend_from_slice(&[9; 8]);
            inner.push(KIND_SNAPSHOT);
            inner.extend_from_slice(payload);
            group.seal_raw(&inner).unwrap()
        };
        let garbage = newer(1, b"not a document", &mut ra);
        assert!(matches!(rb.incoming(&mut b, &garbage), Err(SyncError::BadMessage(_))));
        let mislabelled = newer(2, &a.save(), &mut ra);
        assert!(matches!(rb.incoming(&mut b, &mislabelled), Err(SyncError::BadMessage(_))));
        assert_eq!(b.items(), before);
    }
}
