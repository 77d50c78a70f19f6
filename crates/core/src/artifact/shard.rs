//! The `CatalogShard` format that ships a model's item embeddings to devices: int8 rows with one
//! scale per item ([`crate::quant`]), and the item ids they belong to.
//!
//! Layout (little-endian, framed by [`crate::codec`]):
//! `b"HRTHSHRD"` · version u32 (=1) · dim u32 · count u32 · model version (u16 length, UTF-8) ·
//! per item: id (u16 length, UTF-8) · scales f32 × count · rows i8 × count × dim ·
//! SHA-256 of everything before (32 bytes).
//!
//! ```
//! use hearth_core::artifact::shard::CatalogShard;
//! let shard = CatalogShard::from_f32("7", vec!["a".into(), "b".into()], 2, &[1.0, -0.5, 0.25, 0.5])
//!     .unwrap();
//! let back = CatalogShard::decode(&shard.encode()).unwrap();
//! assert_eq!(back, shard);
//! ```

use std::collections::HashSet;

use crate::codec::{CodecError, Reader, Writer};
use crate::quant::{CatalogView, MAX_DIM, QuantError, check_shape, offset, quantize_into};

/// Magic bytes of a catalog shard.
pub const SHARD_MAGIC: &[u8; 8] = b"HRTHSHRD";
/// Current catalog shard version.
pub const SHARD_VERSION: u32 = 1;
/// Largest shard `decode` accepts by default (1 GiB).
pub const MAX_SHARD_BYTES: usize = 1 << 30;

/// Why a shard could not be decoded. Each kind of damage has its own variant.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ShardError {
    /// Larger than the limit given to [`CatalogShard::decode_with_limit`].
    #[error("catalog shard of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Input size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes do not start with the shard magic.
    #[error("not a hearth catalog shard (bad magic)")]
    BadMagic,
    /// A version this build does not read.
    #[error("catalog shard version {0} is not supported (this build reads version {SHARD_VERSION})")]
    UnsupportedVersion(u32),
    /// The checksum does not match the contents.
    #[error("catalog shard checksum mismatch (corrupt file)")]
    Checksum,
    /// The structure is inconsistent: truncated, trailing bytes, bad lengths.
    #[error("catalog shard is truncated or malformed: {0}")]
    Malformed(&'static str),
    /// Well-formed, but a value breaks an invariant.
    #[error("catalog shard holds an invalid value: {0}")]
    Invalid(#[from] QuantError),
}

/// A model's item embeddings, int8 with one scale per item, and the item ids they belong to.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogShard {
    model_version: String,
    dim: usize,
    ids: Vec<String>,
    scales: Vec<f32>,
    rows: Vec<i8>,
}

impl CatalogShard {
    /// Quantizes `values` (`ids.len() × dim`, item-major) into a shard.
    pub fn from_f32(model_version: &str, ids: Vec<String>, dim: usize, values: &[f32]) -> Result<Self, QuantError> {
        check_shape(dim, ids.len(), values.len())?;
        let mut rows = vec![0i8; values.len()];
        let mut scales = Vec::with_capacity(ids.len());
        for (i, (src, dst)) in values.chunks_exact(dim).zip(rows.chunks_exact_mut(dim)).enumerate() {
            scales.push(quantize_into(src, dst).map_err(|e| offset(e, i * dim))?);
        }
        Self::from_parts(model_version, ids, dim, scales, rows)
    }

    /// Assembles a shard from already quantized parts, checking every invariant.
    pub fn from_parts(
        model_version: &str,
        ids: Vec<String>,
        dim: usize,
        scales: Vec<f32>,
        rows: Vec<i8>,
    ) -> Result<Self, QuantError> {
        CatalogView::new(dim, &scales, &rows)?;
        if ids.len() != scales.len() {
            return Err(QuantError::Shape(format!("{} ids for {} scales", ids.len(), scales.len())));
        }
        for s in ids.iter().map(String::as_str).chain([model_version]) {
            if s.len() > u16::MAX as usize {
                return Err(QuantError::LongString(s.len()));
            }
        }
        let mut seen = HashSet::with_capacity(ids.len());
        if let Some(dup) = ids.iter().find(|id| !seen.insert(id.as_str())) {
            return Err(QuantError::DuplicateId(dup.clone()));
        }
        Ok(CatalogShard { model_version: model_version.to_owned(), dim, ids, scales, rows })
    }

