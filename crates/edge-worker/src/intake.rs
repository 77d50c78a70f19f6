//! Update intake's rules: what the edge checks in a device's secure-aggregation message before
//! forwarding it to the aggregator (size, format version, a client's message kind), and the key
//! of its per-device rate limit. The aggregator checks the rest (round, stage, signature).

use hearth_core::secagg::wire::{self, Message};

use crate::http::EdgeError;

/// The largest message forwarded by default (`INTAKE_MAX_MESSAGE` sets another, up to the wire
/// format's own limit): a masked input of a million values and its frame, far above today's
/// model (36,864 values, 147 KB) and far below a Worker's memory.
pub const MAX_MESSAGE: usize = 4 << 20;

/// The message limit `INTAKE_MAX_MESSAGE` sets (a positive number, at most the wire format's),
/// else [`MAX_MESSAGE`].
pub fn max_message(var: impl Fn(&str) -> Option<String>) -> usize {
    var("INTAKE_MAX_MESSAGE").and_then(|v| v.trim().parse::<usize>().ok()).filter(|n| *n > 0).map_or(MAX_MESSAGE, |n| n.min(wire::MAX_MESSAGE))
}
/// The largest enrollment forwarded (a public key and a proof, as JSON).
pub const MAX_ENROLLMENT: usize = 4 << 10;

/// A round number from a path segment.
pub fn parse_round(segment: &str) -> Result<i64, EdgeError> {
    let ok = !segment.is_empty() && segment.len() <= 18 && segment.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| segment.parse::<i64>().ok()).flatten().ok_or_else(|| EdgeError::malformed(format!("not a round number: {segment:?}")))
}

/// Checks a client's message of at most `max` bytes as the aggregator would before reading its
/// round (the same codes: 413 `too_large`, 400 `unsupported_version`, 400 `malformed`) and
/// returns the device's part of its rate-limit key: its place in round `round` (unauthenticated:
/// the edge keys it with the sender's address too).
pub fn check_message(round: i64, body: &[u8], max: usize) -> Result<String, EdgeError> {
    if body.len() > max {
        return Err(EdgeError::new(413, "too_large", format!("a message of {} bytes (at most {max})", body.len())));
    }
    let decoded = wire::decode(body).map_err(|e| {
        if body.len() > 8 && &body[..8] == wire::MAGIC && body[8] != wire::VERSION {
            EdgeError::new(400, "unsupported_version", format!("message version {}; this edge reads {}", body[8], wire::VERSION))
        } else {
            EdgeError::malformed(e.to_string())
        }
    })?;
    let index = match &decoded.message {
        Message::Advertise(m) => m.index,
        Message::ShareKeys(m) => m.index,
        Message::MaskedInput(m) => m.index,
        Message::Unmask(m) => m.index,
        _ => return Err(EdgeError::malformed("a server's message, not a client's")),
    };
    Ok(format!("{round}:{index}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_core::secagg::{Params, client::Client};
    use proptest::prelude::*;

    #[test]
    fn a_clients_message_passes_with_its_round_and_place_as_key() {
        let params = Params::for_clients([3; 16], 5, 64, 3);
        let (_, advert) = Client::new(params, 2, [7; 32], [1; 32]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(check_message(9, &advert, MAX_MESSAGE), Ok("9:2".into()));
        let code = |b: &[u8]| check_message(9, b, MAX_MESSAGE).map_err(|e| (e.status, e.code)).err();
        let mut other = advert.clone();
        other[8] = 2;
        assert_eq!(code(&other), Some((400, "unsupported_version")));
        assert_eq!(code(&advert[..advert.len() - 1]), Some((400, "malformed")));
        assert_eq!(code(b"hello"), Some((400, "malformed")));
        assert_eq!(code(&vec![0; MAX_MESSAGE + 1]), Some((413, "too_large")));
        assert_eq!(max_message(|_| Some("1000".into())), 1000);
        assert_eq!(max_message(|_| Some("0".into())), MAX_MESSAGE);
        assert_eq!(max_message(|_| Some(u64::MAX.to_string())), wire::MAX_MESSAGE);
        assert_eq!(parse_round("12"), Ok(12));
        assert!(parse_round("-1").is_err() && parse_round("").is_err() && parse_round("1x").is_err());
    }

    proptest! {
        /// Arbitrary bodies: a key or a typed refusal, never a panic.
        #[test]
        fn any_body_is_checked_cleanly(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut framed = wire::MAGIC.to_vec();
            framed.push(wire::VERSION);
            framed.extend_from_slice(&body);
            let _ = check_message(1, &body, MAX_MESSAGE);
            let _ = check_message(1, &framed, MAX_MESSAGE);
        }
    }
}
