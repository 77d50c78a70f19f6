//! Secure aggregation's wire messages: `HRTHSAGG`, a version byte, a type byte, the round id,
//! then the message's fields; a client's messages end with its Ed25519 signature over everything
//! before it. Every count is checked against the bytes that remain before anything is allocated,
//! and [`decode`] never panics (fuzzed: `crates/core/fuzz`, `secagg_decode`).

use super::crypto::{SHARE_BYTES, SIGNATURE_BYTES, Share};
use super::{Params, SecAggError};
use crate::codec::{CodecError, Reader, Writer};

/// The magic every message starts with.
pub const MAGIC: &[u8; 8] = b"HRTHSAGG";
/// The format version this build writes and reads.
pub const VERSION: u8 = 1;
/// The largest message accepted (a masked input of `MAX_DIM` words and its frame).
pub const MAX_MESSAGE: usize = 4 * super::MAX_DIM as usize + 1024;
/// The largest sealed share pair (two shares, a length and the AEAD tag, with room to spare).
const MAX_SEALED: usize = 256;

impl From<CodecError> for SecAggError {
    fn from(e: CodecError) -> SecAggError {
        SecAggError::Malformed(e.to_string())
    }
}

/// Stage 1, client → server: the client's two fresh X25519 public keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertise {
    /// Round id.
    pub round: [u8; 16],
    /// The client's index in the round.
    pub index: u32,
    /// Key for sealing shares.
    pub seal_key: [u8; 32],
    /// Key for agreeing masks.
    pub mask_key: [u8; 32],
}

/// One neighbour as the server describes it at the share-keys stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    /// Its index.
    pub index: u32,
    /// Its enrolled Ed25519 key.
    pub verifying_key: [u8; 32],
    /// Its signed [`Advertise`] message, or `None` if it sent none (it dropped).
    pub advert: Option<Vec<u8>>,
}

/// Stage 2, server → client: the round's parameters and graph seed, and the client's neighbours'
/// keys (itself included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareKeysRequest {
    /// The parameters.
    pub params: Params,
    /// The seed of the neighbour graph.
    pub graph_seed: [u8; 32],
    /// The client's neighbours in graph order.
    pub neighbours: Vec<Neighbour>,
}

/// Stage 2, client → server: a commitment to the self-mask seed, and a sealed share pair for
/// each neighbour that advertised keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareKeys {
    /// Round id.
    pub round: [u8; 16],
    /// Sender.
    pub index: u32,
    /// SHA-256 commitment to the self-mask seed.
    pub commitment: [u8; 32],
    /// (recipient, sealed shares) pairs.
    pub sealed: Vec<(u32, Vec<u8>)>,
}

/// Stage 3, server → client: the share pairs sealed to this client, by sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedInputRequest {
    /// Round id.
    pub round: [u8; 16],
    /// (sender, sealed shares) pairs.
    pub sealed: Vec<(u32, Vec<u8>)>,
}

/// Stage 3, client → server: the masked input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedInput {
    /// Round id.
    pub round: [u8; 16],
    /// Sender.
    pub index: u32,
    /// The input plus its masks, modulo 2³².
    pub words: Vec<u32>,
}

/// Stage 4, server → client: which of its neighbours' inputs are in the sum, and which dropped
/// after sharing keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnmaskRequest {
    /// Round id.
    pub round: [u8; 16],
    /// Neighbours whose masked input is in the sum (their self-mask seed share is asked for).
    pub survivors: Vec<u32>,
    /// Neighbours that shared keys but sent no masked input (their mask-key share is asked for).
    pub dropped: Vec<u32>,
}

/// Stage 4, client → server: one share for each neighbour named in the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmask {
    /// Round id.
    pub round: [u8; 16],
    /// Sender.
    pub index: u32,
    /// (owner, share of its self-mask seed) for the survivors.
    pub seed_shares: Vec<(u32, Share)>,
    /// (owner, share of its mask key) for the dropped.
    pub key_shares: Vec<(u32, Share)>,
}

