//! Sealing saved documents at rest: AES-256-GCM (ring) under a key derived from a passphrase
//! (PBKDF2-HMAC-SHA256) or a random device key.
//!
//! Sealed layout (all integers little-endian):
//! `b"HRTHVALT"` · version u8 (=1) · kdf u8 (0 device key, 1 PBKDF2) · iterations u32 ·
//! salt 16 · key check 16 · document id 16 · nonce 12 · length u64 · ciphertext+tag.
//! Everything before the ciphertext is the associated data, so the header (format version,
//! document id, key parameters) is authenticated with the contents. The key check is
//! HMAC-SHA256(key, "hearth vault key check"), truncated: it tells a wrong key from tampered
//! contents without revealing anything about the key. A fresh random nonce is drawn for every
//! seal.
//!
//! ```
//! use hearth_core::person::vault::{Key, open, seal, VaultError};
//! let key = Key::random().unwrap();
//! let doc = [7u8; 16];
//! let sealed = seal(&key, doc, b"history").unwrap();
//! assert_eq!(open(&key, &sealed).unwrap(), (doc, b"history".to_vec()));
//! assert_eq!(open(&Key::random().unwrap(), &sealed), Err(VaultError::WrongKey));
//! ```

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::{hmac, pbkdf2};

use crate::codec::{Reader, Writer};

/// Magic bytes of a sealed document.
pub const VAULT_MAGIC: &[u8; 8] = b"HRTHVALT";
/// Current sealed-document version.
pub const VAULT_VERSION: u8 = 1;
/// PBKDF2-HMAC-SHA256 iterations for new passphrase keys: OWASP's Password Storage Cheat Sheet
/// recommends 600,000 for PBKDF2-HMAC-SHA256.
pub const PBKDF2_ITERATIONS: u32 = 600_000;
/// Fewest iterations `open` accepts from a header (older or weakened files are refused).
pub const MIN_PBKDF2_ITERATIONS: u32 = 100_000;
/// Most iterations `open` accepts from a header (a forged header must not stall the device).
pub const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;
const HEADER: usize = 8 + 1 + 1 + 4 + 16 + 16 + 16 + NONCE_LEN + 8;
const TAG: usize = 16;

/// A document id: 16 random bytes naming one person's history (bound into every seal).
pub type DocId = [u8; 16];

/// Why sealing or opening failed. Each cause is its own variant and carries no detail beyond it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The key (or passphrase) is not the one the document was sealed with.
    #[error("wrong key or passphrase")]
    WrongKey,
    /// The right key, but the contents or header were changed.
    #[error("the sealed data was tampered with or corrupted")]
    Tampered,
    /// The data ends before the length its header declares.
    #[error("the sealed data is truncated")]
    Truncated,
    /// Not a sealed hearth document, or a version this build does not read.
    #[error("not a sealed hearth document of a supported version")]
    BadFormat,
    /// The key parameters in the header are outside the accepted range.
    #[error("the key derivation parameters are outside the accepted range")]
    BadParameters,
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kdf {
    Device,
    Pbkdf2 { iterations: u32, salt: [u8; 16] },
}

/// A 256-bit key and how it was made.
#[derive(Clone)]
pub struct Key {
    bytes: [u8; 32],
    kdf: Kdf,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

fn random<const N: usize>() -> Result<[u8; N], VaultError> {
    crate::platform::random().map_err(|_| VaultError::Random)
}

impl Key {
    /// A new random device key.
    pub fn random() -> Result<Key, VaultError> {
        Ok(Key { bytes: random()?, kdf: Kdf::Device })
    }

    /// A device key from stored bytes (e.g. one kept in the platform's key store).
    pub fn from_device_bytes(bytes: [u8; 32]) -> Key {
        Key { bytes, kdf: Kdf::Device }
    }

    /// The raw bytes of a device key, for the platform's key store.
    pub fn device_bytes(&self) -> Option<[u8; 32]> {
        (self.kdf == Kdf::Device).then_some(self.bytes)
    }

