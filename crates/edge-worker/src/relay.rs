//! The sync relay's rules (a Durable Object per sync group runs them, `worker_glue`): it stores
//! and forwards a person's sealed sync envelopes (`hearth_core::person::sync`) between their own
//! devices, filed by the group id in each envelope's clear header, as `hearth_core::person::relay`
//! does in the sync tests. It holds no key: what it stores is the envelopes as they came.
//!
//! Limits per group: the size of one envelope, the envelopes and bytes held, posts per minute;
//! envelopes older than the TTL are deleted by the object's alarm.

use hearth_core::person::sync::envelope_group;

use crate::http::EdgeError;

/// What a group may hold and send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest envelope (bytes).
    pub max_envelope: usize,
    /// Envelopes held at once.
    pub max_envelopes: u64,
    /// Bytes held at once.
    pub max_bytes: u64,
    /// Envelopes stored a minute (HTTP and WebSocket together).
    pub posts_per_minute: u32,
    /// How long an envelope is kept (ms).
    pub ttl_ms: i64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_envelope: 1 << 20, max_envelopes: 2_000, max_bytes: 64 << 20, posts_per_minute: 120, ttl_ms: 30 * 24 * 3_600_000 }
    }
}

impl Limits {
    /// The defaults, each replaced by the variable `RELAY_<NAME>` where `var` has it
    /// (`RELAY_MAX_ENVELOPE`, `RELAY_MAX_ENVELOPES`, `RELAY_MAX_BYTES`, `RELAY_POSTS_PER_MINUTE`,
    /// `RELAY_TTL_MS`); a value that is not a positive number keeps the default.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Limits {
        let d = Limits::default();
        let n = |name: &str, default: u64| var(name).and_then(|v| v.trim().parse::<u64>().ok()).filter(|v| *v > 0).unwrap_or(default);
        Limits {
            max_envelope: n("RELAY_MAX_ENVELOPE", d.max_envelope as u64) as usize,
            max_envelopes: n("RELAY_MAX_ENVELOPES", d.max_envelopes),
            max_bytes: n("RELAY_MAX_BYTES", d.max_bytes),
            posts_per_minute: n("RELAY_POSTS_PER_MINUTE", u64::from(d.posts_per_minute)).min(u64::from(u32::MAX)) as u32,
            ttl_ms: n("RELAY_TTL_MS", d.ttl_ms as u64).min(i64::MAX as u64) as i64,
        }
    }
}

/// A group id from its path segment: 32 lowercase hex digits (the id is a hash of the group's
/// secret, so it says nothing about the person).
pub fn parse_group(hex: &str) -> Result<[u8; 16], EdgeError> {
    crate::http::parse_hex(hex).ok_or_else(|| EdgeError::malformed(format!("not a sync group id (32 lowercase hex digits): {hex:?}")))
}

/// Checks an envelope posted to `group`: not larger than the limit (413 `too_large`), a sync
/// envelope (400 `malformed`), of this group (400 `wrong_group`).
pub fn check_envelope(envelope: &[u8], group: [u8; 16], limits: &Limits) -> Result<(), EdgeError> {
    if envelope.len() > limits.max_envelope {
        return Err(EdgeError::new(413, "too_large", format!("an envelope of {} bytes (at most {})", envelope.len(), limits.max_envelope)));
    }
    let of = envelope_group(envelope).map_err(|_| EdgeError::malformed("not a sync envelope"))?;
    if of != group {
        return Err(EdgeError::new(400, "wrong_group", "the envelope belongs to another group"));
    }
    Ok(())
}

/// Checks that a group holding `envelopes` envelopes of `bytes` bytes may take one of `incoming`
/// bytes more (413 `over_quota` otherwise: old envelopes expire with the TTL).
pub fn check_quota(envelopes: u64, bytes: u64, incoming: usize, limits: &Limits) -> Result<(), EdgeError> {
    if envelopes >= limits.max_envelopes || bytes.saturating_add(incoming as u64) > limits.max_bytes {
        return Err(EdgeError::new(
            413,
            "over_quota",
            format!("the group holds {envelopes} envelopes, {bytes} bytes (at most {}, {} bytes)", limits.max_envelopes, limits.max_bytes),
        ));
    }
    Ok(())
}

