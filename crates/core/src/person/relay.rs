//! A small store-and-forward relay for sync envelopes, as the edge worker will run it: envelopes
//! are filed by the group id in their clear header and handed out in arrival order. It holds no
//! key and cannot read anything else.

use std::collections::BTreeMap;

use crate::person::sync::{MAX_ENVELOPE, envelope_group};

/// Why the relay refused an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayError {
    /// Not a sync envelope.
    NotAnEnvelope,
    /// Larger than the envelope limit.
    TooLarge,
}

/// In-memory relay.
#[derive(Default)]
pub struct Relay {
    groups: BTreeMap<[u8; 16], Vec<Vec<u8>>>,
}

impl Relay {
    /// Stores an envelope; returns its position in its group's log.
    pub fn post(&mut self, envelope: &[u8]) -> Result<usize, RelayError> {
        if envelope.len() > MAX_ENVELOPE {
            return Err(RelayError::TooLarge);
        }
        let group = envelope_group(envelope).map_err(|_| RelayError::NotAnEnvelope)?;
        let log = self.groups.entry(group).or_default();
        log.push(envelope.to_vec());
        Ok(log.len() - 1)
    }

    /// The envelopes of `group` from position `since` on.
    pub fn fetch(&self, group: [u8; 16], since: usize) -> &[Vec<u8>] {
        self.groups.get(&group).map_or(&[], |l| l.get(since..).unwrap_or(&[]))
    }

    /// Every byte the relay stores, for inspection.
    pub fn stored(&self) -> Vec<u8> {
        self.groups.iter().flat_map(|(g, l)| g.iter().copied().chain(l.iter().flatten().copied())).collect()
    }
}
