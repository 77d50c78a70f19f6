//! SecAgg+ in wasm32 (Node, wasm-bindgen-test-runner): a round of 31 devices, each with 30
//! neighbours (the degree a 1,000-device round gives), over the tower group's 36,864 words, with
//! three dropping after their masked input. The unmasked sum must be the survivors' plain sum
//! (X25519, ChaCha20, ChaCha20-Poly1305, Ed25519 and GF(256) Shamir all run on wasm32 here), and
//! the per-device compute is printed for BENCHMARKS.md (`bash bench/secagg.sh --wasm`).
#![cfg(target_family = "wasm")]

use hearth_core::secagg::client::Client;
use hearth_core::secagg::server::{Server, Step};
use hearth_core::secagg::{Params, crypto};
use wasm_bindgen_test::wasm_bindgen_test;

fn seed(i: u32, salt: u8) -> [u8; 32] {
    let mut s = [salt; 32];
    s[..4].copy_from_slice(&i.to_le_bytes());
    s
}

#[wasm_bindgen_test]
fn a_round_of_31_devices_sums_exactly_on_wasm32() {
    let (n, dim) = (31u32, 36_864u32);
    let params = Params { round: [2; 16], clients: n, degree: 30, threshold: 16, min_survivors: 16, dim };
    let inputs: Vec<Vec<u32>> = (0..n).map(|i| (0..dim).map(|j| i.wrapping_mul(2_654_435_761).wrapping_add(j)).collect()).collect();
    let keys: Vec<[u8; 32]> = (0..n).map(|i| crypto::signing_key(&seed(i, 1)).unwrap().1).collect();
    let mut server = Server::new(params.clone(), keys, [7; 32]).unwrap();
    let mut device_ms = vec![0.0f64; n as usize];
    let now = js_sys::Date::now;
    let mut clients = vec![];
    for i in 0..n {
        let t = now();
        let (c, m) = Client::new(params.clone(), i, seed(i, 1), seed(i, 2)).unwrap();
        device_ms[i as usize] += now() - t;
        server.receive(&m).unwrap();
        clients.push(c);
    }
    let mut stage = 1;
    let mut server_unmask_ms = 0.0;
    let outcome = loop {
        let t = now();
        let step = server.advance().unwrap();
        if stage == 4 {
            server_unmask_ms = now() - t;
        }
        let out = match step {
            Step::Done(o) => break o,
            Step::Send(out) => out,
        };
        for (i, msg) in out {
            if stage == 3 && i % 10 == 5 {
                continue; // drops after its masked input
            }
            let c = &mut clients[i as usize];
            let t = now();
            let r = match stage {
                1 => c.share_keys(&msg),
                2 => c.masked_input(&msg, &inputs[i as usize]),
                _ => c.unmask(&msg),
            }
            .unwrap();
            device_ms[i as usize] += now() - t;
            server.receive(&r).unwrap();
        }
        stage += 1;
    };
    let mut want = vec![0u32; dim as usize];
    for &i in &outcome.survivors {
        for (w, v) in want.iter_mut().zip(&inputs[i as usize]) {
            *w = w.wrapping_add(*v);
        }
    }
    assert_eq!(outcome.survivors.len(), 31, "survivors are those whose masked input is in the sum");
    assert_eq!(outcome.sum, want);
    device_ms.sort_by(f64::total_cmp);
    wasm_bindgen_test::console_log!(
        "wasm32 SecAgg+ device, 30 neighbours, {dim} words: p50 {:.1} ms, max {:.1} ms (all four stages); server unmask and sum of {n}: {:.0} ms",
        device_ms[n as usize / 2],
        device_ms[n as usize - 1],
        server_unmask_ms
    );
}