/// Checks a post against the group's rate: `recent` envelopes stored in the last minute (429
/// `rate_limited` at the limit).
pub fn check_rate(recent: u64, limits: &Limits) -> Result<(), EdgeError> {
    if recent >= u64::from(limits.posts_per_minute) {
        return Err(EdgeError::new(429, "rate_limited", format!("more than {} posts a minute to this group", limits.posts_per_minute)));
    }
    Ok(())
}

/// Envelopes as one body: for each, its position (u64 little-endian), its length (u32
/// little-endian) and its bytes.
pub fn frame<'a>(envelopes: impl IntoIterator<Item = (u64, &'a [u8])>) -> Vec<u8> {
    let mut out = vec![];
    for (seq, bytes) in envelopes {
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// The envelopes of a [`frame`]d body.
pub fn unframe(mut body: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, EdgeError> {
    let mut out = vec![];
    while !body.is_empty() {
        let bad = || EdgeError::malformed("a truncated envelope list");
        let (head, rest) = body.split_at_checked(12).ok_or_else(bad)?;
        let seq = u64::from_le_bytes(head[..8].try_into().map_err(|_| bad())?);
        let len = u32::from_le_bytes(head[8..].try_into().map_err(|_| bad())?) as usize;
        let (bytes, rest) = rest.split_at_checked(len).ok_or_else(bad)?;
        out.push((seq, bytes.to_vec()));
        body = rest;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_core::person::sync::Group;
    use proptest::prelude::*;

    fn limits() -> Limits {
        Limits { max_envelope: 200, max_envelopes: 3, max_bytes: 500, posts_per_minute: 2, ttl_ms: 1000 }
    }

    #[test]
    fn envelopes_are_checked_against_their_path_and_size() {
        let g = Group::from_secret([9; 32]);
        let envelope = g.seal_raw(b"hello").unwrap_or_default();
        assert_eq!(check_envelope(&envelope, g.id(), &limits()), Ok(()));
        let code = |r: Result<(), EdgeError>| r.map_err(|e| (e.status, e.code)).err();
        assert_eq!(code(check_envelope(&envelope, Group::from_secret([1; 32]).id(), &limits())), Some((400, "wrong_group")));
        assert_eq!(code(check_envelope(b"garbage", g.id(), &limits())), Some((400, "malformed")));
        let big = g.seal_raw(&[0; 300]).unwrap_or_default();
        assert_eq!(code(check_envelope(&big, g.id(), &limits())), Some((413, "too_large")));
        assert_eq!(code(check_quota(3, 0, 1, &limits())), Some((413, "over_quota")));
        assert_eq!(code(check_quota(1, 450, 51, &limits())), Some((413, "over_quota")));
        assert_eq!(check_quota(2, 450, 50, &limits()), Ok(()));
    }

    #[test]
    fn group_ids_are_32_lowercase_hex_digits() {
        let id = Group::from_secret([9; 32]).id();
        let hex = hearth_core::data::hex(&id);
        assert_eq!(parse_group(&hex), Ok(id));
        for bad in ["", "00", &hex.to_uppercase(), &format!("{hex}0"), &hex.replace(|c: char| c.is_ascii_digit(), "g")] {
            assert!(parse_group(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn posts_are_limited_per_minute() {
        assert_eq!(check_rate(1, &limits()), Ok(()));
        assert_eq!(check_rate(2, &limits()).map_err(|e| (e.status, e.code)), Err((429, "rate_limited")));
    }

    #[test]
    fn limits_come_from_variables_with_defaults() {
        let l = Limits::from_vars(|n| match n {
            "RELAY_MAX_ENVELOPES" => Some("5".into()),
            "RELAY_TTL_MS" => Some("1500".into()),
            "RELAY_MAX_BYTES" => Some("-1".into()),
            _ => None,
        });
        assert_eq!((l.max_envelopes, l.ttl_ms, l.max_bytes), (5, 1500, Limits::default().max_bytes));
    }

    proptest! {
        /// Framing round-trips, and any bytes unframe to a list or a typed refusal.
        #[test]
        fn frames_round_trip_and_garbage_is_refused_cleanly(list in proptest::collection::vec((any::<u64>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..6), junk in proptest::collection::vec(any::<u8>(), 0..80)) {
            let body = frame(list.iter().map(|(s, b)| (*s, b.as_slice())));
            prop_assert_eq!(unframe(&body), Ok(list));
            let _ = unframe(&junk);
            let _ = parse_group(&String::from_utf8_lossy(&junk));
        }
    }
}
