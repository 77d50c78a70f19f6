//! Secure aggregation at scale: one SecAgg+ round of N devices (default 1,000) over updates of
//! D words (default 36,864: the `tower` group of the MovieLens model, 36,146 values, padded for
//! the distributed noise), with a share of the devices dropping after the masked-input stage
//! (default 10 %: their self masks must be removed from the sum). Prints per-device compute (each
//! stage, median and p95), the server's work per stage (the unmasking and sum separately), the
//! whole round on both cores, and the bytes a device sends and receives against the plain f32
//! update, as a table or (`--json`) one object. The sum is checked against the plain sum.
//!
//! ```text
//! bash bench/secagg.sh [--devices N] [--dim D] [--dropout P] [--dropout-before P] [--json]
//! ```

use std::time::Instant;

use hearth_core::secagg::client::Client;
use hearth_core::secagg::server::{Server, Step};
use hearth_core::secagg::{Params, crypto};

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn pct(xs: &mut [f64], p: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[((xs.len() as f64 * p) as usize).min(xs.len() - 1)]
}

fn seed(i: u32, salt: u8) -> [u8; 32] {
    let mut s = [salt; 32];
    s[..4].copy_from_slice(&i.to_le_bytes());
    s
}

fn main() {
    let n: u32 = arg("--devices", 1000);
    let dim: u32 = arg("--dim", 36_864);
    let plain_values: usize = arg("--values", 36_146);
    let dropout: f64 = arg("--dropout", 0.1);
    // Devices that drop after sharing keys, before their masked input: the server then rebuilds
    // their mask keys and removes their pairwise masks from their neighbours' inputs.
    let dropout_before: f64 = arg("--dropout-before", 0.0);
    let json = std::env::args().any(|a| a == "--json");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let params = Params::for_clients([1; 16], n, dim, n / 2);
    let inputs: Vec<Vec<u32>> = (0..n).map(|i| (0..dim).map(|j| i.wrapping_mul(2_654_435_761).wrapping_add(j)).collect()).collect();
    // Every tenth device (for 10 %) drops after sending its masked input.
    let drops = |i: u32| (f64::from(i % 100) + 0.5) / 100.0 < dropout;
    let drops_before = |i: u32| (f64::from((i + 50) % 100) + 0.5) / 100.0 < dropout_before;

    let round_start = Instant::now();
    let keys: Vec<[u8; 32]> = (0..n).map(|i| crypto::signing_key(&seed(i, 1)).expect("key").1).collect();
    let mut server = Server::new(params.clone(), keys, [7; 32]).expect("server");
    let mut server_ms = [0.0f64; 4];
    let mut device_ms = vec![[0.0f64; 4]; n as usize];
    let mut up = vec![0usize; n as usize];
    let mut down = vec![0usize; n as usize];
    // Stage 1, on all cores: each device makes its keys.
    let made: Vec<(Client, Vec<u8>, f64)> = hearth_core::platform::par_map(n as usize, |i| {
        let t = Instant::now();
        let (c, m) = Client::new(params.clone(), i as u32, seed(i as u32, 1), seed(i as u32, 2)).expect("client");
        (c, m, t.elapsed().as_secs_f64() * 1e3)
    });
    let mut clients = Vec::with_capacity(n as usize);
    let t = Instant::now();
    for (i, (c, m, ms)) in made.into_iter().enumerate() {
        device_ms[i][0] = ms;
        up[i] += m.len();
        server.receive(&m).expect("advert");
        clients.push(std::sync::Mutex::new(c));
    }
    server_ms[0] = t.elapsed().as_secs_f64() * 1e3;
    let mut stage = 1;
    let sum = loop {
        let t = Instant::now();
        let step = server.advance().expect("the round completes");
        server_ms[stage - 1] += t.elapsed().as_secs_f64() * 1e3;
        let out = match step {
            Step::Done(o) => break o,
            Step::Send(out) => out,
        };
        let replies: Vec<Option<(Vec<u8>, f64)>> = hearth_core::platform::par_map(out.len(), |k| {
            let (i, msg) = &out[k];
            if (stage == 3 && drops(*i)) || (stage == 2 && drops_before(*i)) {
                return None;
            }
            let mut c = clients[*i as usize].lock().expect("one thread per client");
            let t = Instant::now();
            let r = match stage {
                1 => c.share_keys(msg),
                2 => c.masked_input(msg, &inputs[*i as usize]),
                _ => c.unmask(msg),
            }
            .expect("the client answers");
            Some((r, t.elapsed().as_secs_f64() * 1e3))
        });
        let t = Instant::now();
        for ((i, msg), reply) in out.iter().zip(replies) {
            down[*i as usize] += msg.len();
            if let Some((r, ms)) = reply {
                device_ms[*i as usize][stage] = ms;
                up[*i as usize] += r.len();
                server.receive(&r).expect("the server accepts");
            }
        }
        server_ms[stage] += t.elapsed().as_secs_f64() * 1e3;
        stage += 1;
    };
    let round_s = round_start.elapsed().as_secs_f64();
    // The server's last advance is the unmasking and the sum.
    let unmask_ms = server_ms[3];
    let mut want = vec![0u32; dim as usize];
    for &i in &sum.survivors {
        for (w, v) in want.iter_mut().zip(&inputs[i as usize]) {
            *w = w.wrapping_add(*v);
        }
    }
    assert_eq!(sum.sum, want, "the unmasked sum is the survivors' plain sum");
    let survivors = sum.survivors.len();
    let per_device: Vec<f64> = device_ms.iter().map(|d| d.iter().sum()).collect();
    let plain = 4 * plain_values;
    let mean_over = |v: &[usize]| sum.survivors.iter().map(|&i| v[i as usize] as f64).sum::<f64>() / survivors as f64;
    let (up_b, down_b) = (mean_over(&up), mean_over(&down));
    let stage_p50: Vec<f64> = (0..4).map(|s| pct(&mut device_ms.iter().map(|d| d[s]).filter(|&x| x > 0.0).collect::<Vec<_>>(), 0.5)).collect();
    let (p50, p95) = (pct(&mut per_device.clone(), 0.5), pct(&mut per_device.clone(), 0.95));
    if json {
        println!(
            "{{\"devices\":{n},\"dim\":{dim},\"values\":{plain_values},\"degree\":{},\"threshold\":{},\"survivors\":{survivors},\"dropped\":{},\"device_ms_p50\":{p50:.3},\"device_ms_p95\":{p95:.3},\"device_stage_ms_p50\":[{:.3},{:.3},{:.3},{:.3}],\"server_stage_ms\":[{:.1},{:.1},{:.1},{:.1}],\"server_unmask_and_sum_ms\":{unmask_ms:.1},\"round_s\":{round_s:.3},\"threads\":{threads},\"bytes_up\":{up_b:.0},\"bytes_down\":{down_b:.0},\"plain_bytes\":{plain},\"expansion_up\":{:.4}}}",
            params.degree, params.threshold, sum.dropped.len(), stage_p50[0], stage_p50[1], stage_p50[2], stage_p50[3], server_ms[0], server_ms[1], server_ms[2], server_ms[3], up_b / plain as f64
        );
        return;
    }
    println!(
        "SecAgg+ round: {n} devices, {dim} words ({plain_values} values), degree {}, threshold {}, {:.0} % drop after the masked input, {:.0} % before it",
        params.degree,
        params.threshold,
        dropout * 100.0,
        dropout_before * 100.0
    );
    println!("| what | measured | aim |\n|---|---|---|");
    println!("| device compute, all four stages (p50 / p95) | {p50:.2} / {p95:.2} ms | ≤ 20 ms |");
    println!("| … per stage p50: keys, share keys, masked input, unmask | {:.2} / {:.2} / {:.2} / {:.2} ms | |", stage_p50[0], stage_p50[1], stage_p50[2], stage_p50[3]);
    println!("| server: unmask and sum ({} survivors, {} dropped masks removed) | {unmask_ms:.0} ms | ≤ 1 s |", survivors, sum.dropped.len());
    println!("| server: accept keys, route shares, add masked inputs | {:.0} / {:.0} / {:.0} ms | |", server_ms[0], server_ms[1], server_ms[2]);
    println!("| whole round, {threads} threads for the devices | {round_s:.2} s | ≤ 5 s |");
    println!("| bytes up per device (plain f32 update {plain} B) | {up_b:.0} B ({:.3}×) | ≤ 1.1× |", up_b / plain as f64);
    println!("| bytes down per device | {down_b:.0} B | |");
}
