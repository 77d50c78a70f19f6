//! The one binary codec behind hearth's framed formats (tensor file, catalog shard, sealed vault,
//! and next the federated wire messages): a size limit checked before anything is read, an 8-byte
//! magic, lengths checked against the bytes that remain before anything is allocated, and an
//! optional SHA-256 trailer. Little-endian throughout. Each format keeps its own error type and
//! converts [`CodecError`] into it; the framing rules live only here.
//!
//! ```
//! use hearth_core::codec::{Reader, Writer};
//! let mut w = Writer::new(b"HRTHTEST");
//! w.u32(7).string("seven");
//! let bytes = w.finish_sha256();
//! let mut r = Reader::open(&bytes, b"HRTHTEST", 1 << 20).unwrap().checked_sha256(4).unwrap();
//! assert_eq!((r.u32().unwrap(), r.string().unwrap().as_str()), (7, "seven"));
//! r.end("trailing bytes").unwrap();
//! ```


/// SHA-256 of `bytes` (ring), fed in 64 KiB pieces. Same digest as one call; the pieces matter in
/// browsers: V8 swaps optimized code in for a wasm function only at its next call, and ring hashes
/// a whole buffer in one call of its block function, so a megabyte hashed at once runs entirely
/// in V8's baseline tier (~17 MB/s here) while pieces let the optimized code take over.
pub fn sha256(bytes: &[u8]) -> ring::digest::Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for piece in bytes.chunks(64 << 10) {
        ctx.update(piece);
    }
    ctx.finish()
}

/// Bytes of a SHA-256 trailer.
pub const DIGEST_BYTES: usize = 32;

