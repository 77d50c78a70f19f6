//! Symmetric int8 quantization and the `CatalogShard` format that ships item embeddings.
//!
//! Each vector `v` is stored as `q = round(v / s)` with `s = max|v| / 127`, so every value lies in
//! `[-127, 127]`. `-128` never occurs, and that is an invariant the scorers rely on: the AVX2
//! kernel multiplies with `vpmaddubsw(|q|, sign(u, q))`, which is exact only without `-128`
//! (|q| would stay -128). A dot product of two quantized vectors is an exact `i32` (at most
//! `127 * 127 * 4096 < 2^26`; below 2^24 for the widths we ship, so it converts to f32 exactly),
//! and the score of an item is `f32(dot) * item_scale`, then times the query's scale: the same two
//! correctly rounded multiplications on every scorer.
//!
//! `CatalogShard` layout (little-endian):
//! `b"HRTHSHRD"` · version u32 (=1) · dim u32 · count u32 · model version (u16 length, UTF-8) ·
//! per item: id (u16 length, UTF-8) · scales f32 × count · rows i8 × count × dim ·
//! SHA-256 of everything before (32 bytes).
//!
//! ```
//! use hearth_core::quant::{CatalogShard, quantize};
//! let shard = CatalogShard::from_f32("7", vec!["a".into(), "b".into()], 2, &[1.0, -0.5, 0.25, 0.5])
//!     .unwrap();
//! let back = CatalogShard::decode(&shard.encode()).unwrap();
//! assert_eq!(back, shard);
//! assert_eq!(quantize(&[2.0, -1.0]).unwrap().values, vec![127, -64]);
//! ```

use std::collections::HashSet;

/// Magic bytes of a catalog shard.
pub const SHARD_MAGIC: &[u8; 8] = b"HRTHSHRD";
/// Current catalog shard version.
pub const SHARD_VERSION: u32 = 1;
/// Largest shard `decode` accepts by default (1 GiB).
pub const MAX_SHARD_BYTES: usize = 1 << 30;
/// Widest embedding a shard may hold.
pub const MAX_DIM: usize = 4096;
/// Largest scale a shard may hold: keeps every score finite (`127² · 4096 · 1e30 < f32::MAX`).
pub const MAX_SCALE: f32 = 1e30;

/// Why a vector could not be quantized or a catalog could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum QuantError {
    /// A value is NaN or infinite.
    #[error("value {index} is not finite")]
    NonFinite {
        /// Flat index of the value.
        index: usize,
    },
    /// The vector is too large to quantize with a scale of at most [`MAX_SCALE`].
    #[error("value {index} is too large to quantize")]
    TooLarge {
        /// Flat index of the value.
        index: usize,
    },
    /// Sizes do not agree.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// An int8 value is -128, which symmetric quantization never produces.
    #[error("row value {index} is -128 (outside the symmetric range)")]
    OutOfRange {
        /// Flat index of the value.
        index: usize,
    },
    /// A scale is negative, not finite, or above [`MAX_SCALE`].
    #[error("scale of item {index} is {value} (must be finite, >= 0 and <= {MAX_SCALE})")]
    BadScale {
        /// Item index.
        index: usize,
        /// The scale.
        value: f32,
    },
    /// Two items share an id.
    #[error("item id {0:?} occurs twice")]
    DuplicateId(String),
    /// An id or the model version is longer than its u16 length field allows.
    #[error("string of {0} bytes is too long (at most 65535)")]
    LongString(usize),
}

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

/// A quantized vector: `values[i] * scale` approximates the original.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedVector {
    /// Values in `[-127, 127]`.
    pub values: Vec<i8>,
    /// Scale (>= 0, finite).
    pub scale: f32,
}

/// Quantizes one vector (for a query, or a single item). Errors on NaN or infinity.
pub fn quantize(v: &[f32]) -> Result<QuantizedVector, QuantError> {
    let mut values = vec![0; v.len()];
    let scale = quantize_into(v, &mut values).map_err(|e| offset(e, 0))?;
    Ok(QuantizedVector { values, scale })
}