    /// A key from a passphrase with a new random salt and [`PBKDF2_ITERATIONS`].
    pub fn from_passphrase(passphrase: &str) -> Result<Key, VaultError> {
        Ok(Self::derive(passphrase, PBKDF2_ITERATIONS, random()?))
    }

    /// The passphrase key a sealed document was made with (salt and iterations from its header).
    pub fn for_sealed(passphrase: &str, sealed: &[u8]) -> Result<Key, VaultError> {
        match parse(sealed)?.kdf {
            Kdf::Pbkdf2 { iterations, salt } => Ok(Self::derive(passphrase, iterations, salt)),
            Kdf::Device => Err(VaultError::WrongKey),
        }
    }

    /// A passphrase key whose PBKDF2-HMAC-SHA256 output was computed elsewhere with these
    /// parameters (a browser's WebCrypto runs it natively, ~10× faster than wasm). The bytes
    /// must be exactly what [`Key::from_passphrase`] would derive, or opening fails as a wrong key.
    pub fn from_pbkdf2_output(bytes: [u8; 32], iterations: u32, salt: [u8; 16]) -> Result<Key, VaultError> {
        if !(MIN_PBKDF2_ITERATIONS..=MAX_PBKDF2_ITERATIONS).contains(&iterations) {
            return Err(VaultError::BadParameters);
        }
        Ok(Key { bytes, kdf: Kdf::Pbkdf2 { iterations, salt } })
    }

    fn derive(passphrase: &str, iterations: u32, salt: [u8; 16]) -> Key {
        let mut bytes = [0u8; 32];
        let n = std::num::NonZeroU32::new(iterations.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, n, &salt, passphrase.as_bytes(), &mut bytes);
        Key { bytes, kdf: Kdf::Pbkdf2 { iterations, salt } }
    }

    /// The truncated HMAC that identifies this key in a header.
    fn check(&self) -> [u8; 16] {
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &self.bytes), b"hearth vault key check");
        let mut out = [0u8; 16];
        out.copy_from_slice(&tag.as_ref()[..16]);
        out
    }

    fn aead(&self) -> LessSafeKey {
        // 32 bytes is always a valid AES-256 key.
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.bytes).unwrap_or_else(|_| unreachable!("AES-256 key is 32 bytes")))
    }
}

struct Parsed<'a> {
    kdf: Kdf,
    check: [u8; 16],
    doc: DocId,
    nonce: [u8; NONCE_LEN],
    header: &'a [u8],
    body: &'a [u8],
}

fn parse(sealed: &[u8]) -> Result<Parsed<'_>, VaultError> {
    let mut r = Reader::open(sealed, VAULT_MAGIC, usize::MAX).map_err(|_| VaultError::BadFormat)?;
    if r.u8().ok() != Some(VAULT_VERSION) {
        return Err(VaultError::BadFormat);
    }
    if sealed.len() < HEADER {
        return Err(VaultError::Truncated);
    }
    // The whole header is there (checked just above), so no read below can fail.
    let short = |_| VaultError::Truncated;
    let kind = r.u8().map_err(short)?;
    let iterations = r.u32().map_err(short)?;
    let salt = r.array::<16>().map_err(short)?;
    let kdf = match kind {
        0 if iterations == 0 => Kdf::Device,
        1 if (MIN_PBKDF2_ITERATIONS..=MAX_PBKDF2_ITERATIONS).contains(&iterations) => Kdf::Pbkdf2 { iterations, salt },
        0 | 1 => return Err(VaultError::BadParameters),
        _ => return Err(VaultError::BadFormat),
    };
    let check = r.array::<16>().map_err(short)?;
    let doc = r.array::<16>().map_err(short)?;
    let nonce = r.array::<NONCE_LEN>().map_err(short)?;
    let len = u64::from_le_bytes(r.array::<8>().map_err(short)?);
    let rest = r.remaining() as u64;
    if rest < len || len < TAG as u64 {
        return Err(if rest < len { VaultError::Truncated } else { VaultError::Tampered });
    }
    if rest > len {
        return Err(VaultError::Tampered);
    }
    Ok(Parsed { kdf, check, doc, nonce, header: &sealed[..HEADER], body: r.rest() })
}

