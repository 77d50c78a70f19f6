//! `RoundPlan::decode` on arbitrary bytes and behind a valid frame (magic, version, length), so
//! the fuzzer reaches the JSON body: a plan that decodes checks without panicking and encodes
//! back to a plan that decodes equal (`hearth_core::testkit::fuzz_round_plan`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hearth_core::testkit::fuzz_round_plan(data);
});