/// Quantizes `v` into `out` (same length) and returns the scale.
fn quantize_into(v: &[f32], out: &mut [i8]) -> Result<f32, QuantError> {
    let mut max = 0f32;
    for (index, &x) in v.iter().enumerate() {
        if !x.is_finite() {
            return Err(QuantError::NonFinite { index });
        }
        max = max.max(x.abs());
    }
    let scale = max / 127.0;
    if scale > MAX_SCALE {
        return Err(QuantError::TooLarge { index: 0 });
    }
    if scale == 0.0 {
        out.fill(0);
        return Ok(0.0);
    }
    for (o, &x) in out.iter_mut().zip(v) {
        // |x / scale| <= 127 up to rounding; the clamp makes -128 impossible.
        *o = (x / scale).round().clamp(-127.0, 127.0) as i8;
    }
    Ok(scale)
}

fn offset(e: QuantError, base: usize) -> QuantError {
    match e {
        QuantError::NonFinite { index } => QuantError::NonFinite { index: base + index },
        QuantError::TooLarge { .. } => QuantError::TooLarge { index: base },
        other => other,
    }
}

/// `items` rows of `dim` values must hold exactly `values` values, with `dim` in `1..=MAX_DIM`.
fn check_shape(dim: usize, items: usize, values: usize) -> Result<(), QuantError> {
    if dim == 0 || dim > MAX_DIM {
        return Err(QuantError::Shape(format!("dimension {dim} is not in 1..={MAX_DIM}")));
    }
    if items.checked_mul(dim) != Some(values) {
        let need = items.saturating_mul(dim);
        return Err(QuantError::Shape(format!("{items} items of {dim} values need {need} values, found {values}")));
    }
    Ok(())
}

/// Validated int8 rows and scales, borrowed: what the scorers read.
///
/// Invariants (checked by [`CatalogView::new`]): `rows.len() == scales.len() * dim`, no row value
/// is -128, every scale is finite, non-negative and at most [`MAX_SCALE`].
#[derive(Debug, Clone, Copy)]
pub struct CatalogView<'a> {
    dim: usize,
    scales: &'a [f32],
    rows: &'a [i8],
}

impl<'a> CatalogView<'a> {
    /// Checks the invariants once, so scoring need not.
    pub fn new(dim: usize, scales: &'a [f32], rows: &'a [i8]) -> Result<Self, QuantError> {
        check_shape(dim, scales.len(), rows.len())?;
        if let Some(index) = rows.iter().position(|&v| v == i8::MIN) {
            return Err(QuantError::OutOfRange { index });
        }
        if let Some((index, &value)) =
            scales.iter().enumerate().find(|&(_, &s)| !(s.is_finite() && (0.0..=MAX_SCALE).contains(&s)))
        {
            return Err(QuantError::BadScale { index, value });
        }
        Ok(CatalogView { dim, scales, rows })
    }