/// Any message, as decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// See [`Advertise`].
    Advertise(Advertise),
    /// See [`ShareKeysRequest`].
    ShareKeysRequest(ShareKeysRequest),
    /// See [`ShareKeys`].
    ShareKeys(ShareKeys),
    /// See [`MaskedInputRequest`].
    MaskedInputRequest(MaskedInputRequest),
    /// See [`MaskedInput`].
    MaskedInput(MaskedInput),
    /// See [`UnmaskRequest`].
    UnmaskRequest(UnmaskRequest),
    /// See [`Unmask`].
    Unmask(Unmask),
}

const ADVERTISE: u8 = 1;
const SHARE_KEYS_REQUEST: u8 = 2;
const SHARE_KEYS: u8 = 3;
const MASKED_INPUT_REQUEST: u8 = 4;
const MASKED_INPUT: u8 = 5;
const UNMASK_REQUEST: u8 = 6;
const UNMASK: u8 = 7;

fn header(kind: u8, round: &[u8; 16]) -> Writer {
    let mut w = Writer::new(MAGIC);
    w.u8(VERSION).u8(kind).bytes(round);
    w
}

/// A count read from the input, refused unless `min_each` bytes per element remain.
fn count(r: &mut Reader, min_each: usize) -> Result<usize, SecAggError> {
    let n = r.u32()? as usize;
    if n.saturating_mul(min_each) > r.remaining() {
        return Err(SecAggError::Malformed(format!("{n} elements cannot fit in {} bytes", r.remaining())));
    }
    Ok(n)
}

fn write_sealed(w: &mut Writer, sealed: &[(u32, Vec<u8>)]) {
    w.u32(sealed.len() as u32);
    for (who, bytes) in sealed {
        w.u32(*who).u16(bytes.len() as u16).bytes(bytes);
    }
}

fn read_sealed(r: &mut Reader) -> Result<Vec<(u32, Vec<u8>)>, SecAggError> {
    let n = count(r, 6)?;
    (0..n)
        .map(|_| {
            let who = r.u32()?;
            let len = r.u16()? as usize;
            if len > MAX_SEALED {
                return Err(SecAggError::Malformed(format!("sealed shares of {len} bytes")));
            }
            Ok((who, r.take(len)?.to_vec()))
        })
        .collect()
}

fn write_shares(w: &mut Writer, shares: &[(u32, Share)]) {
    w.u32(shares.len() as u32);
    for (who, s) in shares {
        w.u32(*who).bytes(s);
    }
}

fn read_shares(r: &mut Reader) -> Result<Vec<(u32, Share)>, SecAggError> {
    let n = count(r, 4 + SHARE_BYTES)?;
    (0..n).map(|_| Ok((r.u32()?, r.array::<SHARE_BYTES>()?))).collect()
}

fn write_indices(w: &mut Writer, v: &[u32]) {
    w.u32(v.len() as u32);
    for i in v {
        w.u32(*i);
    }
}

fn read_indices(r: &mut Reader) -> Result<Vec<u32>, SecAggError> {
    let n = count(r, 4)?;
    (0..n).map(|_| Ok(r.u32()?)).collect()
}

/// Signs a finished message body with `key`, appending the signature.
pub(crate) fn sign(body: Writer, key: &ring::signature::Ed25519KeyPair) -> Vec<u8> {
    let mut bytes = body.finish();
    let sig = key.sign(&bytes);
    bytes.extend_from_slice(sig.as_ref());
    bytes
}

impl Advertise {
    /// The signed message.
    pub fn encode(&self, key: &ring::signature::Ed25519KeyPair) -> Vec<u8> {
        let mut w = header(ADVERTISE, &self.round);
        w.u32(self.index).bytes(&self.seal_key).bytes(&self.mask_key);
        sign(w, key)
    }
}

impl ShareKeysRequest {
    /// The message.
    pub fn encode(&self) -> Vec<u8> {
        let p = &self.params;
        let mut w = header(SHARE_KEYS_REQUEST, &p.round);
        w.u32(p.clients).u32(p.degree).u32(p.threshold).u32(p.min_survivors).u32(p.dim).bytes(&self.graph_seed);
        w.u32(self.neighbours.len() as u32);
        for n in &self.neighbours {
            w.u32(n.index).bytes(&n.verifying_key);
            match &n.advert {
                Some(a) => w.u16(a.len() as u16).bytes(a),
                None => w.u16(0),
            };
        }
        w.finish()
    }
}

