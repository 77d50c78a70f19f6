//! Known-answer tests of the primitives hearth uses, through the same ring APIs the vault and
//! sync code call: AES-256-GCM, HKDF-SHA256, X25519. Vectors and their sources:
//! `tests/vectors/crypto_kat.txt`.
#![cfg(not(target_family = "wasm"))]

use std::collections::HashMap;

use ring::{aead, agreement, hkdf};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex")).collect()
}

fn vectors() -> Vec<HashMap<String, String>> {
    let text = include_str!("vectors/crypto_kat.txt");
    let mut out = vec![];
    let mut cur = HashMap::new();
    for line in text.lines().map(str::trim).chain([""]) {
        if line.starts_with('#') {
            continue;
        }
        if line.is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        let (k, v) = line.split_once('=').expect("key = value");
        cur.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    out
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

#[test]
fn every_vector_matches() {
    let all = vectors();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for v in &all {
        let f = |k: &str| hex(&v[k]);
        match v["alg"].as_str() {
            "AES-256-GCM" => {
                let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, &f("key")).unwrap());
                let nonce = || aead::Nonce::try_assume_unique_for_key(&f("nonce")).unwrap();
                let mut data = f("plain");
                key.seal_in_place_append_tag(nonce(), aead::Aad::from(f("aad")), &mut data).unwrap();
                let mut want = f("cipher");
                want.extend(f("tag"));
                assert_eq!(data, want, "{v:?}");
                let plain = key.open_in_place(nonce(), aead::Aad::from(f("aad")), &mut data).unwrap();
                assert_eq!(plain, &f("plain")[..]);
                // One flipped bit anywhere is refused.
                let mut bad = want.clone();
                bad[0] ^= 1;
                assert!(key.open_in_place(nonce(), aead::Aad::from(f("aad")), &mut bad).is_err());
            }
            "HKDF-SHA256" => {
                let okm = f("okm");
                let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &f("salt")).extract(&f("ikm"));
                let info = f("info");
                let mut out = vec![0u8; okm.len()];
                prk.expand(&[&info], Len(okm.len())).unwrap().fill(&mut out).unwrap();
                assert_eq!(out, okm, "{v:?}");
            }
            "X25519" => {
                let scalar = f("scalar");
                // ring draws X25519 private keys from its RNG only; its fixed-bytes RNG (the one
                // ring's own tests use) feeds the published scalar.
                #[allow(deprecated)]
                let rng = ring::test::rand::FixedSliceRandom { bytes: &scalar };
                let private = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng).unwrap();
                let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, f("u"));
                let out = agreement::agree_ephemeral(private, &peer, |k| k.to_vec()).unwrap();
                assert_eq!(out, f("out"), "{v:?}");
            }
            other => panic!("unknown algorithm {other}"),
        }
        *seen.entry(v["alg"].clone()).or_default() += 1;
    }
    assert_eq!(seen["AES-256-GCM"], 4);
    assert_eq!(seen["HKDF-SHA256"], 3);
    assert_eq!(seen["X25519"], 5);
}
