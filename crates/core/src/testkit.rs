//! Helpers for tests and benchmarks (feature `testkit`, or this crate's own tests): seeded
//! Gaussian data and top-k recall. Not part of the product's API.

use crate::device::score::Hit;

/// `n` seeded standard-normal values (Box–Muller over ChaCha8): the synthetic catalogs and
/// queries of the scoring benchmark and tests.
pub fn gaussian(seed: u64, n: usize) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = rng.random_range(f64::EPSILON..1.0);
        let u2: f64 = rng.random();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push((r * t.cos()) as f32);
        out.push((r * t.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// Fraction of `truth`'s items that `found` also holds (top-k recall).
pub fn recall(found: &[Hit], truth: &[Hit]) -> f64 {
    if truth.is_empty() {
        return 1.0;
    }
    let hits = truth.iter().filter(|t| found.iter().any(|f| f.index == t.index)).count();
    hits as f64 / truth.len() as f64
}

/// The secure-aggregation fuzz target's body (`crates/core/fuzz`, `secagg_message`; replayed by
/// `tests/fuzz_regressions.rs`): decodes `bytes` (an unsigned message must encode back to them),
/// then hands them to a server and to clients at every stage of a real round of three. Whether
/// they decoded.
pub fn fuzz_secagg_message(bytes: &[u8]) -> bool {
    use crate::secagg::wire::{self, Message};
    use crate::secagg::{Params, client::Client, crypto, server::{Server, Step}};
    let Ok(d) = wire::decode(bytes) else { return false };
    match &d.message {
        Message::ShareKeysRequest(m) => assert_eq!(m.encode(), bytes),
        Message::MaskedInputRequest(m) => assert_eq!(m.encode(), bytes),
        Message::UnmaskRequest(m) => assert_eq!(m.encode(), bytes),
        _ => {}
    }
    let params = Params { round: [0; 16], clients: 3, degree: 2, threshold: 2, min_survivors: 2, dim: 2 };
    let keys: Vec<[u8; 32]> = (0..3u8).map(|i| crypto::signing_key(&[i + 1; 32]).expect("key").1).collect();
    let mut server = Server::new(params.clone(), keys, [9; 32]).expect("server");
    let mut clients: Vec<Client> = (0..3u8)
        .map(|i| {
            let (c, m) = Client::new(params.clone(), u32::from(i), [i + 1; 32], [i + 7; 32]).expect("client");
            server.receive(&m).expect("advert");
            c
        })
        .collect();
    let _ = server.receive(bytes);
    let Ok(Step::Send(out)) = server.advance() else { return true };
    let _ = clients[0].share_keys(bytes);
    for (i, m) in &out {
        if let Ok(r) = clients[*i as usize].share_keys(m) {
            let _ = server.receive(&r);
        }
    }
    let _ = server.receive(bytes);
    let Ok(Step::Send(out)) = server.advance() else { return true };
    let _ = clients[1].masked_input(bytes, &[1, 2]);
    for (i, m) in &out {
        if let Ok(r) = clients[*i as usize].masked_input(m, &[1, 2]) {
            let _ = server.receive(&r);
        }
    }
    let _ = server.receive(bytes);
    let _ = clients[2].unmask(bytes);
    true
}

/// The round-plan fuzz target's body: `bytes` as a plan, then behind a valid frame; a plan that
/// decodes is checked and encodes back to an equal plan. Whether the framed bytes decoded.
pub fn fuzz_round_plan(bytes: &[u8]) -> bool {
    use crate::fed::plan::{PLAN_MAGIC, PLAN_VERSION, RoundPlan};
    let _ = RoundPlan::decode(bytes);
    let mut framed = PLAN_MAGIC.to_vec();
    framed.push(PLAN_VERSION);
    framed.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    framed.extend_from_slice(bytes);
    let Ok(plan) = RoundPlan::decode(&framed) else { return false };
    let _ = plan.check(1000);
    assert_eq!(RoundPlan::decode(&plan.encode()).ok(), Some(plan), "a plan must encode back to itself");
    true
}
