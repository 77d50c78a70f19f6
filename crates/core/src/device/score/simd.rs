//! CPU kernels: AVX-512 VNNI and AVX2 (x86-64, detected at run time, the best one chosen),
//! `simd128` (wasm32, when compiled with the target feature) and a portable loop. Each offers
//! `(base + i, f32(dot) * scale_i)` for every item `i` of the view, in increasing `i`, to a
//! [`TopK`], with the same exact `i32` dot products: every kernel returns the same hits.
//!
//! The only `unsafe` code of hearth-core is here: SIMD intrinsics on pointers into slices whose
//! bounds each block checks first.
#![allow(unsafe_code)]

use super::{Hit, TopK};
use crate::quant::CatalogView;

/// The CPU kernels this build can run, in the order the fastest is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuKernel {
    /// `vpdpbusd` (AVX-512 VNNI with 256-bit vectors): one instruction per 32 bytes.
    Avx512Vnni,
    /// `vpmaddubsw` + `vpmaddwd` (AVX2).
    Avx2,
    /// wasm `simd128`.
    Simd128,
    /// A plain integer loop.
    Portable,
}

impl CpuKernel {
    /// Its name, as benchmarks and the page report it.
    pub fn name(self) -> &'static str {
        match self {
            CpuKernel::Avx512Vnni => "avx512vnni",
            CpuKernel::Avx2 => "avx2",
            CpuKernel::Simd128 => "simd128",
            CpuKernel::Portable => "portable",
        }
    }

    /// Whether this CPU (and build) can run it.
    pub fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            CpuKernel::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx512vnni") && std::arch::is_x86_feature_detected!("avx512vl") && std::arch::is_x86_feature_detected!("avx2")
            }
            #[cfg(target_arch = "x86_64")]
            CpuKernel::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            CpuKernel::Simd128 => true,
            CpuKernel::Portable => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Every kernel this CPU can run, fastest first.
    pub fn all_available() -> Vec<CpuKernel> {
        [CpuKernel::Avx512Vnni, CpuKernel::Avx2, CpuKernel::Simd128, CpuKernel::Portable].into_iter().filter(|k| k.available()).collect()
    }

    /// The fastest kernel this CPU can run (detected once).
    pub fn best() -> CpuKernel {
        static BEST: std::sync::OnceLock<CpuKernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| CpuKernel::all_available()[0])
    }
}

pub(super) fn kernel_name() -> &'static str {
    CpuKernel::best().name()
}

/// Scans with the best kernel available.
pub(super) fn scan(view: CatalogView<'_>, q: &[i8], base: u32, top: &mut TopK) {
    scan_with(CpuKernel::best(), view, q, base, top)
}

/// Scans with `kernel`, or the portable loop when this CPU cannot run it.
pub(super) fn scan_with(kernel: CpuKernel, view: CatalogView<'_>, q: &[i8], base: u32, top: &mut TopK) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 VNNI, AVX-512 VL and AVX2 are present (checked by `available`).
        CpuKernel::Avx512Vnni if kernel.available() => unsafe { vnni::scan(view, q, base, top) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 is present (checked by `available`), the only requirement of `avx2::scan`.
        CpuKernel::Avx2 if kernel.available() => unsafe { avx2::scan(view, q, base, top) },
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        CpuKernel::Simd128 => wasm::scan(view, q, base, top),
        _ => scan_portable(view, q, base, top),
    }
}

/// Reads every byte of the view (rows and scales) once with the widest loads available, doing
/// nothing but OR-ing them together: the memory floor any scorer of this view must pay.
pub(super) fn read_floor(view: CatalogView<'_>) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present (checked just above).
        return unsafe { avx2::read_floor(view) };
    }
    let rows = view.rows().iter().fold(0u8, |a, &b| a | b as u8) as u32;
    view.scales().iter().fold(rows, |a, s| a | s.to_bits())
}

