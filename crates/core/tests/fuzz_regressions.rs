//! Replays the fuzzers' inputs on the stable toolchain: the corpus `cargo fuzz` built for each
//! target (`crates/core/fuzz/corpus/<target>/`) and any crash it ever found, minimised
//! (`crates/core/fuzz/regressions/<target>/`). Each must decode to a value or a typed error,
//! never panic, and a shard that decodes must encode back to the same bytes.

use std::path::PathBuf;

use hearth_core::quant::{CatalogShard, SHARD_MAGIC, SHARD_VERSION};

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
    use hearth_core::vault::{self, Key};
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
