//! The HTTP rules the worker applies, kept free of the Workers runtime so they are tested natively:
//! typed errors (the aggregator's JSON shape), byte ranges (RFC 9110 §14), entity tags and the
//! publisher's token check.

use serde::{Deserialize, Serialize};

/// A refusal: its HTTP status, a stable code and a message, answered as the aggregator answers
/// its own (`{"error": {"code": …, "message": …}}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeError {
    /// HTTP status (4xx, or 500/503 for the worker's own failures).
    pub status: u16,
    /// Stable code: malformed, too_large, no_version, no_file, unauthorized,
    /// publishing_disabled, digest_mismatch, missing_file, version_exists, not_found, internal.
    pub code: &'static str,
    /// What happened.
    pub message: String,
}

impl EdgeError {
    /// A refusal with `status` and `code`.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> EdgeError {
        EdgeError { status, code, message: message.into() }
    }

    /// 400 `malformed`.
    pub fn malformed(message: impl Into<String>) -> EdgeError {
        EdgeError::new(400, "malformed", message)
    }

    /// 500 `internal`: the runtime or a binding failed (the message says which).
    pub fn internal(message: impl Into<String>) -> EdgeError {
        EdgeError::new(500, "internal", message)
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody { error: ErrorDetail { code: self.code.to_owned(), message: self.message.clone() } }
    }
}

/// A mapper for `map_err`: 500 `internal` naming what failed (a binding, the cache, …) and why.
pub fn internal<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> EdgeError {
    move |e| EdgeError::internal(format!("{what}: {e}"))
}

impl std::fmt::Display for EdgeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for EdgeError {}

/// The JSON of a refusal (the aggregator's `serve::api::ErrorBody`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// See [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable code.
    pub code: String,
    /// What happened.
    pub message: String,
}

/// One byte range a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `first-` or `first-last` (inclusive).
    From {
        /// First byte.
        first: u64,
        /// Last byte (inclusive), if given.
        last: Option<u64>,
    },
    /// `-n`: the last `n` bytes.
    Suffix(u64),
}

/// What a `Range` header asks of a file of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// Answer 200 with the whole file (no header, another unit, several ranges or a header that
    /// does not parse: RFC 9110 lets a server ignore those).
    Whole,
    /// Answer 206 with bytes `offset .. offset + length`.
    Part {
        /// First byte.
        offset: u64,
        /// Bytes.
        length: u64,
    },
    /// Answer 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

/// Parses a `Range` header: one `bytes=` range, else None (ignored).
pub fn parse_range(header: &str) -> Option<ByteRange> {
    let spec = header.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, true) => None,
        (true, false) => number(last).map(ByteRange::Suffix),
        (false, true) => number(first).map(|first| ByteRange::From { first, last: None }),
        (false, false) => {
            let (first, last) = (number(first)?, number(last)?);
            (last >= first).then_some(ByteRange::From { first, last: Some(last) })
        }
    }
}

/// What `range` asks of a file of `size` bytes (RFC 9110 §14.1.2: a last byte past the end is
/// the end; a first byte at or past it, or an empty suffix, cannot be satisfied).
pub fn resolve_range(range: Option<ByteRange>, size: u64) -> RangeAnswer {
    match range {
        None => RangeAnswer::Whole,
        Some(ByteRange::Suffix(n)) if n == 0 || size == 0 => RangeAnswer::Unsatisfiable,
        Some(ByteRange::Suffix(n)) => {
            let length = n.min(size);
            RangeAnswer::Part { offset: size - length, length }
        }
        Some(ByteRange::From { first, .. }) if first >= size => RangeAnswer::Unsatisfiable,
        Some(ByteRange::From { first, last }) => {
            let last = last.map_or(size - 1, |l| l.min(size - 1));
            RangeAnswer::Part { offset: first, length: last - first + 1 }
        }
    }
}

/// `N` bytes from exactly `2N` lowercase hex digits (None otherwise).
pub fn parse_hex<const N: usize>(hex: &str) -> Option<[u8; N]> {
    if hex.len() != 2 * N || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// The entity tag of a content-addressed file: its SHA-256 in hex, quoted.
pub fn etag(sha256: &str) -> String {
    format!("\"{sha256}\"")
}

/// Whether an `If-None-Match` header matches the file whose SHA-256 is `sha256` (weak
/// comparison, as RFC 9110 §13.1.2 asks: `*`, or any listed tag with or without `W/`).
pub fn none_match(header: &str, sha256: &str) -> bool {
    header.split(',').map(str::trim).any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t).trim_matches('"') == sha256)
}

/// Whether an `If-Range` header lets a range of the file whose SHA-256 is `sha256` be answered
/// (a strong tag equal to the file's; dates are never strong validators here).
pub fn if_range_holds(header: &str, sha256: &str) -> bool {
    let t = header.trim();
    !t.starts_with("W/") && t.len() == sha256.len() + 2 && t.trim_matches('"') == sha256
}

