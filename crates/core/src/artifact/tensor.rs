//! The `TensorFile` format that holds named f32 tensors (global or personal parameters).
//!
//! `TensorFile` layout (little-endian):
//! `b"HRTHTNSR"` · version u8 (=1) · count u32 · per tensor: name length u16, name (UTF-8),
//! rank u8, dims u32 × rank, f32 × product(dims) · SHA-256 of everything before (32 bytes).
//!
//! ```
//! use hearth_core::artifact::TensorFile;
//! let mut f = TensorFile::default();
//! f.insert("w", vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]);
//! let bytes = f.encode();
//! assert_eq!(TensorFile::decode(&bytes).unwrap(), f);
//! ```

use std::collections::BTreeMap;

use crate::codec::{CodecError, Reader, Writer};

/// Magic bytes of a tensor file.
pub const TENSOR_MAGIC: &[u8; 8] = b"HRTHTNSR";
/// Current tensor file version.
pub const TENSOR_VERSION: u8 = 1;
/// Largest tensor file `decode` accepts (1 GiB): anything larger is refused before allocation.
pub const MAX_TENSOR_FILE: usize = 1 << 30;

/// Why an artifact could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ArtifactError {
    /// The bytes do not start with the expected magic.
    #[error("not a hearth tensor file (bad magic)")]
    BadMagic,
    /// The file's version is not one this build reads.
    #[error("tensor file version {0} is not supported (this build reads version {TENSOR_VERSION})")]
    UnsupportedVersion(u8),
    /// The file ends early or has bytes left over.
    #[error("tensor file is truncated or malformed: {0}")]
    Malformed(&'static str),
    /// The checksum does not match the contents.
    #[error("tensor file checksum mismatch (corrupt file)")]
    Checksum,
    /// Larger than [`MAX_TENSOR_FILE`].
    #[error("tensor file of {0} bytes exceeds the {MAX_TENSOR_FILE}-byte limit")]
    TooLarge(usize),
    /// A required tensor is absent.
    #[error("tensor {0:?} is missing")]
    MissingTensor(String),
    /// A tensor has another shape than the manifest says.
    #[error("tensor {name:?} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// Tensor name.
        name: String,
        /// Shape in the file.
        found: Vec<usize>,
        /// Shape the manifest implies.
        expected: Vec<usize>,
    },
}

/// One named tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// A set of named f32 tensors, ordered by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TensorFile {
    /// Tensors by name.
    pub tensors: BTreeMap<String, NamedTensor>,
}

