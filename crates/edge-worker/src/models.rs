//! Model versions at the edge: the aggregator's model store, mirrored in R2 and KV.
//!
//! Layout (the aggregator's `serve::models` layout, so one publish copies objects as they are):
//! - R2 `files/<sha256>`: every file of every version, content-addressed, written once;
//! - R2 `versions/<n>.json`: a version's index (file name → SHA-256), written once every file it
//!   names is in R2;
//! - KV `latest`: the index of the version devices should use, moved last.
//!
//! Publishing (`PUT /v1/admin/…`, bearer token) follows that order and checks each step, so a
//! device that reads `latest` never finds a missing file, and a file's bytes are never replaced.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::http::EdgeError;

/// A version's index: its files by name, each by SHA-256 (the aggregator's
/// `serve::models::VersionIndex`, the body of its `GET /v1/models/latest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionIndex {
    /// The model version.
    pub version: u32,
    /// File name → lowercase hex SHA-256.
    pub files: BTreeMap<String, String>,
}

/// The body of `PUT /v1/admin/latest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveLatest {
    /// The version `latest` should name.
    pub version: u32,
}

/// The largest version index accepted (bytes).
pub const MAX_INDEX_BYTES: usize = 64 << 10;
/// The most files a version may name.
pub const MAX_FILES: usize = 64;
/// The largest file accepted by one `PUT` (bytes). A Worker holds a body up to three times while
/// it checks and stores it (the request, its bytes, the copy to R2) within 128 MB; larger files
/// go to R2 directly (`wrangler r2 object put`), then their index through this API.
pub const MAX_FILE_BYTES: usize = 24 << 20;
/// `Cache-Control` of a versioned file: its name never changes meaning, and no proxy may
/// re-encode it (its strong entity tag is its digest).
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable, no-transform";
/// `Cache-Control` of `latest`. With KV's 60 s read cache and its propagation between locations
/// (up to about a minute), a device notices a new version within about two and a half minutes.
pub const LATEST_CACHE: &str = "public, max-age=30";

/// R2 key of a content-addressed file.
pub fn file_key(sha256: &str) -> String {
    format!("files/{sha256}")
}

/// R2 key of a version's index.
pub fn index_key(version: u32) -> String {
    format!("versions/{version}.json")
}

/// A version from a path segment (a decimal number, 1 or more, no sign or leading zeros).
pub fn parse_version(segment: &str) -> Result<u32, EdgeError> {
    let ok = !segment.is_empty() && segment.len() <= 10 && segment.bytes().all(|b| b.is_ascii_digit()) && !segment.starts_with('0');
    ok.then(|| segment.parse::<u32>().ok()).flatten().ok_or_else(|| EdgeError::malformed(format!("not a model version: {segment:?}")))
}

/// Checks a file name as a version index may hold it: 1–64 of `[a-z0-9._-]`, not starting with
/// a dot.
pub fn check_file_name(name: &str) -> Result<(), EdgeError> {
    let ok = (1..=64).contains(&name.len()) && !name.starts_with('.') && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    ok.then_some(()).ok_or_else(|| EdgeError::malformed(format!("not a file name: {name:?}")))
}

/// Checks a lowercase hex SHA-256 and returns its bytes.
pub fn parse_sha256(hex: &str) -> Result<[u8; 32], EdgeError> {
    crate::http::parse_hex(hex).ok_or_else(|| EdgeError::malformed(format!("not a lowercase hex SHA-256: {hex:?}")))
}