impl ShareKeys {
    /// The signed message.
    pub fn encode(&self, key: &ring::signature::Ed25519KeyPair) -> Vec<u8> {
        let mut w = header(SHARE_KEYS, &self.round);
        w.u32(self.index).bytes(&self.commitment);
        write_sealed(&mut w, &self.sealed);
        sign(w, key)
    }
}

impl MaskedInputRequest {
    /// The message.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = header(MASKED_INPUT_REQUEST, &self.round);
        write_sealed(&mut w, &self.sealed);
        w.finish()
    }
}

impl MaskedInput {
    /// The signed message.
    pub fn encode(&self, key: &ring::signature::Ed25519KeyPair) -> Vec<u8> {
        let mut w = header(MASKED_INPUT, &self.round);
        w.reserve(8 + 4 * self.words.len() + SIGNATURE_BYTES);
        w.u32(self.index).u32(self.words.len() as u32).u32s(&self.words);
        sign(w, key)
    }
}

impl UnmaskRequest {
    /// The message.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = header(UNMASK_REQUEST, &self.round);
        write_indices(&mut w, &self.survivors);
        write_indices(&mut w, &self.dropped);
        w.finish()
    }
}

impl Unmask {
    /// The signed message.
    pub fn encode(&self, key: &ring::signature::Ed25519KeyPair) -> Vec<u8> {
        let mut w = header(UNMASK, &self.round);
        w.u32(self.index);
        write_shares(&mut w, &self.seed_shares);
        write_shares(&mut w, &self.key_shares);
        sign(w, key)
    }
}

/// A decoded message, and for a client's message the signed bytes and the signature (checked by
/// [`Signed::verify`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// The message.
    pub message: Message,
    /// For signed messages: (the bytes signed, the signature).
    pub signed: Option<(&'a [u8], &'a [u8])>,
}

/// Something a client signed.
pub trait Signed {
    /// Whether the signature verifies with `verifying_key`.
    fn verify(&self, verifying_key: &[u8; 32]) -> bool;
}

impl Signed for Decoded<'_> {
    fn verify(&self, verifying_key: &[u8; 32]) -> bool {
        self.signed.is_some_and(|(body, sig)| super::crypto::verify(verifying_key, body, sig))
    }
}