/// The portable kernel: a plain integer loop.
pub(super) fn scan_portable(view: CatalogView<'_>, q: &[i8], base: u32, top: &mut TopK) {
    let scales = view.scales();
    for (i, row) in view.rows().chunks_exact(view.dim()).enumerate() {
        let dot: i32 = row.iter().zip(q).map(|(&a, &b)| a as i32 * b as i32).sum();
        let score = dot as f32 * scales[i];
        if score > top.threshold() {
            top.offer(Hit { index: base + i as u32, score });
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::{Hit, TopK};
    use crate::quant::CatalogView;
    use std::arch::x86_64::*;

    /// Sum of one row against the query, 32 bytes at a time, lanes left unreduced.
    ///
    /// `vpmaddubsw(|a|, sign(b, a))` multiplies `a * b` in pairs without saturation because no
    /// value is -128 (a `CatalogView` invariant, and `quantize` clamps queries to ±127): each
    /// pair sum is at most 2 · 127 · 127 = 32258 < 32767. `vpmaddwd` with ones widens to i32.
    ///
    /// # Safety
    /// AVX2 must be available; `row` and `q` must hold at least `chunks * 32` bytes.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn row_acc(row: *const i8, q: *const i8, chunks: usize) -> __m256i {
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_si256();
        for c in 0..chunks {
            // SAFETY: the caller guarantees `chunks * 32` readable bytes behind both pointers;
            // loadu has no alignment requirement.
            let (a, b) = unsafe { (_mm256_loadu_si256(row.add(c * 32).cast()), _mm256_loadu_si256(q.add(c * 32).cast())) };
            let p = _mm256_maddubs_epi16(_mm256_abs_epi8(a), _mm256_sign_epi8(b, a));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones));
        }
        acc
    }

    /// # Safety
    /// AVX2 must be available.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn read_floor(view: CatalogView<'_>) -> u32 {
        let rows = view.rows();
        let mut acc = [_mm256_setzero_si256(); 4];
        let blocks = rows.len() / 128;
        for b in 0..blocks {
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: `b * 128 + j * 32 + 32 <= blocks * 128 <= rows.len()`.
                *a = _mm256_or_si256(*a, unsafe { _mm256_loadu_si256(rows.as_ptr().add(b * 128 + j * 32).cast()) });
            }
        }
        let v = _mm256_or_si256(_mm256_or_si256(acc[0], acc[1]), _mm256_or_si256(acc[2], acc[3]));
        let mut lanes = [0u32; 8];
        // SAFETY: `lanes` is 32 writable bytes.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), v) };
        let tail = rows[blocks * 128..].iter().fold(0u32, |a, &b| a | b as u8 as u32);
        let scales = view.scales().iter().fold(0u32, |a, s| a | s.to_bits());
        lanes.iter().fold(tail | scales, |a, &l| a | l)
    }

    /// Reduces eight accumulators to one vector of their eight sums.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn reduce8(a: [__m256i; 8]) -> __m256i {
        let h01 = _mm256_hadd_epi32(a[0], a[1]);
        let h23 = _mm256_hadd_epi32(a[2], a[3]);
        let h45 = _mm256_hadd_epi32(a[4], a[5]);
        let h67 = _mm256_hadd_epi32(a[6], a[7]);
        let h0123 = _mm256_hadd_epi32(h01, h23);
        let h4567 = _mm256_hadd_epi32(h45, h67);
        let lo = _mm256_permute2x128_si256::<0x20>(h0123, h4567);
        let hi = _mm256_permute2x128_si256::<0x31>(h0123, h4567);
        _mm256_add_epi32(lo, hi)
    }

    /// How far ahead of the scan to prefetch.
    pub(super) const PREFETCH_BYTES: usize = 2048;

    /// Sum of one row against a query held in registers (`C` chunks of 32 bytes).
    ///
    /// # Safety
    /// AVX2 must be available; `row` must hold at least `C * 32` bytes.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn row_acc_fixed<const C: usize>(row: *const i8, q: &[__m256i; C]) -> __m256i {
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_si256();
        for (c, &b) in q.iter().enumerate() {
            // SAFETY: the caller guarantees `C * 32` readable bytes behind `row`.
            let a = unsafe { _mm256_loadu_si256(row.add(c * 32).cast()) };
            let p = _mm256_maddubs_epi16(_mm256_abs_epi8(a), _mm256_sign_epi8(b, a));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones));
        }
        acc
    }

    /// The common widths (32, 64, 128): the query stays in registers and the chunk loop unrolls.
    ///
    /// # Safety
    /// AVX2 must be available.
    #[target_feature(enable = "avx2")]
    unsafe fn scan_fixed<const C: usize>(view: CatalogView<'_>, q: &[i8], base: u32, top: &mut TopK) {
        let dim = C * 32;
        let rows = view.rows();
        let scales = view.scales();
        let n = view.len();
        assert!(view.dim() == dim && q.len() == dim && rows.len() == n * dim && scales.len() == n);
        // SAFETY: `q` has `dim = C * 32` bytes (asserted).
        let qv: [__m256i; C] = std::array::from_fn(|c| unsafe { _mm256_loadu_si256(q.as_ptr().add(c * 32).cast()) });
        let blocks = n / 8;
        for blk in 0..blocks {
            let first = blk * 8;
            // Ask for the rows 2 KiB ahead: the scan keeps more cache-line fills in flight than
            // the hardware prefetcher alone (1e6 x 64 on this machine: 1.21 -> 1.03 x the
            // memory-read floor). A prefetch never faults, even past the end of `rows`, so the
            // address is computed with wrapping arithmetic and never dereferenced.
            let ahead = rows.as_ptr().wrapping_add(first * dim + PREFETCH_BYTES);
            for line in 0..(8 * dim / 64) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line * 64));
            }
            // SAFETY: item `first + j < n` has `dim` bytes at `(first + j) * dim` inside `rows`.
            let acc: [__m256i; 8] = std::array::from_fn(|j| unsafe { row_acc_fixed::<C>(rows.as_ptr().add((first + j) * dim), &qv) });
            // SAFETY: `scales[first..first + 8]` is in bounds.
            let s = unsafe { _mm256_loadu_ps(scales.as_ptr().add(first)) };
            let scores = _mm256_mul_ps(_mm256_cvtepi32_ps(reduce8(acc)), s);
            offer8(scores, base + first as u32, top);
        }
        let rest = view.slice(blocks * 8..n);
        // SAFETY: AVX2 is available (this function's contract).
        unsafe { scan_generic(rest, q, base + (blocks * 8) as u32, top) };
    }

    /// Offers the lanes of `scores` (items `first..first + 8`) that beat the threshold.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn offer8(scores: __m256, first: u32, top: &mut TopK) {
        let above = _mm256_cmp_ps::<_CMP_GT_OQ>(scores, _mm256_set1_ps(top.threshold()));
        let mut mask = _mm256_movemask_ps(above) as u32;
        if mask != 0 {
            let mut out = [0f32; 8];
            // SAFETY: `out` is 32 writable bytes.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), scores) };
            while mask != 0 {
                let j = mask.trailing_zeros();
                mask &= mask - 1;
                // The threshold may have risen since the compare; `offer` decides exactly.
                top.offer(Hit { index: first + j, score: out[j as usize] });
            }
        }
    }

    /// # Safety
    /// AVX2 must be available.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn scan(view: CatalogView<'_>, q: &[i8], base: u32, top: &mut TopK) {
        // SAFETY (each arm): AVX2 is available (this function's contract) and each callee needs nothing else.
        match view.dim() {
            32 => unsafe { scan_fixed::<1>(view, q, base, top) },
            64 => unsafe { scan_fixed::<2>(view, q, base, top) },
            128 => unsafe { scan_fixed::<4>(view, q, base, top) },
            _ => unsafe { scan_generic(view, q, base, top) },
        }
    }

    /// Any width: 32-byte chunks, then a scalar tail.
    ///
    /// # Safety
    /// AVX2 must be available.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn scan_generic(view: CatalogView<'_>, q: &[i8], base: u32, top: &mut TopK) {
        let dim = view.dim();
        let chunks = dim / 32;
        let body = chunks * 32;
        let rows = view.rows();
        let scales = view.scales();
        let n = view.len();
        assert!(q.len() == dim && rows.len() == n * dim && scales.len() == n);
        let tail_dot = |i: usize| -> i32 {
            rows[i * dim + body..(i + 1) * dim].iter().zip(&q[body..]).map(|(&a, &b)| a as i32 * b as i32).sum()
        };
        let blocks = n / 8;
        for blk in 0..blocks {
            let first = blk * 8;
            let mut acc = [_mm256_setzero_si256(); 8];
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: item `first + j < n` starts at `(first + j) * dim` and has `dim >=
                // chunks * 32` bytes inside `rows` (length `n * dim`, asserted above); `q` has `dim`.
                *a = unsafe { row_acc(rows.as_ptr().add((first + j) * dim), q.as_ptr(), chunks) };
            }
            let mut dots = reduce8(acc);
            if body < dim {
                let tails: [i32; 8] = std::array::from_fn(|j| tail_dot(first + j));
                // SAFETY: `tails` is 32 readable bytes.
                dots = _mm256_add_epi32(dots, unsafe { _mm256_loadu_si256(tails.as_ptr().cast()) });
            }
            // SAFETY: `scales[first..first + 8]` is in bounds (`first + 8 <= n`).
            let s = unsafe { _mm256_loadu_ps(scales.as_ptr().add(first)) };
            offer8(_mm256_mul_ps(_mm256_cvtepi32_ps(dots), s), base + first as u32, top);
        }
        // The last n % 8 items, one by one, with the same arithmetic.
        for (i, &scale) in scales.iter().enumerate().skip(blocks * 8) {
            // SAFETY: as above for item `i < n`.
            let acc = unsafe { row_acc(rows.as_ptr().add(i * dim), q.as_ptr(), chunks) };
            let mut lanes = [0i32; 8];
            // SAFETY: `lanes` is 32 writable bytes.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), acc) };
            let dot = lanes.iter().sum::<i32>() + tail_dot(i);
            let score = dot as f32 * scale;
            if score > top.threshold() {
                top.offer(Hit { index: base + i as u32, score });
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::super::TopK;
    use super::avx2::{PREFETCH_BYTES, offer8, reduce8, scan_generic};
    use crate::quant::CatalogView;
    use std::arch::x86_64::*;

    /// Sum of one row against the query (`C` chunks of 32 bytes in registers), lanes unreduced,
    /// plus 128 · (the query's sum over each lane's bytes).
    ///
    /// `vpdpbusd` multiplies unsigned by signed bytes and adds groups of four into i32 lanes,
    /// without saturation. Rows are signed, so each row byte is flipped to `a + 128` (XOR 0x80,
    /// in 0..=255); the products then sum to `dot(a, q) + 128 · Σ q`, which the caller subtracts
    /// exactly. No intermediate overflows: a lane adds at most `C · 4 · 255 · 127 < 2^31`.
    ///
    /// # Safety
    /// AVX-512 VNNI and VL must be available; `row` must hold at least `C * 32` bytes.
    #[inline]
    #[target_feature(enable = "avx2,avx512vnni,avx512vl")]
    unsafe fn row_acc_fixed<const C: usize>(row: *const i8, q: &[__m256i; C]) -> __m256i {
        let flip = _mm256_set1_epi8(i8::MIN);
        let mut acc = _mm256_setzero_si256();
        for (c, &b) in q.iter().enumerate() {
            // SAFETY: the caller guarantees `C * 32` readable bytes behind `row`.
            let a = unsafe { _mm256_loadu_si256(row.add(c * 32).cast()) };
            acc = _mm256_dpbusd_epi32(acc, _mm256_xor_si256(a, flip), b);
        }
        acc
    }

    /// # Safety
    /// AVX-512 VNNI, AVX-512 VL and AVX2 must be available.
    #[target_feature(enable = "avx2,avx512vnni,avx512vl")]
    pub(super) unsafe fn scan(view: CatalogView<'_>, q: &[i8], base: u32, top: &mut TopK) {
        // SAFETY (each arm): the features this function requires are those its callees require.
        match view.dim() {
            32 => unsafe { scan_fixed::<1>(view, q, base, top) },
            64 => unsafe { scan_fixed::<2>(view, q, base, top) },
            128 => unsafe { scan_fixed::<4>(view, q, base, top) },
            _ => unsafe { scan_generic(view, q, base, top) },
        }
    }

    /// The common widths: eight rows per block, the query in registers, prefetch as in AVX2.
    ///
    /// # Safety
    /// AVX-512 VNNI, AVX-512 VL and AVX2 must be available.
    #[target_feature(enable = "avx2,avx512vnni,avx512vl")]
    unsafe fn scan_fixed<const C: usize>(view: CatalogView<'_>, q: &[i8], base: u32, top: &mut TopK) {
        let dim = C * 32;
        let rows = view.rows();
        let scales = view.scales();
        let n = view.len();
        assert!(view.dim() == dim && q.len() == dim && rows.len() == n * dim && scales.len() == n);
        // SAFETY: `q` has `dim = C * 32` bytes (asserted).
        let qv: [__m256i; C] = std::array::from_fn(|c| unsafe { _mm256_loadu_si256(q.as_ptr().add(c * 32).cast()) });
        // What the flipped rows add: 128 · Σ q, the same for every row (|Σ q| ≤ 4096 · 127).
        let bias = _mm256_set1_epi32(128 * q.iter().map(|&v| i32::from(v)).sum::<i32>());
        let blocks = n / 8;
        for blk in 0..blocks {
            let first = blk * 8;
            // See the AVX2 kernel: prefetch never faults, so the address may pass the end.
            let ahead = rows.as_ptr().wrapping_add(first * dim + PREFETCH_BYTES);
            for line in 0..(8 * dim / 64) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line * 64));
            }
            // SAFETY: item `first + j < n` has `dim` bytes at `(first + j) * dim` inside `rows`.
            let acc: [__m256i; 8] = std::array::from_fn(|j| unsafe { row_acc_fixed::<C>(rows.as_ptr().add((first + j) * dim), &qv) });
            let dots = _mm256_sub_epi32(reduce8(acc), bias);
            // SAFETY: `scales[first..first + 8]` is in bounds.
            let s = unsafe { _mm256_loadu_ps(scales.as_ptr().add(first)) };
            offer8(_mm256_mul_ps(_mm256_cvtepi32_ps(dots), s), base + first as u32, top);
        }
        let rest = view.slice(blocks * 8..n);
        // SAFETY: AVX2 is available (this function's contract).
        unsafe { scan_generic(rest, q, base + (blocks * 8) as u32, top) };
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm {
    use super::super::{Hit, TopK};
    use crate::quant::CatalogView;
    use core::arch::wasm32::*;

    /// 16 bytes at a time: sign-extend to i16, `i32x4.dot_i16x8_s`, accumulate in i32.
    pub(super) fn scan(view: CatalogView<'_>, q: &[i8], base: u32, top: &mut TopK) {
        let dim = view.dim();
        let chunks = dim / 16;
        let body = chunks * 16;
        let scales = view.scales();
        // The query, pre-extended to i16 halves.
        let qv: Vec<(v128, v128)> = q[..body]
            .chunks_exact(16)
            .map(|c| {
                let v = i8x16(c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11], c[12], c[13], c[14], c[15]);
                (i16x8_extend_low_i8x16(v), i16x8_extend_high_i8x16(v))
            })
            .collect();
        for (i, row) in view.rows().chunks_exact(dim).enumerate() {
            let mut acc = i32x4_splat(0);
            for (c, &(ql, qh)) in qv.iter().enumerate() {
                // SAFETY: `row` has `dim >= body` bytes, so `row[c * 16..c * 16 + 16]` is in
                // bounds; v128_load has no alignment requirement.
                let a = unsafe { v128_load(row.as_ptr().add(c * 16).cast()) };
                acc = i32x4_add(acc, i32x4_dot_i16x8(i16x8_extend_low_i8x16(a), ql));
                acc = i32x4_add(acc, i32x4_dot_i16x8(i16x8_extend_high_i8x16(a), qh));
            }
            let tail: i32 = row[body..].iter().zip(&q[body..]).map(|(&a, &b)| a as i32 * b as i32).sum();
            let dot = i32x4_extract_lane::<0>(acc)
                + i32x4_extract_lane::<1>(acc)
                + i32x4_extract_lane::<2>(acc)
                + i32x4_extract_lane::<3>(acc)
                + tail;
            let score = dot as f32 * scales[i];
            if score > top.threshold() {
                top.offer(Hit { index: base + i as u32, score });
            }
        }
    }
}
