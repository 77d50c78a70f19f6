//! `vault::open` and `vault::doc_id` on arbitrary bytes, and on the same bytes behind a header
//! that names the right key (so the fuzzer reaches the length checks and the AEAD). Whatever
//! opens must be exactly what was sealed; every failure must be a typed error.
#![no_main]

use hearth_core::person::vault::{self, Key, VaultError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = Key::from_device_bytes([7; 32]);
    let _ = vault::doc_id(data);
    let _ = vault::open(&key, data);
    // Splice the fuzz bytes after a real header of this key: the key check passes, so parsing
    // goes on to the declared length, the tag and the ciphertext.
    let sealed = vault::seal(&key, [1; 16], data).expect("seal");
    assert_eq!(vault::open(&key, &sealed).expect("own seal opens").1, data);
    let header = 8 + 1 + 1 + 4 + 16 + 16 + 16 + 12 + 8;
    let mut forged = sealed[..header].to_vec();
    forged.extend_from_slice(data);
    match vault::open(&key, &forged) {
        Ok((_, plain)) => assert_eq!(forged, sealed, "forged bytes opened to {} bytes", plain.len()),
        Err(VaultError::Tampered | VaultError::Truncated) => {}
        Err(e) => panic!("unexpected error {e:?} for a header of the right key"),
    }
    // Flip one bit of a real seal: never opens.
    if !data.is_empty() {
        let mut flipped = sealed.clone();
        let at = data[0] as usize * 7 % flipped.len();
        flipped[at] ^= 1 << (data.len() % 8);
        assert!(vault::open(&key, &flipped).is_err(), "a flipped bit at {at} still opened");
    }
});
