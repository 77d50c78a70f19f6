//! The receiving side of sync on arbitrary bytes: `Group::open` and `envelope_group` on the raw
//! input, then `Replica::incoming` on envelopes that authenticate (sealed with the group's key)
//! and carry the input as their plaintext, so the fuzzer reaches the header parser, the epoch
//! handshake, automerge's sync message decoder and document loader (snapshots), and the sweep.
//! Every failure must be a typed error, and a failed message must leave the history unchanged.
#![no_main]

use hearth_core::person::history::{History, Kind};
use hearth_core::person::sync::{Group, Replica, envelope_group};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let group = Group::from_secret([3; 32]);
    let _ = envelope_group(data);
    let _ = group.open(data);

    let mut history = History::new("fuzz");
    history.record("film-1", Kind::Play, 10, Some(3), &[("screen", "tv")]).expect("record");
    history.record("film-2", Kind::Rate(4.0), 11, None, &[]).expect("record");
    let mut replica = Replica::new(group.clone()).expect("replica");
    // Plaintext: sender · recipient (this replica) · then the input; when the input's first byte
    // is odd, its counter is followed by this history's epoch, so sync messages are applied.
    let mut inner = vec![1u8; 16];
    inner.extend_from_slice(&replica.id());
    match data.split_first() {
        Some((mode, rest)) if mode & 1 == 1 && rest.len() >= 8 => {
            let epoch = history.epoch();
            inner.extend_from_slice(&rest[..8]);
            inner.extend_from_slice(&epoch.number.to_le_bytes());
            inner.extend_from_slice(&epoch.id);
            inner.extend_from_slice(&rest[8..]);
        }
        _ => inner.extend_from_slice(data),
    }
    let envelope = group.seal_raw(&inner).expect("seal");
    let before = history.items();
    match replica.incoming(&mut history, &envelope) {
        Ok(_) => {
            // Whatever was applied, the history still reads and saves.
            let _ = history.items();
            let saved = history.save();
            History::load(&saved, "fuzz").expect("a history that took a message reloads");
        }
        Err(_) => assert_eq!(history.items(), before, "a refused message changed the history"),
    }
});
