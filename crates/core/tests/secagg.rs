//! SecAgg+ end to end through the real client and server state machines: sums are exact modulo
//! 2³² whatever drops out where, as long as every needed secret keeps `threshold` holders; the
//! round aborts exactly when one does not (predicted here from the graph, independently of the
//! server's own checks); the server never holds both kinds of share for a client; masked inputs
//! look uniform; and what the protocol forbids is refused.

use std::collections::BTreeSet;

use hearth_core::secagg::client::Client;
use hearth_core::secagg::graph::Graph;
use hearth_core::secagg::server::{Server, Step};
use hearth_core::secagg::{Params, SecAggError, crypto};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

/// Who drops before sending each stage's message: advertise, share keys, masked input, unmask.
type Drops = [BTreeSet<u32>; 4];

struct Run {
    result: Result<Vec<u32>, SecAggError>,
    survivors: Vec<u32>,
    both_kinds: Vec<u32>,
}

fn seed(i: u32, salt: u8) -> [u8; 32] {
    let mut s = [salt; 32];
    s[..4].copy_from_slice(&i.to_le_bytes());
    s
}

fn run(params: &Params, inputs: &[Vec<u32>], drops: &Drops, graph_seed: [u8; 32]) -> Run {
    let n = params.clients;
    let keys: Vec<[u8; 32]> = (0..n).map(|i| crypto::signing_key(&seed(i, 1)).expect("a signing key").1).collect();
    let mut server = Server::new(params.clone(), keys, graph_seed).expect("a server");
    let mut clients: Vec<Option<Client>> = vec![];
    for i in 0..n {
        let (c, msg) = Client::new(params.clone(), i, seed(i, 1), seed(i, 2)).expect("a client");
        if drops[0].contains(&i) {
            clients.push(None);
        } else {
            server.receive(&msg).expect("an advertisement");
            clients.push(Some(c));
        }
    }
    let mut stage = 1;
    let result = loop {
        match server.advance() {
            Err(e) => break Err(e),
            Ok(Step::Done(outcome)) => {
                break Ok((outcome.sum, outcome.survivors));
            }
            Ok(Step::Send(out)) => {
                for (i, msg) in out {
                    let Some(c) = clients[i as usize].as_mut() else { continue };
                    if drops[stage].contains(&i) {
                        clients[i as usize] = None;
                        continue;
                    }
                    let reply = match stage {
                        1 => c.share_keys(&msg),
                        2 => c.masked_input(&msg, &inputs[i as usize]),
                        _ => c.unmask(&msg),
                    };
                    match reply {
                        Ok(bytes) => server.receive(&bytes).expect("a client's answer"),
                        // A client that aborts sends nothing more: to the server, a dropout.
                        Err(SecAggError::Abort(_)) => clients[i as usize] = None,
                        Err(e) => panic!("client {i} at stage {stage}: {e}"),
                    }
                }
                stage += 1;
            }
        }
    };
    let both_kinds = server.both_kinds_held();
    match result {
        Ok((sum, survivors)) => Run { result: Ok(sum), survivors, both_kinds },
        Err(e) => Run { result: Err(e), survivors: vec![], both_kinds },
    }
}

/// Whether the round must complete, and with which survivors, computed from the graph and the
/// drops alone (the protocol's rules, not the server's code).
fn predict(params: &Params, drops: &Drops, graph_seed: [u8; 32]) -> Option<BTreeSet<u32>> {
    let g = Graph::new(params.clients, params.degree, graph_seed);
    let t = params.threshold as usize;
    let min = params.min_survivors as usize;
    let all: BTreeSet<u32> = (0..params.clients).collect();
    let nb = |u: u32| g.neighbours(u).into_iter().collect::<BTreeSet<u32>>();
    let a1: BTreeSet<u32> = all.difference(&drops[0]).copied().collect();
    if a1.len() < min {
        return None;
    }
    // A client aborts at share keys with fewer than t neighbours alive.
    let a2: BTreeSet<u32> = a1.iter().copied().filter(|&u| !drops[1].contains(&u) && nb(u).intersection(&a1).count() >= t).collect();
    if a2.len() < min {
        return None;
    }
    // ... and at masked input with fewer than t neighbours that shared keys with it.
    let a3: BTreeSet<u32> = a2.iter().copied().filter(|&u| !drops[2].contains(&u) && nb(u).intersection(&a2).count() >= t).collect();
    if a3.len() < min {
        return None;
    }
    let needed = |u: u32| a3.contains(&u) || nb(u).iter().any(|v| *v != u && a3.contains(v));
    for &u in a2.iter().filter(|&&u| needed(u)) {
        // u sealed shares to its neighbours alive at stage 1; those in a3 are asked for them.
        let holders: BTreeSet<u32> = nb(u).into_iter().filter(|v| a3.contains(v) && (a1.contains(v))).collect();
        if holders.len() < t {
            return None;
        }
        let answering = holders.iter().filter(|v| !drops[3].contains(v)).count();
        if answering < t {
            return None;
        }
    }
    Some(a3)
}