/// Seals `plain` for document `doc` under `key` with a fresh random nonce.
pub fn seal(key: &Key, doc: DocId, plain: &[u8]) -> Result<Vec<u8>, VaultError> {
    let nonce: [u8; NONCE_LEN] = random()?;
    let (kind, iterations, salt) = match key.kdf {
        Kdf::Device => (0, 0, [0u8; 16]),
        Kdf::Pbkdf2 { iterations, salt } => (1, iterations, salt),
    };
    let mut w = Writer::new(VAULT_MAGIC);
    w.reserve(HEADER + plain.len() + TAG);
    w.u8(VAULT_VERSION).u8(kind).u32(iterations).bytes(&salt).bytes(&key.check()).bytes(&doc).bytes(&nonce);
    w.bytes(&((plain.len() + TAG) as u64).to_le_bytes());
    let mut out = w.finish();
    debug_assert_eq!(out.len(), HEADER);
    let mut body = plain.to_vec();
    key.aead()
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&out[..HEADER]), &mut body)
        .map_err(|_| VaultError::Tampered)?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Opens a sealed document: its id and contents. Never panics on any input.
pub fn open(key: &Key, sealed: &[u8]) -> Result<(DocId, Vec<u8>), VaultError> {
    let p = parse(sealed)?;
    if !constant_time_eq(&p.check, &key.check()) {
        return Err(VaultError::WrongKey);
    }
    let mut body = p.body.to_vec();
    let plain = key
        .aead()
        .open_in_place(Nonce::assume_unique_for_key(p.nonce), Aad::from(p.header), &mut body)
        .map_err(|_| VaultError::Tampered)?;
    let n = plain.len();
    body.truncate(n);
    Ok((p.doc, body))
}

/// Re-seals a document under a new key (key rotation). The old sealed bytes are untouched; the
/// caller replaces them only once the new ones are stored.
pub fn rotate(old: &Key, new: &Key, sealed: &[u8]) -> Result<Vec<u8>, VaultError> {
    let (doc, plain) = open(old, sealed)?;
    seal(new, doc, &plain)
}

/// The PBKDF2 parameters `(iterations, salt)` in a sealed header; `None` for a device key.
pub fn kdf_params(sealed: &[u8]) -> Result<Option<(u32, [u8; 16])>, VaultError> {
    Ok(match parse(sealed)?.kdf {
        Kdf::Pbkdf2 { iterations, salt } => Some((iterations, salt)),
        Kdf::Device => None,
    })
}

/// A new random PBKDF2 salt.
pub fn new_salt() -> Result<[u8; 16], VaultError> {
    random()
}

/// A new random document id.
pub fn new_doc_id() -> Result<DocId, VaultError> {
    random()
}

/// The document id in a sealed header (not secret: it is authenticated, not encrypted).
pub fn doc_id(sealed: &[u8]) -> Result<DocId, VaultError> {
    Ok(parse(sealed)?.doc)
}