    /// Embedding width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.scales.len()
    }

    /// True when there are no items.
    pub fn is_empty(&self) -> bool {
        self.scales.is_empty()
    }

    /// All scales, by item.
    pub fn scales(&self) -> &'a [f32] {
        self.scales
    }

    /// All rows, item-major.
    pub fn rows(&self) -> &'a [i8] {
        self.rows
    }

    /// Item `i` dequantized (`q * scale`): the vector scoring sees.
    pub fn dequantize(&self, i: usize) -> Vec<f32> {
        let s = self.scales[i];
        self.row(i).iter().map(|&q| f32::from(q) * s).collect()
    }

    /// The int8 row of item `i`.
    pub fn row(&self, i: usize) -> &'a [i8] {
        &self.rows[i * self.dim..(i + 1) * self.dim]
    }

    /// Items `range` as a view of their own (indices restart at 0).
    pub fn slice(&self, range: std::ops::Range<usize>) -> CatalogView<'a> {
        CatalogView {
            dim: self.dim,
            scales: &self.scales[range.clone()],
            rows: &self.rows[range.start * self.dim..range.end * self.dim],
        }
    }
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
        CatalogView { dim: self.dim, scales: &self.scales, rows: &self.rows }
    }

    /// Item `i` dequantized (`q * scale`).
    pub fn dequantize(&self, i: usize) -> Vec<f32> {
        self.view().dequantize(i)
    }

    /// Serialises to bytes.
    pub fn encode(&self) -> Vec<u8> {
        let ids: usize = self.ids.iter().map(|s| 2 + s.len()).sum();
        let mut out = Vec::with_capacity(8 + 14 + self.model_version.len() + ids + self.scales.len() * 4 + self.rows.len() + 32);
        out.extend_from_slice(SHARD_MAGIC);
        out.extend_from_slice(&SHARD_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.dim as u32).to_le_bytes());
        out.extend_from_slice(&(self.ids.len() as u32).to_le_bytes());
        for s in std::iter::once(&self.model_version).chain(&self.ids) {
            out.extend_from_slice(&(s.len() as u16).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        for s in &self.scales {
            out.extend_from_slice(&s.to_le_bytes());
        }
        out.extend(self.rows.iter().map(|&v| v as u8));
        let digest = crate::artifact::sha256(&out);
        out.extend_from_slice(digest.as_ref());
        out
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
        if bytes.len() > limit {
            return Err(ShardError::TooLarge { size: bytes.len(), limit });
        }
        if bytes.len() < 8 || &bytes[..8] != SHARD_MAGIC {
            return Err(ShardError::BadMagic);
        }
        let mut r = Reader { bytes, pos: 8 };
        let version = r.u32()?;
        if version != SHARD_VERSION {
            return Err(ShardError::UnsupportedVersion(version));
        }
        let body_end = bytes.len().checked_sub(32).filter(|&e| e >= 12).ok_or(ShardError::Malformed("shorter than its header and checksum"))?;
        let digest = crate::artifact::sha256(&bytes[..body_end]);
        if digest.as_ref() != &bytes[body_end..] {
            return Err(ShardError::Checksum);
        }
        r.bytes = &bytes[..body_end];
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
        let scales = r.take(count * 4)?.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let rows = r.take(count * dim)?.iter().map(|&b| b as i8).collect();
        if r.remaining() != 0 {
            return Err(ShardError::Malformed("trailing bytes after the rows"));
        }
        Ok(Self::from_parts(&model_version, ids, dim, scales, rows)?)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], ShardError> {
        let end = self.pos.checked_add(n).ok_or(ShardError::Malformed("length overflows"))?;
        let s = self.bytes.get(self.pos..end).ok_or(ShardError::Malformed("unexpected end of file"))?;
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, ShardError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self) -> Result<String, ShardError> {
        let b = self.take(2)?;
        let len = u16::from_le_bytes([b[0], b[1]]) as usize;
        let s = std::str::from_utf8(self.take(len)?).map_err(|_| ShardError::Malformed("a string is not UTF-8"))?;
        Ok(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn distinct_errors_for_each_kind_of_damage() {
        let s = sample(4, 8, 4);
        let bytes = s.encode();
        let body = bytes[..bytes.len() - 32].to_vec();
        assert_eq!(CatalogShard::decode_with_limit(&bytes, 10), Err(ShardError::TooLarge { size: bytes.len(), limit: 10 }));
        assert_eq!(CatalogShard::decode(b"HRTHTNSR\x01\0\0\0"), Err(ShardError::BadMagic));
        let mut v2 = body.clone();
        v2[8] = 2;
        assert_eq!(CatalogShard::decode(&reseal(v2)), Err(ShardError::UnsupportedVersion(2)));
        let mut flipped = bytes.clone();
        let last = bytes.len() - 40;
        flipped[last] ^= 1;
        assert_eq!(CatalogShard::decode(&flipped), Err(ShardError::Checksum));
        // A row value of -128.
        let mut neg = body.clone();
        let first_row = body.len() - 4 * 8;
        neg[first_row] = 0x80;
        assert!(matches!(CatalogShard::decode(&reseal(neg)), Err(ShardError::Invalid(QuantError::OutOfRange { index: 0 }))));
        // A NaN scale.
        let mut nan = body.clone();
        let first_scale = first_row - 4 * 4;
        nan[first_scale..first_scale + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(matches!(CatalogShard::decode(&reseal(nan)), Err(ShardError::Invalid(QuantError::BadScale { index: 0, .. }))));
        // A count far beyond the bytes present: refused before allocating.
        let mut huge = body.clone();
        huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(CatalogShard::decode(&reseal(huge)), Err(ShardError::Malformed("item count exceeds what the file holds")));
        // Trailing bytes.
        let mut trailing = body.clone();
        trailing.push(0);
        assert_eq!(CatalogShard::decode(&reseal(trailing)), Err(ShardError::Malformed("trailing bytes after the rows")));
        // Duplicate ids.
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
