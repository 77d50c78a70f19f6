//! Replays the fuzzers' inputs on the stable toolchain: the corpus `cargo fuzz` built for each
//! target (`crates/core/fuzz/corpus/<target>/`) and any crash it ever found, minimised
//! (`crates/core/fuzz/regressions/<target>/`). Each must decode to a value or a typed error,
//! never panic, and a shard that decodes must encode back to the same bytes.

use std::path::PathBuf;

use hearth_core::artifact::shard::{CatalogShard, SHARD_MAGIC, SHARD_VERSION};

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = vec![];
    for dir in [root.join("corpus").join(target), root.join("regressions").join(target)] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let bytes = std::fs::read(e.path()).expect("readable fuzz input");
            out.push((e.path(), bytes));
        }
    }
    out
}

#[test]
fn shard_decode_inputs_never_panic() {
    let all = inputs("shard_decode");
    assert!(all.len() >= 50, "the committed corpus is missing ({} inputs)", all.len());
    let mut decoded = 0;
    for (path, data) in all {
        let _ = CatalogShard::decode(&data);
        let mut framed = SHARD_MAGIC.to_vec();
        framed.extend_from_slice(&SHARD_VERSION.to_le_bytes());
        framed.extend_from_slice(&data);
        let digest = ring::digest::digest(&ring::digest::SHA256, &framed);
        framed.extend_from_slice(digest.as_ref());
        if let Ok(shard) = CatalogShard::decode(&framed) {
            assert_eq!(shard.encode(), framed, "{}", path.display());
            decoded += 1;
        }
    }
    // The corpus reaches past the checksum into valid shards, not just early rejections.
    assert!(decoded > 0, "no corpus input decodes to a shard");
}

#[test]
fn vault_open_inputs_never_panic() {
    use hearth_core::person::vault::{self, Key};
    let all = inputs("vault_open");
    assert!(all.len() >= 20, "the committed corpus is missing ({} inputs)", all.len());
    let key = Key::from_device_bytes([7; 32]);
    for (path, data) in all {
        let _ = vault::doc_id(&data);
        let _ = vault::open(&key, &data);
        let sealed = vault::seal(&key, [1; 16], &data).unwrap();
        assert_eq!(vault::open(&key, &sealed).unwrap().1, data, "{}", path.display());
        let mut forged = sealed[..86].to_vec();
        forged.extend_from_slice(&data);
        if forged != sealed {
            assert!(vault::open(&key, &forged).is_err(), "{}", path.display());
        }
    }
}

#[test]
fn sync_incoming_inputs_never_panic_and_refusals_change_nothing() {
    use hearth_core::person::history::{History, Kind};
    use hearth_core::person::sync::{Group, Replica, envelope_group};
    let all = inputs("sync_incoming");
    assert!(all.len() >= 50, "the committed corpus is missing ({} inputs)", all.len());
    let group = Group::from_secret([3; 32]);
    let (mut applied, mut adopted) = (0, 0);
    for (path, data) in all {
        let _ = envelope_group(&data);
        let _ = group.open(&data);
        let mut history = History::new("fuzz");
        history.record("film-1", Kind::Play, 10, Some(3), &[("screen", "tv")]).unwrap();
        history.record("film-2", Kind::Rate(4.0), 11, None, &[]).unwrap();
        let epoch = history.epoch();
        let mut replica = Replica::new(group.clone()).unwrap();
        let mut inner = vec![1u8; 16];
        inner.extend_from_slice(&replica.id());
        match data.split_first() {
            Some((mode, rest)) if mode & 1 == 1 && rest.len() >= 8 => {
                inner.extend_from_slice(&rest[..8]);
                inner.extend_from_slice(&epoch.number.to_le_bytes());
                inner.extend_from_slice(&epoch.id);
                inner.extend_from_slice(&rest[8..]);
            }
            _ => inner.extend_from_slice(&data),
        }
        let before = history.items();
        match replica.incoming(&mut history, &group.seal_raw(&inner).unwrap()) {
            Ok(_) => {
                applied += 1;
                adopted += usize::from(history.epoch() != epoch);
                History::load(&history.save(), "fuzz").unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
            Err(_) => assert_eq!(history.items(), before, "{}", path.display()),
        }
    }
    // The corpus reaches the automerge sync decoder and the snapshot path, not just rejections.
    assert!(applied > 0 && adopted > 0, "applied {applied}, adopted {adopted}");
}

#[test]
fn secagg_message_inputs_never_panic() {
    use hearth_core::secagg::wire::{MAGIC, VERSION};
    let all = inputs("secagg_message");
    assert!(all.len() >= 50, "the committed corpus is missing ({} inputs)", all.len());
    let mut decoded = 0;
    for (_, data) in all {
        let mut framed = MAGIC.to_vec();
        framed.push(VERSION);
        framed.extend_from_slice(&data);
        decoded += usize::from(hearth_core::testkit::fuzz_secagg_message(&data)) + usize::from(hearth_core::testkit::fuzz_secagg_message(&framed));
    }
    assert!(decoded > 0, "no corpus input decodes to a message");
}

#[test]
fn round_plan_inputs_never_panic() {
    let all = inputs("round_plan");
    assert!(all.len() >= 50, "the committed corpus is missing ({} inputs)", all.len());
    let mut decoded = 0;
    for (_, data) in all {
        decoded += usize::from(hearth_core::testkit::fuzz_round_plan(&data));
    }
    assert!(decoded > 0, "no corpus input decodes to a plan");
}
