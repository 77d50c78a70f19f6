//! The primitives secure aggregation is built from, each from a maintained crate: X25519 key
//! agreement (x25519-dalek: a secret key must be Shamir-shared and rebuilt, which ring's ephemeral
//! keys cannot be), HKDF-SHA256, ChaCha20-Poly1305 and Ed25519 (ring), the ChaCha20 stream cipher
//! that expands a 256-bit seed into a mask (chacha20), and Shamir sharing over GF(2⁸) byte by byte
//! (vsss-rs). This file only composes them: keys derived with domain separation, one AEAD nonce
//! per key and direction, masks added or subtracted in place.

use chacha20::cipher::StreamCipher;
use chacha20::{ChaCha20, KeyIvInit};
use ring::{aead, hkdf, signature};

use super::SecAggError;

/// An X25519 public key.
pub type PublicKey = [u8; 32];
/// A Shamir share of a 32-byte secret: its x coordinate, then 32 bytes.
pub type Share = [u8; SHARE_BYTES];
/// Bytes of a [`Share`].
pub const SHARE_BYTES: usize = 33;
/// Bytes of an Ed25519 signature.
pub const SIGNATURE_BYTES: usize = 64;

/// The X25519 public key of a secret (any 32 bytes are a valid secret: X25519 clamps them).
pub fn public_key(secret: &[u8; 32]) -> PublicKey {
    x25519_dalek::x25519(*secret, x25519_dalek::X25519_BASEPOINT_BYTES)
}

/// The X25519 shared secret of `secret` and `public`; refuses a public key of small order (an
/// all-zero result), which would make the secret known to anyone.
pub fn agree(secret: &[u8; 32], public: &PublicKey) -> Result<[u8; 32], SecAggError> {
    let s = x25519_dalek::x25519(*secret, *public);
    if s == [0; 32] { Err(SecAggError::BadKey) } else { Ok(s) }
}

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// HKDF-SHA256(salt = the session id, ikm, info) → 32 bytes.
pub fn derive(sid: &[u8; 32], ikm: &[u8], info: &[&[u8]]) -> [u8; 32] {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, sid).extract(ikm);
    let mut out = [0u8; 32];
    // 32 bytes is within HKDF-SHA256's 255·32 limit: expand and fill cannot fail.
    if let Ok(okm) = prk.expand(info, Len32) {
        let _ = okm.fill(&mut out);
    }
    out
}

/// Adds (`sign` = +1) or subtracts (−1) the mask a 256-bit `key` expands to, word by word modulo
/// 2³², into `acc`: the ChaCha20 keystream (nonce 0) read as little-endian u32 words.
pub fn apply_mask(acc: &mut [u32], key: &[u8; 32], add: bool) {
    let mut cipher = ChaCha20::new(&(*key).into(), &[0u8; 12].into());
    let mut buf = [0u8; 4096];
    for chunk in acc.chunks_mut(buf.len() / 4) {
        let bytes = &mut buf[..chunk.len() * 4];
        bytes.fill(0);
        cipher.apply_keystream(bytes);
        for (a, w) in chunk.iter_mut().zip(bytes.chunks_exact(4)) {
            let m = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            *a = if add { a.wrapping_add(m) } else { a.wrapping_sub(m) };
        }
    }
}

/// The AEAD nonce for one direction of one pair: each (key, src → dst) seals exactly one message.
fn nonce(src: u32, dst: u32) -> aead::Nonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&src.to_le_bytes());
    n[4..8].copy_from_slice(&dst.to_le_bytes());
    aead::Nonce::assume_unique_for_key(n)
}

fn aad(sid: &[u8; 32], src: u32, dst: u32) -> Vec<u8> {
    [sid.as_slice(), &src.to_le_bytes(), &dst.to_le_bytes()].concat()
}

fn aead_key(key: &[u8; 32]) -> Result<aead::LessSafeKey, SecAggError> {
    aead::UnboundKey::new(&aead::CHACHA20_POLY1305, key).map(aead::LessSafeKey::new).map_err(|_| SecAggError::Crypto)
}

/// Seals `plain` from `src` to `dst` under their pairwise key (ChaCha20-Poly1305; the session id
/// and both indices authenticated).
pub fn seal(key: &[u8; 32], sid: &[u8; 32], src: u32, dst: u32, plain: &[u8]) -> Result<Vec<u8>, SecAggError> {
    let mut buf = plain.to_vec();
    aead_key(key)?
        .seal_in_place_append_tag(nonce(src, dst), aead::Aad::from(aad(sid, src, dst)), &mut buf)
        .map_err(|_| SecAggError::Crypto)?;
    Ok(buf)
}

/// Opens what [`seal`] sealed; any change to the bytes, the session or the indices fails.
pub fn open(key: &[u8; 32], sid: &[u8; 32], src: u32, dst: u32, sealed: &[u8]) -> Result<Vec<u8>, SecAggError> {
    let mut buf = sealed.to_vec();
    let n = aead_key(key)?
        .open_in_place(nonce(src, dst), aead::Aad::from(aad(sid, src, dst)), &mut buf)
        .map_err(|_| SecAggError::Decrypt { from: src })?
        .len();
    buf.truncate(n);
    Ok(buf)
}