impl TensorFile {
    /// Adds (or replaces) a tensor.
    ///
    /// # Panics
    /// If `values.len()` is not the product of `shape` (a programming error, not input).
    pub fn insert(&mut self, name: &str, shape: Vec<usize>, values: Vec<f32>) {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "shape does not match values");
        self.tensors.insert(name.to_owned(), NamedTensor { shape, values });
    }

    /// The tensor `name`, checked to have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<&NamedTensor, ArtifactError> {
        let t = self.tensors.get(name).ok_or_else(|| ArtifactError::MissingTensor(name.to_owned()))?;
        if t.shape != shape {
            return Err(ArtifactError::ShapeMismatch {
                name: name.to_owned(),
                found: t.shape.clone(),
                expected: shape.to_vec(),
            });
        }
        Ok(t)
    }

    /// Serialises to bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(TENSOR_MAGIC);
        w.u8(TENSOR_VERSION).u32(self.tensors.len() as u32);
        for (name, t) in &self.tensors {
            w.string(name).u8(t.shape.len() as u8);
            for &d in &t.shape {
                w.u32(d as u32);
            }
            w.f32s(&t.values);
        }
        w.finish_sha256()
    }

    /// Parses bytes, checking magic, version, structure and checksum. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<TensorFile, ArtifactError> {
        Self::decode_inner(bytes, true)
    }

    /// Parses bytes whose SHA-256, trailer included, was just checked against a digest recorded
    /// elsewhere (a model manifest's): the trailer then proves nothing more, so it is not hashed
    /// again (on a device that is a megabyte of hashing saved on the way to the first
    /// recommendations). Magic, version and structure are checked as by [`TensorFile::decode`].
    /// Never panics.
    pub fn decode_digest_verified(bytes: &[u8]) -> Result<TensorFile, ArtifactError> {
        Self::decode_inner(bytes, false)
    }

    fn decode_inner(bytes: &[u8], check_trailer: bool) -> Result<TensorFile, ArtifactError> {
        let mut r = Reader::open(bytes, TENSOR_MAGIC, MAX_TENSOR_FILE)?;
        let version = r.u8()?;
        if version != TENSOR_VERSION {
            return Err(ArtifactError::UnsupportedVersion(version));
        }
        let mut r = if check_trailer { r.checked_sha256(0)? } else { r.without_trailer(0)? };
        let count = r.u32()? as usize;
        let mut tensors = BTreeMap::new();
        for _ in 0..count {
            let name = r.string()?;
            let rank = r.u8()? as usize;
            let mut shape = Vec::with_capacity(rank);
            let mut n: usize = 1;
            for _ in 0..rank {
                let d = r.u32()? as usize;
                n = n.checked_mul(d).ok_or(ArtifactError::Malformed("tensor size overflows"))?;
                shape.push(d);
            }
            let values = r.f32s(n)?;
            if tensors.insert(name, NamedTensor { shape, values }).is_some() {
                return Err(ArtifactError::Malformed("duplicate tensor name"));
            }
        }
        r.end("trailing bytes after the last tensor")?;
        Ok(TensorFile { tensors })
    }
}

impl From<CodecError> for ArtifactError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::TooLarge { size, .. } => ArtifactError::TooLarge(size),
            CodecError::BadMagic => ArtifactError::BadMagic,
            CodecError::Checksum => ArtifactError::Checksum,
            CodecError::Malformed(m) => ArtifactError::Malformed(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TensorFile {
        let mut f = TensorFile::default();
        f.insert("a", vec![2, 3], (0..6).map(|i| i as f32).collect());
        f.insert("b", vec![1], vec![-1.5]);
        f
    }

    #[test]
    fn roundtrip_and_shape_checks() {
        let f = sample();
        let g = TensorFile::decode(&f.encode()).unwrap();
        assert_eq!(g, f);
        assert!(g.get("a", &[2, 3]).is_ok());
        assert!(matches!(g.get("a", &[3, 2]), Err(ArtifactError::ShapeMismatch { .. })));
        assert_eq!(g.get("zz", &[1]), Err(ArtifactError::MissingTensor("zz".into())));
    }

    #[test]
    fn every_truncation_and_bit_flip_is_an_error() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            assert!(TensorFile::decode(&bytes[..n]).is_err(), "truncated to {n}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(TensorFile::decode(&b).is_err(), "flip at {i}");
            // Without the trailer check a flip in the values goes unseen (the manifest's digest
            // catches it, see bundle's tests), but the structure is still checked: no panic.
            let _ = TensorFile::decode_digest_verified(&b);
        }
        assert_eq!(TensorFile::decode_digest_verified(&bytes), Ok(sample()));
        let mut b = bytes.clone();
        b[0] ^= 1;
        assert_eq!(TensorFile::decode_digest_verified(&b), Err(ArtifactError::BadMagic));
        let mut b = bytes.clone();
        b[8] = 9;
        assert_eq!(TensorFile::decode(&b), Err(ArtifactError::UnsupportedVersion(9)));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = TensorFile::decode(&bytes);
            // Also with a valid header and checksum, so the structure parser itself is exercised.
            let mut b = TENSOR_MAGIC.to_vec();
            b.push(TENSOR_VERSION);
            b.extend_from_slice(&bytes);
            let d = ring::digest::digest(&ring::digest::SHA256, &b);
            b.extend_from_slice(d.as_ref());
            let _ = TensorFile::decode(&b);
        }
    }
}

