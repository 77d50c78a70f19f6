//! The v1 formats pinned by golden bytes (`tests/fixtures/`, written once by `write_fixtures`):
//! a history document, a vault sealed with a device key and one sealed with a passphrase, a sync
//! envelope, a catalog shard and a tensor file. Each is opened with today's code and its contents
//! checked, so a change that would lock people out of their stored history, or make devices
//! refuse published files, fails here instead of passing silently. A new format version adds
//! files; these stay.

use std::path::Path;

use hearth_core::artifact::TensorFile;
use hearth_core::artifact::shard::CatalogShard;
use hearth_core::person::history::{History, Kind, Profile, Tuning};
use hearth_core::person::sync::Group;
use hearth_core::person::vault::{self, Key, VaultError};

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e} (the golden fixtures are committed; never regenerate v1)", p.display()))
}

fn check_history(doc: &[u8]) {
    let h = History::load(doc, "laptop").expect("the v1 history document loads");
    let events: Vec<(String, Kind, i64, Option<u8>)> = h.events().into_iter().map(|e| (e.item, e.kind, e.ts, e.hour)).collect();
    assert_eq!(
        events,
        vec![
            ("50".into(), Kind::Rate(5.0), 1_700_000_000_000, Some(20)),
            ("172".into(), Kind::Like, 1_700_000_060_000, Some(21)),
            ("181".into(), Kind::Play, 1_700_000_120_000, None),
            ("1".into(), Kind::Dislike, 1_700_000_180_000, None),
        ]
    );
    let play = h.events().into_iter().find(|e| e.item == "181").unwrap();
    assert_eq!(play.context.get("screen").map(String::as_str), Some("tv"));
    assert!(play.device.contains("fixture-phone"), "{}", play.device);
    assert_eq!(h.profile(), Profile { age_band: Some("25-34".into()), locale: Some("de-CH".into()) });
    assert_eq!(h.tuning(), Some(Tuning { model_version: 1, positives: 3, offset: vec![0.5, -0.25, 0.125] }));
    let positives: Vec<String> = h.items().into_iter().filter(|s| s.is_positive()).map(|s| s.item).collect();
    assert_eq!(positives, ["50", "172", "181"]);
}

#[test]
fn the_v1_history_document_loads_with_its_events_profile_and_tuning() {
    check_history(&fixture("history-v1.automerge"));
}

#[test]
fn a_v1_vault_sealed_with_a_device_key_opens_to_the_same_history() {
    let sealed = fixture("vault-v1-device-key.sealed");
    let (id, plain) = vault::open(&Key::from_device_bytes([7; 32]), &sealed).expect("the v1 vault opens");
    assert_eq!(&id, b"hearth-fixture-1");
    assert_eq!(plain, fixture("history-v1.automerge"));
    check_history(&plain);
    assert_eq!(vault::open(&Key::from_device_bytes([8; 32]), &sealed), Err(VaultError::WrongKey));
}

#[test]
fn a_v1_vault_sealed_with_a_passphrase_opens_with_its_kdf_parameters() {
    let sealed = fixture("vault-v1-passphrase.sealed");
    let (iterations, _salt) = vault::kdf_params(&sealed).unwrap().expect("a passphrase vault records its KDF");
    assert_eq!(iterations, 600_000);
    let key = Key::for_sealed("correct horse battery staple", &sealed).unwrap();
    let (id, plain) = vault::open(&key, &sealed).expect("the v1 passphrase vault opens");
    assert_eq!(&id, b"hearth-fixture-1");
    check_history(&plain);
    let wrong = Key::for_sealed("correct horse battery stable", &sealed).unwrap();
    assert_eq!(vault::open(&wrong, &sealed), Err(VaultError::WrongKey));
}

#[test]
fn a_v1_sync_envelope_opens_and_carries_the_historys_heads() {
    let envelope = fixture("sync-v1.envelope");
    let group = Group::from_secret([9; 32]);
    assert_eq!(hearth_core::person::sync::envelope_group(&envelope), Ok(group.id()));
    let m = group.open(&envelope).expect("the v1 envelope opens");
    assert_eq!((m.recipient, m.counter, m.snapshot, m.epoch.number), ([1; 16], 1, false, 1));
    let msg = automerge::sync::Message::decode(&m.payload).expect("an automerge sync message");
    let doc = automerge::AutoCommit::load(&fixture("history-v1.automerge")).unwrap().get_heads();
    assert_eq!(msg.heads, doc, "the message offers the fixture history");
    assert!(Group::from_secret([10; 32]).open(&envelope).is_err());
}

#[test]
fn the_v1_catalog_shard_decodes_and_reencodes_byte_for_byte() {
    let bytes = fixture("items-v1.shard");
    let shard = CatalogShard::decode(&bytes).expect("the v1 shard decodes");
    assert_eq!((shard.model_version(), shard.ids(), shard.dim()), ("1", &["a".to_owned(), "b".into(), "c".into()][..], 4));
    assert_eq!(shard.view().scales(), &[1.0 / 127.0, 0.0, 2.0 / 127.0]);
    assert_eq!(shard.view().rows(), &[127, -64, 32, 0, 0, 0, 0, 0, -127, 64, 32, 8]);
    assert_eq!(shard.encode(), bytes, "today's writer writes v1 exactly");
}

#[test]
fn the_v1_tensor_file_decodes_and_reencodes_byte_for_byte() {
    let bytes = fixture("tensor-v1.bin");
    let t = TensorFile::decode(&bytes).expect("the v1 tensor file decodes");
    assert_eq!(t.get("item.embedding", &[2, 3]).unwrap().values, vec![0.5, -1.0, 2.0, 0.0, 1e-3, -7.25]);
    assert_eq!(t.get("mlp.bias", &[3]).unwrap().values, vec![0.1, 0.2, 0.3]);
    assert_eq!(t.tensors.len(), 2);
    assert_eq!(t.encode(), bytes, "today's writer writes v1 exactly");
}