    /// The model version these embeddings come from.
    pub fn model_version(&self) -> &str {
        &self.model_version
    }

    /// Embedding width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when the shard holds no items.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Item ids, by index.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// The rows and scales, for scoring.
    pub fn view(&self) -> CatalogView<'_> {
        CatalogView::trusted(self.dim, &self.scales, &self.rows)
    }

    /// Item `i` dequantized (`q * scale`).
    pub fn dequantize(&self, i: usize) -> Vec<f32> {
        self.view().dequantize(i)
    }

    /// Serialises to bytes.
    pub fn encode(&self) -> Vec<u8> {
        let ids: usize = self.ids.iter().map(|s| 2 + s.len()).sum();
        let mut w = Writer::new(SHARD_MAGIC);
        w.reserve(14 + self.model_version.len() + ids + self.scales.len() * 4 + self.rows.len() + 32);
        w.u32(SHARD_VERSION).u32(self.dim as u32).u32(self.ids.len() as u32);
        for s in std::iter::once(&self.model_version).chain(&self.ids) {
            w.string(s);
        }
        w.f32s(&self.scales);
        let rows: Vec<u8> = self.rows.iter().map(|&v| v as u8).collect();
        w.bytes(&rows);
        w.finish_sha256()
    }

    /// Parses bytes with the default [`MAX_SHARD_BYTES`] limit. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, ShardError> {
        Self::decode_with_limit(bytes, MAX_SHARD_BYTES)
    }

    /// Parses bytes, refusing inputs over `limit` bytes before reading them.
    ///
    /// Checks, in order: size, magic, version, checksum, structure (every length against the bytes
    /// that remain, before allocating), then the value invariants of [`CatalogShard::from_parts`].
    pub fn decode_with_limit(bytes: &[u8], limit: usize) -> Result<Self, ShardError> {
        let mut r = Reader::open(bytes, SHARD_MAGIC, limit)?;
        let version = r.u32()?;
        if version != SHARD_VERSION {
            return Err(ShardError::UnsupportedVersion(version));
        }
        let mut r = r.checked_sha256(0)?;
        let dim = r.u32()? as usize;
        let count = r.u32()? as usize;
        if dim == 0 || dim > MAX_DIM {
            return Err(ShardError::Malformed("dimension is 0 or above the maximum"));
        }
        // Each item needs at least 2 (id length) + 4 (scale) + dim bytes: refuse counts the input
        // cannot hold before reserving anything for them.
        if count.saturating_mul(6 + dim) > r.remaining() {
            return Err(ShardError::Malformed("item count exceeds what the file holds"));
        }
        let model_version = r.string()?;
        let mut ids = Vec::with_capacity(count);
        for _ in 0..count {
            ids.push(r.string()?);
        }
        let scales = r.f32s(count)?;
        let rows = r.take(count * dim)?.iter().map(|&b| b as i8).collect();
        r.end("trailing bytes after the rows")?;
        Ok(Self::from_parts(&model_version, ids, dim, scales, rows)?)
    }
}