/// Why framed bytes could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// More bytes than the format allows (refused before reading them).
    #[error("{size} bytes exceed the {limit}-byte limit")]
    TooLarge {
        /// Bytes given.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes do not start with the format's magic.
    #[error("bad magic")]
    BadMagic,
    /// The SHA-256 trailer does not match the contents.
    #[error("checksum mismatch")]
    Checksum,
    /// The structure is wrong: ends early, a length overflows, bytes left over, bad UTF-8.
    #[error("{0}")]
    Malformed(&'static str),
}

/// A cursor over framed bytes. Every read is bounds-checked; none panics.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `bytes` from the start (no frame).
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    /// Checks the size limit and the magic; the reader starts after the magic.
    pub fn open(bytes: &'a [u8], magic: &[u8; 8], limit: usize) -> Result<Self, CodecError> {
        if bytes.len() > limit {
            return Err(CodecError::TooLarge { size: bytes.len(), limit });
        }
        if bytes.get(..8) != Some(magic.as_slice()) {
            return Err(CodecError::BadMagic);
        }
        Ok(Reader { bytes, pos: 8 })
    }

    /// Splits off the SHA-256 trailer and checks it over everything before it; the reader then
    /// ends where the trailer begins. `min_rest` more bytes must precede the trailer.
    pub fn checked_sha256(self, min_rest: usize) -> Result<Self, CodecError> {
        let r = self.without_trailer(min_rest)?;
        if sha256(r.bytes).as_ref() != &self.bytes[r.bytes.len()..] {
            return Err(CodecError::Checksum);
        }
        Ok(r)
    }

    /// Splits off the trailer without checking it: for bytes whose digest, trailer included, was
    /// just checked against one recorded elsewhere (a manifest's), where it would prove nothing.
    pub fn without_trailer(&self, min_rest: usize) -> Result<Self, CodecError> {
        let end = self
            .bytes
            .len()
            .checked_sub(DIGEST_BYTES)
            .filter(|&e| e >= self.pos + min_rest)
            .ok_or(CodecError::Malformed("shorter than its header and checksum"))?;
        Ok(Reader { bytes: &self.bytes[..end], pos: self.pos })
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self.pos.checked_add(n).ok_or(CodecError::Malformed("length overflows"))?;
        let s = self.bytes.get(self.pos..end).ok_or(CodecError::Malformed("unexpected end of input"))?;
        self.pos = end;
        Ok(s)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// A byte.
    pub fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.array::<1>()?[0])
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// `n` little-endian `f32`s (the length is checked before allocating).
    pub fn f32s(&mut self, n: usize) -> Result<Vec<f32>, CodecError> {
        let raw = self.take(n.checked_mul(4).ok_or(CodecError::Malformed("length overflows"))?)?;
        Ok(raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// `n` little-endian `u32`s (the length is checked before allocating).
    pub fn u32s(&mut self, n: usize) -> Result<Vec<u32>, CodecError> {
        let raw = self.take(n.checked_mul(4).ok_or(CodecError::Malformed("length overflows"))?)?;
        Ok(raw.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// A UTF-8 string with a `u16` length.
    pub fn string(&mut self) -> Result<String, CodecError> {
        let len = self.u16()? as usize;
        let s = std::str::from_utf8(self.take(len)?).map_err(|_| CodecError::Malformed("a string is not UTF-8"))?;
        Ok(s.to_owned())
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.bytes[self.pos.min(self.bytes.len())..];
        self.pos = self.bytes.len();
        s
    }

    /// Errors with `what` unless every byte was read.
    pub fn end(&self, what: &'static str) -> Result<(), CodecError> {
        if self.remaining() == 0 { Ok(()) } else { Err(CodecError::Malformed(what)) }
    }
}

/// Builds framed bytes: magic first, then fields, then (optionally) the SHA-256 trailer.
#[derive(Debug, Clone, Default)]
pub struct Writer {
    out: Vec<u8>,
}

impl Writer {
    /// Starts a frame with `magic`.
    pub fn new(magic: &[u8; 8]) -> Self {
        Writer { out: magic.to_vec() }
    }

    /// Reserves room for `n` more bytes.
    pub fn reserve(&mut self, n: usize) -> &mut Self {
        self.out.reserve(n);
        self
    }

    /// Raw bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.out.extend_from_slice(b);
        self
    }

    /// A byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.out.push(v);
        self
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    /// Little-endian `f32`s (no length: the reader knows how many).
    pub fn f32s(&mut self, v: &[f32]) -> &mut Self {
        for x in v {
            self.out.extend_from_slice(&x.to_le_bytes());
        }
        self
    }

    /// The values, little-endian (no count: write one before if the reader needs it).
    pub fn u32s(&mut self, v: &[u32]) -> &mut Self {
        self.out.reserve(4 * v.len());
        for x in v {
            self.out.extend_from_slice(&x.to_le_bytes());
        }
        self
    }

    /// A string with a `u16` length; callers keep strings under 64 KiB (ids, names).
    pub fn string(&mut self, s: &str) -> &mut Self {
        self.u16(s.len() as u16).bytes(s.as_bytes())
    }

    /// The bytes, without a trailer.
    pub fn finish(self) -> Vec<u8> {
        self.out
    }

    /// The bytes followed by their SHA-256.
    pub fn finish_sha256(mut self) -> Vec<u8> {
        let digest = sha256(&self.out);
        self.out.extend_from_slice(digest.as_ref());
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed() -> Vec<u8> {
        let mut w = Writer::new(b"HRTHTEST");
        w.u8(1).u16(2).u32(3).f32s(&[1.5]).string("é");
        w.finish_sha256()
    }

    #[test]
    fn too_large_and_another_magic_are_refused_first() {
        let bytes = framed();
        assert_eq!(Reader::open(&bytes, b"HRTHTEST", 10).err(), Some(CodecError::TooLarge { size: bytes.len(), limit: 10 }));
        assert_eq!(Reader::open(&bytes, b"HRTHXXXX", 1 << 20).err(), Some(CodecError::BadMagic));
        assert_eq!(Reader::open(&bytes[..4], b"HRTHTEST", 1 << 20).err(), Some(CodecError::BadMagic));
    }

    #[test]
    fn what_was_written_reads_back_and_reading_past_the_end_is_malformed() {
        let bytes = framed();
        let mut r = Reader::open(&bytes, b"HRTHTEST", 1 << 20).unwrap().checked_sha256(0).unwrap();
        assert_eq!((r.u8(), r.u16(), r.u32(), r.f32s(1), r.string()), (Ok(1), Ok(2), Ok(3), Ok(vec![1.5]), Ok("é".into())));
        assert_eq!(r.end("x"), Ok(()));
        assert_eq!(r.u8(), Err(CodecError::Malformed("unexpected end of input")));
    }

    #[test]
    fn any_flipped_bit_after_the_magic_fails_the_checksum_and_a_cut_trailer_is_refused() {
        let bytes = framed();
        for i in 8..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1;
            assert_eq!(Reader::open(&b, b"HRTHTEST", 1 << 20).unwrap().checked_sha256(0).err(), Some(CodecError::Checksum), "flip at {i}");
        }
        assert!(Reader::open(&bytes[..39], b"HRTHTEST", 1 << 20).unwrap().checked_sha256(0).is_err());
    }

    #[test]
    fn a_length_beyond_the_input_is_refused_before_allocating() {
        assert!(Reader::new(&[0xff, 0xff, 1]).string().is_err());
        assert!(Reader::new(&[]).f32s(usize::MAX).is_err());
    }
}