fn constant_time_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pbkdf2_output_from_elsewhere_opens_what_the_passphrase_sealed() {
        let p = Key::from_passphrase("correct horse").unwrap();
        let s = seal(&p, [3; 16], b"x").unwrap();
        let (iterations, salt) = kdf_params(&s).unwrap().unwrap();
        let mut out = [0u8; 32];
        let n = std::num::NonZeroU32::new(iterations).unwrap();
        pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, n, &salt, b"correct horse", &mut out);
        let k = Key::from_pbkdf2_output(out, iterations, salt).unwrap();
        assert_eq!(open(&k, &s).unwrap().1, b"x");
        // And the other way: what that key seals, the passphrase opens.
        let t = seal(&k, [3; 16], b"y").unwrap();
        assert_eq!(open(&Key::for_sealed("correct horse", &t).unwrap(), &t).unwrap().1, b"y");
        assert_eq!(Key::from_pbkdf2_output(out, 10, salt).err(), Some(VaultError::BadParameters));
        assert_eq!(kdf_params(&seal(&Key::random().unwrap(), [3; 16], b"z").unwrap()).unwrap(), None);
    }

    #[test]
    fn seal_open_with_device_and_passphrase_keys() {
        let doc = [1u8; 16];
        let k = Key::random().unwrap();
        let a = seal(&k, doc, b"abc").unwrap();
        let b = seal(&k, doc, b"abc").unwrap();
        assert_ne!(a, b, "a fresh nonce per seal");
        assert_eq!(open(&k, &a).unwrap(), (doc, b"abc".to_vec()));
        let restored = Key::from_device_bytes(k.device_bytes().unwrap());
        assert_eq!(open(&restored, &b).unwrap().1, b"abc");

        let p = Key::from_passphrase("correct horse").unwrap();
        let s = seal(&p, doc, b"history").unwrap();
        assert_eq!(open(&Key::for_sealed("correct horse", &s).unwrap(), &s).unwrap().1, b"history");
        assert_eq!(open(&Key::for_sealed("wrong horse", &s).unwrap(), &s), Err(VaultError::WrongKey));
        assert_eq!(doc_id(&s).unwrap(), doc);
    }

    fn sealed() -> (Key, Vec<u8>) {
        let k = Key::random().unwrap();
        let s = seal(&k, [2; 16], b"some history bytes").unwrap();
        (k, s)
    }

    #[test]
    fn another_key_is_a_wrong_key() {
        let (_, s) = sealed();
        assert_eq!(open(&Key::random().unwrap(), &s), Err(VaultError::WrongKey));
    }

    #[test]
    fn each_damaged_byte_gives_the_error_of_the_field_it_is_in() {
        let (k, s) = sealed();
        for i in 0..s.len() {
            let mut t = s.clone();
            t[i] ^= 0x40;
            let e = open(&k, &t).unwrap_err();
            match i {
                0..=9 => assert_eq!(e, VaultError::BadFormat, "byte {i}"),
                10..=13 => assert_eq!(e, VaultError::BadParameters, "byte {i}"),
                30..=45 => assert_eq!(e, VaultError::WrongKey, "byte {i}"),
                _ if (74..82).contains(&i) => assert!(matches!(e, VaultError::Truncated | VaultError::Tampered), "byte {i}"),
                _ => assert_eq!(e, VaultError::Tampered, "byte {i}"),
            }
        }
    }

    #[test]
    fn a_cut_vault_is_truncated_and_a_longer_one_tampered() {
        let (k, s) = sealed();
        for len in 0..s.len() {
            let e = open(&k, &s[..len]).unwrap_err();
            assert!(matches!(e, VaultError::Truncated | VaultError::BadFormat), "{len}: {e:?}");
            if len >= 9 {
                assert_eq!(e, VaultError::Truncated, "{len}");
            }
        }
        let mut longer = s.clone();
        longer.push(0);
        assert_eq!(open(&k, &longer), Err(VaultError::Tampered));
    }

    #[test]
    fn rotation_reseals_under_the_new_key() {
        let (a, b) = (Key::random().unwrap(), Key::from_passphrase("new").unwrap());
        let s = seal(&a, [3; 16], b"x").unwrap();
        let r = rotate(&a, &b, &s).unwrap();
        assert_eq!(open(&b, &r).unwrap(), ([3; 16], b"x".to_vec()));
        assert_eq!(open(&a, &r), Err(VaultError::WrongKey));
        assert_eq!(rotate(&b, &a, &s), Err(VaultError::WrongKey));
    }

    proptest::proptest! {
        #[test]
        fn open_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let k = Key::from_device_bytes([9; 32]);
            let _ = open(&k, &bytes);
            let mut framed = VAULT_MAGIC.to_vec();
            framed.push(VAULT_VERSION);
            framed.extend_from_slice(&bytes);
            let _ = open(&k, &framed);
        }
    }
}