impl From<CodecError> for ShardError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::TooLarge { size, limit } => ShardError::TooLarge { size, limit },
            CodecError::BadMagic => ShardError::BadMagic,
            CodecError::Checksum => ShardError::Checksum,
            CodecError::Malformed(m) => ShardError::Malformed(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{QuantizedVector, quantize};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn sample(n: usize, dim: usize, seed: u64) -> CatalogShard {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let values: Vec<f32> = (0..n * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        let ids = (0..n).map(|i| format!("item-{i}")).collect();
        CatalogShard::from_f32("3", ids, dim, &values).unwrap()
    }

    #[test]
    fn quantization_is_symmetric_and_bounded() {
        let q = quantize(&[0.5, -1.0, 0.0, 0.999]).unwrap();
        assert_eq!(q.values, vec![64, -127, 0, 127]);
        assert_eq!(q.scale, 1.0 / 127.0);
        assert_eq!(quantize(&[0.0, 0.0]).unwrap(), QuantizedVector { values: vec![0, 0], scale: 0.0 });
        assert_eq!(quantize(&[1.0, f32::NAN]), Err(QuantError::NonFinite { index: 1 }));
        assert_eq!(quantize(&[f32::MAX]), Err(QuantError::TooLarge { index: 0 }));
        // Per-item error is at most half a step.
        let s = sample(50, 33, 1);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let values: Vec<f32> = (0..50 * 33).map(|_| rng.random_range(-1.0..1.0)).collect();
        for i in 0..50 {
            let step = s.view().scales()[i];
            for (a, b) in s.dequantize(i).iter().zip(&values[i * 33..(i + 1) * 33]) {
                assert!((a - b).abs() <= step * 0.5 + 1e-6);
            }
        }
    }

    #[test]
    fn roundtrip() {
        for (n, d) in [(0, 1), (1, 1), (7, 33), (100, 64)] {
            let s = sample(n, d, 2);
            assert_eq!(CatalogShard::decode(&s.encode()).unwrap(), s);
        }
    }

    #[test]
    fn every_truncation_and_bit_flip_is_an_error() {
        let bytes = sample(5, 9, 3).encode();
        for len in 0..bytes.len() {
            assert!(CatalogShard::decode(&bytes[..len]).is_err(), "truncated to {len}");
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(CatalogShard::decode(&b).is_err(), "byte {i} bit {bit}");
            }
        }
    }

    /// Re-seals a modified body so the structural checks behind the checksum are reached.
    fn reseal(mut body: Vec<u8>) -> Vec<u8> {
        let d = ring::digest::digest(&ring::digest::SHA256, &body);
        body.extend_from_slice(d.as_ref());
        body
    }

    /// A small shard's bytes without their SHA-256 trailer, and the offsets of its first row and
    /// first scale.
    fn body() -> (Vec<u8>, usize, usize) {
        let bytes = sample(4, 8, 4).encode();
        let body = bytes[..bytes.len() - 32].to_vec();
        let first_row = body.len() - 4 * 8;
        (body, first_row, first_row - 4 * 4)
    }

    #[test]
    fn too_large_another_magic_another_version_and_a_flipped_bit_are_distinct_errors() {
        let bytes = sample(4, 8, 4).encode();
        assert_eq!(CatalogShard::decode_with_limit(&bytes, 10), Err(ShardError::TooLarge { size: bytes.len(), limit: 10 }));
        assert_eq!(CatalogShard::decode(b"HRTHTNSR\x01\0\0\0"), Err(ShardError::BadMagic));
        let mut v2 = body().0;
        v2[8] = 2;
        assert_eq!(CatalogShard::decode(&reseal(v2)), Err(ShardError::UnsupportedVersion(2)));
        let mut flipped = bytes.clone();
        let last = bytes.len() - 40;
        flipped[last] ^= 1;
        assert_eq!(CatalogShard::decode(&flipped), Err(ShardError::Checksum));
    }

    #[test]
    fn a_row_value_of_minus_128_or_a_nan_scale_is_invalid() {
        let (body, first_row, first_scale) = body();
        let mut neg = body.clone();
        neg[first_row] = 0x80;
        assert!(matches!(CatalogShard::decode(&reseal(neg)), Err(ShardError::Invalid(QuantError::OutOfRange { index: 0 }))));
        let mut nan = body;
        nan[first_scale..first_scale + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(matches!(CatalogShard::decode(&reseal(nan)), Err(ShardError::Invalid(QuantError::BadScale { index: 0, .. }))));
    }

    #[test]
    fn a_count_beyond_the_bytes_present_is_refused_before_allocating_and_trailing_bytes_are_malformed() {
        let (body, _, _) = body();
        let mut huge = body.clone();
        huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(CatalogShard::decode(&reseal(huge)), Err(ShardError::Malformed("item count exceeds what the file holds")));
        let mut trailing = body;
        trailing.push(0);
        assert_eq!(CatalogShard::decode(&reseal(trailing)), Err(ShardError::Malformed("trailing bytes after the rows")));
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let dup = CatalogShard::from_parts("1", vec!["a".into(), "a".into()], 1, vec![1.0, 1.0], vec![1, 2]);
        assert_eq!(dup, Err(QuantError::DuplicateId("a".into())));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = CatalogShard::decode(&bytes);
            let mut framed = SHARD_MAGIC.to_vec();
            framed.extend_from_slice(&SHARD_VERSION.to_le_bytes());
            framed.extend_from_slice(&bytes);
            if let Ok(s) = CatalogShard::decode(&reseal(framed.clone())) {
                proptest::prop_assert_eq!(s.encode(), reseal(framed));
            }
        }
    }
}