fn plain_sum(inputs: &[Vec<u32>], who: &BTreeSet<u32>, dim: usize) -> Vec<u32> {
    let mut s = vec![0u32; dim];
    for &i in who {
        for (a, b) in s.iter_mut().zip(&inputs[i as usize]) {
            *a = a.wrapping_add(*b);
        }
    }
    s
}

fn case(n: u32, degree: u32, threshold: u32, dim: u32, rates: [f64; 4], seed_byte: u64) {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed_byte);
    let params = Params { round: [seed_byte as u8; 16], clients: n, degree, threshold, min_survivors: 1, dim };
    params.check().expect("valid parameters");
    let inputs: Vec<Vec<u32>> = (0..n).map(|_| (0..dim).map(|_| rng.random()).collect()).collect();
    let drops: Drops = rates.map(|p| (0..n).filter(|_| rng.random::<f64>() < p).collect());
    let graph_seed: [u8; 32] = rng.random();
    let want = predict(&params, &drops, graph_seed);
    let got = run(&params, &inputs, &drops, graph_seed);
    assert!(got.both_kinds.is_empty(), "seed {seed_byte}: the server holds both kinds of share for {:?}", got.both_kinds);
    match (want, got.result) {
        (Some(survivors), Ok(sum)) => {
            assert_eq!(got.survivors, survivors.iter().copied().collect::<Vec<_>>(), "seed {seed_byte}");
            assert_eq!(sum, plain_sum(&inputs, &survivors, dim as usize), "seed {seed_byte}: the sum is exact");
        }
        (None, Err(SecAggError::Abort(_))) => {}
        (want, got) => panic!("seed {seed_byte} n {n} k {degree} t {threshold}: predicted {want:?}, got {got:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn sums_are_exact_and_aborts_exactly_when_a_secret_loses_its_holders(
        // Mostly small rounds (fast), a quarter of them up to 1,000 clients.
        n in prop_oneof![3 => 2u32..=240, 1 => 241u32..=1000], half in 1u32..=20, t_frac in 0.3f64..0.9, dim in 1u32..=12,
        r0 in 0.0f64..0.15, r1 in 0.0f64..0.15, r2 in 0.0f64..0.25, r3 in 0.0f64..0.25, seed in any::<u64>(),
    ) {
        let degree = (2 * half).min(n - 1 + (n - 1) % 2);
        let size = degree.min(n - 1) + 1;
        let threshold = ((f64::from(size) * t_frac).ceil() as u32).clamp(2.min(size), size);
        case(n, degree, threshold, dim, [r0, r1, r2, r3], seed);
    }
}

#[test]
fn a_thousand_clients_with_dropouts_at_every_stage() {
    // k = 30, t = 17 (the defaults for 1,000 clients); 2 % drop at each of the first three
    // stages and 10 % at unmasking: the round completes with the survivors' exact sum.
    let p = Params::for_clients([9; 16], 1000, 16, 1);
    assert_eq!((p.degree, p.threshold), (30, 16));
    case(1000, p.degree, p.threshold, 16, [0.02, 0.02, 0.02, 0.10], 1);
    // Beyond the threshold: 60 % drop at unmasking, the round aborts and reveals nothing.
    case(300, 20, 11, 4, [0.0, 0.0, 0.0, 0.6], 2);
}

