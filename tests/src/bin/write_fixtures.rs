//! Writes the v1 golden fixtures under `tests/fixtures/` (`cargo run -p hearth-tests --bin
//! write_fixtures`). Run it once per format version and commit the bytes: `tests/tests/golden.rs`
//! opens them with today's code, so a change that would lock people out of what they stored
//! fails a test. Never rewrite the v1 files; a new version gets new files beside them.

use std::path::Path;

use hearth_core::artifact::TensorFile;
use hearth_core::artifact::shard::CatalogShard;
use hearth_core::person::history::{History, Kind, Profile, Tuning};
use hearth_core::person::sync::{Group, Replica};
use hearth_core::person::vault::{self, Key};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    std::fs::create_dir_all(&dir)?;
    let mut h = History::new("fixture-phone");
    h.record("50", Kind::Rate(5.0), 1_700_000_000_000, Some(20), &[])?;
    h.record("172", Kind::Like, 1_700_000_060_000, Some(21), &[])?;
    h.record("181", Kind::Play, 1_700_000_120_000, None, &[("screen", "tv")])?;
    h.record("1", Kind::Dislike, 1_700_000_180_000, None, &[])?;
    h.set_profile(&Profile { age_band: Some("25-34".into()), locale: Some("de-CH".into()) })?;
    h.set_tuning(Some(&Tuning { model_version: 1, positives: 3, offset: vec![0.5, -0.25, 0.125] }))?;
    let doc = h.save();
    std::fs::write(dir.join("history-v1.automerge"), &doc)?;
    let id = *b"hearth-fixture-1";
    std::fs::write(dir.join("vault-v1-device-key.sealed"), vault::seal(&Key::from_device_bytes([7; 32]), id, &doc)?)?;
    std::fs::write(dir.join("vault-v1-passphrase.sealed"), vault::seal(&Key::from_passphrase("correct horse battery staple")?, id, &doc)?)?;
    let mut replica = Replica::new(Group::from_secret([9; 32]))?;
    let envelope = replica.outgoing(&mut h, [1; 16])?.ok_or("no first sync message")?;
    std::fs::write(dir.join("sync-v1.envelope"), envelope)?;
    let values = [1.0, -0.5, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0, -2.0, 1.0, 0.5, 0.125];
    let shard = CatalogShard::from_f32("1", vec!["a".into(), "b".into(), "c".into()], 4, &values)?;
    std::fs::write(dir.join("items-v1.shard"), shard.encode())?;
    let mut t = TensorFile::default();
    t.insert("item.embedding", vec![2, 3], vec![0.5, -1.0, 2.0, 0.0, 1e-3, -7.25]);
    t.insert("mlp.bias", vec![3], vec![0.1, 0.2, 0.3]);
    std::fs::write(dir.join("tensor-v1.bin"), t.encode())?;
    eprintln!("wrote {}", dir.display());
    Ok(())
}