/// Decodes any message. Never panics; every failure is [`SecAggError::Malformed`].
pub fn decode(bytes: &[u8]) -> Result<Decoded<'_>, SecAggError> {
    let mut r = Reader::open(bytes, MAGIC, MAX_MESSAGE)?;
    let version = r.u8()?;
    if version != VERSION {
        return Err(SecAggError::Malformed(format!("version {version}; this build reads version {VERSION}")));
    }
    let kind = r.u8()?;
    let signed_kind = matches!(kind, ADVERTISE | SHARE_KEYS | MASKED_INPUT | UNMASK);
    let body_end = if signed_kind {
        bytes.len().checked_sub(SIGNATURE_BYTES).filter(|&e| e >= 26).ok_or(SecAggError::Malformed("shorter than its signature".into()))?
    } else {
        bytes.len()
    };
    let mut r = {
        let mut b = Reader::new(&bytes[..body_end]);
        b.take(10)?;
        b
    };
    let round: [u8; 16] = r.array()?;
    let message = match kind {
        ADVERTISE => Message::Advertise(Advertise { round, index: r.u32()?, seal_key: r.array()?, mask_key: r.array()? }),
        SHARE_KEYS_REQUEST => {
            let params = Params { round, clients: r.u32()?, degree: r.u32()?, threshold: r.u32()?, min_survivors: r.u32()?, dim: r.u32()? };
            let graph_seed = r.array()?;
            let n = count(&mut r, 38)?;
            let neighbours = (0..n)
                .map(|_| {
                    let index = r.u32()?;
                    let verifying_key = r.array()?;
                    let len = r.u16()? as usize;
                    let advert = if len == 0 { None } else { Some(r.take(len)?.to_vec()) };
                    Ok(Neighbour { index, verifying_key, advert })
                })
                .collect::<Result<_, SecAggError>>()?;
            Message::ShareKeysRequest(ShareKeysRequest { params, graph_seed, neighbours })
        }
        SHARE_KEYS => Message::ShareKeys(ShareKeys { round, index: r.u32()?, commitment: r.array()?, sealed: read_sealed(&mut r)? }),
        MASKED_INPUT_REQUEST => Message::MaskedInputRequest(MaskedInputRequest { round, sealed: read_sealed(&mut r)? }),
        MASKED_INPUT => {
            let index = r.u32()?;
            let n = count(&mut r, 4)?;
            Message::MaskedInput(MaskedInput { round, index, words: r.u32s(n)? })
        }
        UNMASK_REQUEST => Message::UnmaskRequest(UnmaskRequest { round, survivors: read_indices(&mut r)?, dropped: read_indices(&mut r)? }),
        UNMASK => Message::Unmask(Unmask { round, index: r.u32()?, seed_shares: read_shares(&mut r)?, key_shares: read_shares(&mut r)? }),
        other => return Err(SecAggError::Malformed(format!("unknown message type {other}"))),
    };
    r.end("bytes after the message")?;
    let signed = signed_kind.then(|| (&bytes[..body_end], &bytes[body_end..]));
    Ok(Decoded { message, signed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ring::signature::Ed25519KeyPair {
        super::super::crypto::signing_key(&[3; 32]).unwrap().0
    }

    fn all() -> Vec<Vec<u8>> {
        let k = key();
        let round = [7; 16];
        let advert = Advertise { round, index: 2, seal_key: [1; 32], mask_key: [2; 32] }.encode(&k);
        vec![
            advert.clone(),
            ShareKeysRequest {
                params: Params::for_clients(round, 5, 3, 3),
                graph_seed: [4; 32],
                neighbours: vec![Neighbour { index: 2, verifying_key: [5; 32], advert: Some(advert) }, Neighbour { index: 4, verifying_key: [6; 32], advert: None }],
            }
            .encode(),
            ShareKeys { round, index: 2, commitment: [8; 32], sealed: vec![(4, vec![9; 82])] }.encode(&k),
            MaskedInputRequest { round, sealed: vec![(1, vec![1; 82]), (3, vec![2; 82])] }.encode(),
            MaskedInput { round, index: 2, words: vec![1, 2, u32::MAX] }.encode(&k),
            UnmaskRequest { round, survivors: vec![1, 2], dropped: vec![3] }.encode(),
            Unmask { round, index: 2, seed_shares: vec![(1, [1; 33])], key_shares: vec![(3, [3; 33])] }.encode(&k),
        ]
    }

    #[test]
    fn every_message_round_trips_and_signatures_verify() {
        let public = super::super::crypto::signing_key(&[3; 32]).unwrap().1;
        for bytes in all() {
            let d = decode(&bytes).unwrap();
            assert_eq!(d.signed.is_some(), d.verify(&public), "{:?}", d.message);
            assert!(!d.verify(&[0; 32]));
            // Every truncation is refused, and a flipped byte either fails to decode or no longer
            // verifies (or is in the unsigned server messages, which carry no signature).
            for cut in 0..bytes.len() {
                assert!(decode(&bytes[..cut]).is_err(), "{cut} of {}", bytes.len());
            }
            if d.signed.is_some() {
                for at in 10..bytes.len() - SIGNATURE_BYTES {
                    let mut b = bytes.clone();
                    b[at] ^= 1;
                    if let Ok(d2) = decode(&b) {
                        assert!(!d2.verify(&public), "byte {at}");
                    }
                }
            }
        }
    }

    #[test]
    fn bad_frames_are_refused() {
        let good = all()[4].clone();
        let mut b = good.clone();
        b[8] = 2;
        assert!(decode(&b).unwrap_err().to_string().contains("version 2"));
        let mut b = good.clone();
        b[9] = 99;
        assert!(decode(&b).is_err());
        // A count that cannot fit is refused before allocating.
        let mut w = header(MASKED_INPUT, &[0; 16]);
        w.u32(1).u32(u32::MAX);
        let mut b = w.finish();
        b.extend_from_slice(&[0; 64]);
        assert!(matches!(decode(&b), Err(SecAggError::Malformed(m)) if m.contains("cannot fit")));
        assert!(decode(b"HRTHSAGG").is_err());
        assert!(decode(&[]).is_err());
    }
}
