//! Symmetric int8 quantization, and [`CatalogView`], the borrowed int8 rows every scorer reads.
//!
//! Each vector `v` is stored as `q = round(v / s)` with `s = max|v| / 127`, so every value lies in
//! `[-127, 127]`. `-128` never occurs, and that is an invariant the scorers rely on: the AVX2
//! kernel multiplies with `vpmaddubsw(|q|, sign(u, q))`, which is exact only without `-128`
//! (|q| would stay -128). A dot product of two quantized vectors is an exact `i32` (at most
//! `127 * 127 * 4096 < 2^26`; below 2^24 for the widths we ship, so it converts to f32 exactly),
//! and the score of an item is `f32(dot) * item_scale`, then times the query's scale: the same two
//! correctly rounded multiplications on every scorer.
//!
//! The file that ships them is [`crate::artifact::shard::CatalogShard`].
//!
//! ```
//! use hearth_core::quant::quantize;
//! assert_eq!(quantize(&[2.0, -1.0]).unwrap().values, vec![127, -64]);
//! ```

/// Widest embedding a catalog (or a fine-tuning offset) may have.
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
pub(crate) fn quantize_into(v: &[f32], out: &mut [i8]) -> Result<f32, QuantError> {
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

pub(crate) fn offset(e: QuantError, base: usize) -> QuantError {
    match e {
        QuantError::NonFinite { index } => QuantError::NonFinite { index: base + index },
        QuantError::TooLarge { .. } => QuantError::TooLarge { index: base },
        other => other,
    }
}

/// `items` rows of `dim` values must hold exactly `values` values, with `dim` in `1..=MAX_DIM`.
pub(crate) fn check_shape(dim: usize, items: usize, values: usize) -> Result<(), QuantError> {
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

    /// A view of parts that passed [`CatalogView::new`] when their owner was built (a shard
    /// checks once, then hands out views for every query without rescanning).
    pub(crate) fn trusted(dim: usize, scales: &'a [f32], rows: &'a [i8]) -> Self {
        debug_assert_eq!(rows.len(), scales.len() * dim);
        CatalogView { dim, scales, rows }
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