impl VersionIndex {
    /// Decodes and checks an index sent for `version`: JSON of this shape, the same version,
    /// at most [`MAX_FILES`] files, each name and digest well formed.
    pub fn decode(bytes: &[u8], version: u32) -> Result<VersionIndex, EdgeError> {
        if bytes.len() > MAX_INDEX_BYTES {
            return Err(EdgeError::new(413, "too_large", format!("a version index of {} bytes (at most {MAX_INDEX_BYTES})", bytes.len())));
        }
        let index: VersionIndex = serde_json::from_slice(bytes).map_err(|e| EdgeError::malformed(format!("version index: {e}")))?;
        if index.version != version {
            return Err(EdgeError::malformed(format!("an index of version {} sent as version {version}", index.version)));
        }
        if index.files.is_empty() || index.files.len() > MAX_FILES {
            return Err(EdgeError::malformed(format!("{} files (1 to {MAX_FILES})", index.files.len())));
        }
        for (name, sha) in &index.files {
            check_file_name(name)?;
            parse_sha256(sha)?;
        }
        Ok(index)
    }
}

/// The `Content-Type` of a model file, by its name.
pub fn content_type(name: &str) -> &'static str {
    if name.ends_with(".json") { "application/json" } else { "application/octet-stream" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn index_json(version: u32, files: &[(&str, &str)]) -> Vec<u8> {
        let files: BTreeMap<String, String> = files.iter().map(|(n, s)| ((*n).to_owned(), (*s).to_owned())).collect();
        serde_json::to_vec(&VersionIndex { version, files }).unwrap_or_default()
    }

    #[test]
    fn versions_are_plain_decimal_numbers() {
        assert_eq!(parse_version("1"), Ok(1));
        assert_eq!(parse_version("4294967295"), Ok(u32::MAX));
        for bad in ["", "0", "01", "-1", "+1", "1.0", "4294967296", "latest", "99999999999"] {
            assert_eq!(parse_version(bad).map_err(|e| e.code), Err("malformed"), "{bad:?}");
        }
    }

    #[test]
    fn an_index_is_checked_before_it_is_stored() {
        let sha = "0f".repeat(32);
        let good = index_json(3, &[("manifest.json", &sha), ("items.shard", &sha)]);
        assert_eq!(VersionIndex::decode(&good, 3).map(|i| i.files.len()), Ok(2));
        let refused = |bytes: &[u8], version| VersionIndex::decode(bytes, version).map_err(|e| (e.status, e.code)).err();
        assert_eq!(refused(&good, 4), Some((400, "malformed")), "another version");
        assert_eq!(refused(&index_json(3, &[]), 3), Some((400, "malformed")), "no files");
        assert_eq!(refused(&index_json(3, &[("../x", &sha)]), 3), Some((400, "malformed")), "a path");
        assert_eq!(refused(&index_json(3, &[(".hidden", &sha)]), 3), Some((400, "malformed")));
        assert_eq!(refused(&index_json(3, &[("a", &sha.to_uppercase())]), 3), Some((400, "malformed")), "upper-case hex");
        assert_eq!(refused(&index_json(3, &[("a", "00")]), 3), Some((400, "malformed")), "short digest");
        assert_eq!(refused(br#"{"version":3,"files":{"a":"00"},"extra":1}"#, 3), Some((400, "malformed")));
        assert_eq!(refused(b"not json", 3), Some((400, "malformed")));
        assert_eq!(refused(&vec![b' '; MAX_INDEX_BYTES + 1], 3), Some((413, "too_large")));
    }

    #[test]
    fn digests_decode_to_their_bytes() {
        let b = parse_sha256(&format!("{}{}", "00ff".repeat(15), "a1b2")).unwrap_or([9; 32]);
        assert_eq!((b[0], b[1], b[30], b[31]), (0x00, 0xff, 0xa1, 0xb2));
    }

    proptest! {
        /// Arbitrary bytes as an index or a path segment: a typed answer, never a panic.
        #[test]
        fn any_bytes_are_refused_or_accepted_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..300), segment in "\\PC{0,20}") {
            let _ = VersionIndex::decode(&bytes, 1);
            let _ = parse_version(&segment);
            let _ = check_file_name(&segment);
            let _ = parse_sha256(&segment);
        }
    }
}
