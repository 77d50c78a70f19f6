//! Secure aggregation's wire decoder on arbitrary bytes (and on the same bytes behind a valid
//! magic and version, so the fuzzer reaches the parsers), then each decoded message fed to a
//! server and to a client at every stage: each answers a value or a typed error, never panics,
//! and an unsigned message that decodes encodes back to the same bytes.
#![no_main]

use hearth_core::secagg::wire::{self, MAGIC, Message, VERSION};
use hearth_core::secagg::{Params, client::Client, crypto, server::{Server, Step}};
use libfuzzer_sys::fuzz_target;

fn exercise(bytes: &[u8]) {
    let Ok(d) = wire::decode(bytes) else { return };
    match &d.message {
        Message::ShareKeysRequest(m) => assert_eq!(m.encode(), bytes),
        Message::MaskedInputRequest(m) => assert_eq!(m.encode(), bytes),
        Message::UnmaskRequest(m) => assert_eq!(m.encode(), bytes),
        _ => {}
    }
    // A round of three at each stage, given these bytes instead of the real message.
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
    let Ok(Step::Send(out)) = server.advance() else { return };
    let _ = clients[0].share_keys(bytes);
    for (i, m) in &out {
        if let Ok(r) = clients[*i as usize].share_keys(m) {
            let _ = server.receive(&r);
        }
    }
    let _ = server.receive(bytes);
    let Ok(Step::Send(out)) = server.advance() else { return };
    let _ = clients[1].masked_input(bytes, &[1, 2]);
    for (i, m) in &out {
        if let Ok(r) = clients[*i as usize].masked_input(m, &[1, 2]) {
            let _ = server.receive(&r);
        }
    }
    let _ = server.receive(bytes);
    let _ = clients[2].unmask(bytes);
}

fuzz_target!(|data: &[u8]| {
    exercise(data);
    let mut framed = MAGIC.to_vec();
    framed.push(VERSION);
    framed.extend_from_slice(data);
    exercise(&framed);
});
