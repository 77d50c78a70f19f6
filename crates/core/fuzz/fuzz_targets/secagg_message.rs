//! Secure aggregation's wire decoder on arbitrary bytes (and on the same bytes behind a valid
//! magic and version, so the fuzzer reaches the parsers), then each decoded message fed to a
//! server and to clients at every stage of a real round (`hearth_core::testkit::
//! fuzz_secagg_message`): each answers a value or a typed error, never panics, and an unsigned
//! message that decodes encodes back to the same bytes.
#![no_main]

use hearth_core::secagg::wire::{MAGIC, VERSION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hearth_core::testkit::fuzz_secagg_message(data);
    let mut framed = MAGIC.to_vec();
    framed.push(VERSION);
    framed.extend_from_slice(data);
    hearth_core::testkit::fuzz_secagg_message(&framed);
});