/// Splits a 32-byte secret into `count` shares (x = 1..=count), any `threshold` of which rebuild
/// it. `seed` drives the polynomial's random coefficients (from the caller's CSPRNG).
pub fn split(secret: &[u8; 32], threshold: usize, count: usize, seed: [u8; 32]) -> Result<Vec<Share>, SecAggError> {
    use chacha20::rand_core::SeedableRng;
    let mut rng = chacha20::ChaCha20Rng::from_seed(seed);
    let shares = vsss_rs::Gf256::split_bytes(threshold, count, secret, &mut rng).map_err(|_| SecAggError::Crypto)?;
    shares
        .into_iter()
        .map(|s| <[u8; SHARE_BYTES]>::try_from(s.as_slice()).map_err(|_| SecAggError::Crypto))
        .collect()
}

/// Rebuilds a secret from at least `threshold` shares with distinct, non-zero x (vsss-rs does not
/// know the threshold: fewer shares would give a wrong secret, so they are refused here).
pub fn combine(shares: &[Share], threshold: usize) -> Result<[u8; 32], SecAggError> {
    if shares.len() < threshold {
        return Err(SecAggError::TooFewShares { have: shares.len(), need: threshold });
    }
    let v: Vec<Vec<u8>> = shares.iter().map(|s| s.to_vec()).collect();
    let secret = vsss_rs::Gf256::combine_bytes(&v).map_err(|_| SecAggError::Crypto)?;
    <[u8; 32]>::try_from(secret.as_slice()).map_err(|_| SecAggError::Crypto)
}

/// An Ed25519 signing key from its 32-byte seed, and its public (verifying) key.
pub fn signing_key(seed: &[u8; 32]) -> Result<(signature::Ed25519KeyPair, [u8; 32]), SecAggError> {
    let pair = signature::Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| SecAggError::BadKey)?;
    let mut public = [0u8; 32];
    public.copy_from_slice(signature::KeyPair::public_key(&pair).as_ref());
    Ok((pair, public))
}

/// Whether `sig` is `verifying_key`'s Ed25519 signature of `msg`.
pub fn verify(verifying_key: &[u8; 32], msg: &[u8], sig: &[u8]) -> bool {
    signature::UnparsedPublicKey::new(&signature::ED25519, verifying_key).verify(msg, sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_is_the_chacha20_keystream() {
        // RFC 8439, Appendix A.1, test vector #1: all-zero key and nonce, block counter 0.
        let mut acc = vec![0u32; 16];
        apply_mask(&mut acc, &[0; 32], true);
        let want: [u8; 64] = [
            0x76, 0xb8, 0xe0, 0xad, 0xa0, 0xf1, 0x3d, 0x90, 0x40, 0x5d, 0x6a, 0xe5, 0x53, 0x86, 0xbd, 0x28, 0xbd, 0xd2, 0x19, 0xb8, 0xa0,
            0x8d, 0xed, 0x1a, 0xa8, 0x36, 0xef, 0xcc, 0x8b, 0x77, 0x0d, 0xc7, 0xda, 0x41, 0x59, 0x7c, 0x51, 0x57, 0x48, 0x8d, 0x77, 0x24,
            0xe0, 0x3f, 0xb8, 0xd8, 0x4a, 0x37, 0x6a, 0x43, 0xb8, 0xf4, 0x15, 0x18, 0xa1, 0x1c, 0xc3, 0x87, 0xb6, 0x69, 0xb2, 0xee, 0x65,
            0x86,
        ];
        let got: Vec<u8> = acc.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(got, want);
        // Subtracting the same mask gives back zero, across chunk boundaries too.
        let mut acc = vec![7u32; 5000];
        apply_mask(&mut acc, &[3; 32], true);
        assert!(acc.iter().any(|&w| w != 7));
        apply_mask(&mut acc, &[3; 32], false);
        assert!(acc.iter().all(|&w| w == 7));
    }

    #[test]
    fn agreement_sealing_and_sharing() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let (pa, pb) = (public_key(&a), public_key(&b));
        assert_eq!(agree(&a, &pb).unwrap(), agree(&b, &pa).unwrap());
        assert_eq!(agree(&a, &[0; 32]), Err(SecAggError::BadKey), "a small-order point is refused");
        let sid = [9u8; 32];
        let key = derive(&sid, &agree(&a, &pb).unwrap(), &[b"enc"]);
        let sealed = seal(&key, &sid, 3, 4, b"share").unwrap();
        assert_eq!(open(&key, &sid, 3, 4, &sealed).unwrap(), b"share");
        assert!(open(&key, &sid, 4, 3, &sealed).is_err(), "the direction is authenticated");
        assert!(open(&key, &[8; 32], 3, 4, &sealed).is_err(), "the session is authenticated");
        let secret = [0xA5u8; 32];
        let shares = split(&secret, 3, 5, [4; 32]).unwrap();
        assert_eq!(shares.iter().map(|s| s[0]).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert_eq!(combine(&shares[1..4], 3).unwrap(), secret);
        assert_eq!(combine(&[shares[0], shares[4], shares[2]], 3).unwrap(), secret);
        assert_eq!(combine(&shares[..2], 3), Err(SecAggError::TooFewShares { have: 2, need: 3 }));
        let (pair, public) = signing_key(&[5; 32]).unwrap();
        let sig = pair.sign(b"message");
        assert!(verify(&public, b"message", sig.as_ref()));
        assert!(!verify(&public, b"massage", sig.as_ref()));
    }
}