#[test]
fn a_masked_input_is_uniform_whatever_the_input() {
    let params = Params { round: [3; 16], clients: 3, degree: 2, threshold: 2, min_survivors: 2, dim: 8192 };
    for input in [vec![0u32; 8192], vec![u32::MAX; 8192], (0..8192).collect::<Vec<u32>>()] {
        let keys: Vec<[u8; 32]> = (0..3).map(|i| crypto::signing_key(&seed(i, 1)).unwrap().1).collect();
        let mut server = Server::new(params.clone(), keys, [4; 32]).unwrap();
        let mut cs: Vec<Client> = (0..3)
            .map(|i| {
                let (c, m) = Client::new(params.clone(), i, seed(i, 1), seed(i, 7)).unwrap();
                server.receive(&m).unwrap();
                c
            })
            .collect();
        let Step::Send(out) = server.advance().unwrap() else { panic!() };
        for (i, m) in out {
            server.receive(&cs[i as usize].share_keys(&m).unwrap()).unwrap();
        }
        let Step::Send(out) = server.advance().unwrap() else { panic!() };
        let (i, m) = &out[0];
        let bytes = cs[*i as usize].masked_input(m, &input).unwrap();
        let words = &bytes[bytes.len() - 64 - 4 * 8192..bytes.len() - 64];
        let mut counts = [0u32; 256];
        words.iter().for_each(|&b| counts[b as usize] += 1);
        let e = words.len() as f64 / 256.0;
        let chi2: f64 = counts.iter().map(|&c| (f64::from(c) - e).powi(2) / e).sum();
        // 255 degrees of freedom: the 99.9th percentile is 330.5.
        assert!(chi2 < 330.5, "chi-square {chi2}");
    }
}

#[test]
fn what_the_protocol_forbids_is_refused() {
    let params = Params { round: [5; 16], clients: 4, degree: 4, threshold: 3, min_survivors: 3, dim: 2 };
    let keys: Vec<[u8; 32]> = (0..4).map(|i| crypto::signing_key(&seed(i, 1)).unwrap().1).collect();
    let mut server = Server::new(params.clone(), keys.clone(), [6; 32]).unwrap();
    let mut cs = vec![];
    let mut adverts = vec![];
    for i in 0..4 {
        let (c, m) = Client::new(params.clone(), i, seed(i, 1), seed(i, 9)).unwrap();
        server.receive(&m).unwrap();
        adverts.push(m);
        cs.push(c);
    }
    // A replay, a message signed by another key, and one for another round.
    assert_eq!(server.receive(&adverts[0]), Err(SecAggError::Duplicate(0)));
    let (_, forged) = Client::new(params.clone(), 1, seed(9, 1), seed(1, 9)).unwrap();
    assert_eq!(server.receive(&forged), Err(SecAggError::BadSignature(1)));
    let (_, other) = Client::new(Params { round: [6; 16], ..params.clone() }, 1, seed(1, 1), seed(1, 9)).unwrap();
    assert_eq!(server.receive(&other), Err(SecAggError::WrongRound));
    let Step::Send(out) = server.advance().unwrap() else { panic!() };
    // A late advertisement is refused once the stage closed.
    let (_, late) = Client::new(params.clone(), 2, seed(2, 1), seed(2, 9)).unwrap();
    assert_eq!(server.receive(&late), Err(SecAggError::WrongStage));
    for (i, m) in &out {
        let reply = cs[*i as usize].share_keys(m).unwrap();
        server.receive(&reply).unwrap();
        // A client answers each stage once.
        assert_eq!(cs[*i as usize].share_keys(m), Err(SecAggError::WrongStage));
    }
    let Step::Send(out) = server.advance().unwrap() else { panic!() };
    // Client 3 drops before its masked input.
    for (i, m) in out.iter().filter(|(i, _)| *i != 3) {
        server.receive(&cs[*i as usize].masked_input(m, &[1, 2]).unwrap()).unwrap();
    }
    let Step::Send(out) = server.advance().unwrap() else { panic!() };
    let round = params.round;
    let req = |survivors: Vec<u32>, dropped: Vec<u32>| hearth_core::secagg::wire::UnmaskRequest { round, survivors, dropped }.encode();
    // A server that asks one client for both kinds of share of client 1, or names the client
    // itself as dropped, or names a client that never shared keys, is refused.
    assert!(matches!(cs[0].unmask(&req(vec![0, 1, 2], vec![1, 3])), Err(SecAggError::Refused(_))));
    assert!(matches!(cs[0].unmask(&req(vec![1, 2], vec![0, 3])), Err(SecAggError::Refused(_))));
    assert!(matches!(cs[0].unmask(&req(vec![0, 1, 2, 2], vec![3])), Err(SecAggError::Refused(_))));
    for (i, m) in &out {
        server.receive(&cs[*i as usize].unmask(m).unwrap()).unwrap();
        assert!(matches!(cs[*i as usize].unmask(m), Err(SecAggError::Refused(_))), "a second unmasking is refused");
    }
    let Step::Done(outcome) = server.advance().unwrap() else { panic!() };
    assert_eq!(outcome.sum, [3, 6]);
    assert_eq!(outcome.dropped, [3]);
    assert!(server.both_kinds_held().is_empty());
    assert_eq!(server.advance(), Err(SecAggError::WrongStage));
}
