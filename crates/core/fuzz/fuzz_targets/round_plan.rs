//! `RoundPlan::decode` on arbitrary bytes and behind a valid frame (magic, version, length), so
//! the fuzzer reaches the JSON body: a plan that decodes checks without panicking and encodes
//! back to a plan that decodes equal.
#![no_main]

use hearth_core::fed::plan::{PLAN_MAGIC, PLAN_VERSION, RoundPlan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = RoundPlan::decode(data);
    let mut framed = PLAN_MAGIC.to_vec();
    framed.push(PLAN_VERSION);
    framed.extend_from_slice(&(data.len() as u32).to_le_bytes());
    framed.extend_from_slice(data);
    if let Ok(plan) = RoundPlan::decode(&framed) {
        let _ = plan.check(1000);
        assert_eq!(RoundPlan::decode(&plan.encode()).ok(), Some(plan));
    }
});