/// Whether `header` (an `Authorization` value) carries the publisher's `token` as a bearer
/// token. Both sides are hashed first, so the comparison's time says nothing about the token.
pub fn bearer_matches(header: Option<&str>, token: &str) -> bool {
    let Some(given) = header.and_then(|h| h.strip_prefix("Bearer ")) else { return false };
    let digest = |s: &str| hearth_core::codec::sha256(s.as_bytes());
    !token.is_empty() && digest(given.trim()).as_ref() == digest(token).as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges_parse_as_rfc_9110_writes_them() {
        assert_eq!(parse_range("bytes=0-99"), Some(ByteRange::From { first: 0, last: Some(99) }));
        assert_eq!(parse_range("bytes=100-"), Some(ByteRange::From { first: 100, last: None }));
        assert_eq!(parse_range("bytes=-500"), Some(ByteRange::Suffix(500)));
        assert_eq!(parse_range(" bytes= 5 - 9 "), Some(ByteRange::From { first: 5, last: Some(9) }));
        for ignored in ["", "bytes=", "bytes=-", "bytes=9-5", "bytes=0-1,5-9", "items=0-5", "bytes=a-b", "bytes=+1-2", "bytes=99999999999999999999-"] {
            assert_eq!(parse_range(ignored), None, "{ignored:?}");
        }
    }

    #[test]
    fn ranges_resolve_against_the_file_size() {
        let r = |h: &str, size| resolve_range(parse_range(h), size);
        assert_eq!(r("bytes=0-9", 100), RangeAnswer::Part { offset: 0, length: 10 });
        assert_eq!(r("bytes=90-200", 100), RangeAnswer::Part { offset: 90, length: 10 });
        assert_eq!(r("bytes=99-", 100), RangeAnswer::Part { offset: 99, length: 1 });
        assert_eq!(r("bytes=-10", 100), RangeAnswer::Part { offset: 90, length: 10 });
        assert_eq!(r("bytes=-1000", 100), RangeAnswer::Part { offset: 0, length: 100 });
        assert_eq!(r("bytes=100-", 100), RangeAnswer::Unsatisfiable);
        assert_eq!(r("bytes=-0", 100), RangeAnswer::Unsatisfiable);
        assert_eq!(r("bytes=0-", 0), RangeAnswer::Unsatisfiable);
        assert_eq!(r("bytes=-5", 0), RangeAnswer::Unsatisfiable);
        assert_eq!(r("bytes=1-2,4-5", 100), RangeAnswer::Whole);
    }

    #[test]
    fn entity_tags_match_weakly_for_304_and_strongly_for_if_range() {
        let sha = "ab".repeat(32);
        assert!(none_match(&etag(&sha), &sha));
        assert!(none_match(&format!("W/\"{sha}\""), &sha));
        assert!(none_match(&format!("\"x\", \"{sha}\""), &sha));
        assert!(none_match("*", &sha));
        assert!(!none_match("\"x\"", &sha));
        assert!(!none_match("", &sha));
        assert!(if_range_holds(&etag(&sha), &sha));
        assert!(!if_range_holds(&format!("W/\"{sha}\""), &sha));
        assert!(!if_range_holds("Wed, 21 Oct 2015 07:28:00 GMT", &sha));
    }

    #[test]
    fn only_the_exact_bearer_token_publishes() {
        assert!(bearer_matches(Some("Bearer s3cret"), "s3cret"));
        assert!(!bearer_matches(Some("Bearer s3cre"), "s3cret"));
        assert!(!bearer_matches(Some("bearer s3cret"), "s3cret"));
        assert!(!bearer_matches(Some("s3cret"), "s3cret"));
        assert!(!bearer_matches(None, "s3cret"));
        assert!(!bearer_matches(Some("Bearer "), ""), "an empty configured token publishes nothing");
    }

    proptest! {
        /// Any header: parsing never panics, and a range it answers lies inside the file.
        #[test]
        fn any_range_header_resolves_inside_the_file(header in "\\PC{0,40}", size in 0u64..1 << 40) {
            if let RangeAnswer::Part { offset, length } = resolve_range(parse_range(&header), size) {
                prop_assert!(length >= 1 && offset.checked_add(length).is_some_and(|end| end <= size));
            }
        }

        /// Well-formed ranges: the part is exactly the bytes asked for, clamped to the file.
        #[test]
        fn well_formed_ranges_give_the_bytes_asked(first in 0u64..2000, len in 1u64..2000, size in 0u64..3000) {
            let last = first + len - 1;
            match resolve_range(parse_range(&format!("bytes={first}-{last}")), size) {
                RangeAnswer::Part { offset, length } => prop_assert_eq!((offset, length), (first, last.min(size - 1) - first + 1)),
                RangeAnswer::Unsatisfiable => prop_assert!(first >= size),
                RangeAnswer::Whole => prop_assert!(false, "a single range is never ignored"),
            }
        }
    }
}
