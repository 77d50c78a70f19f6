//! A flood of 10,000 malformed or oversized requests against the server (a child process) while
//! devices run a round: every one is refused with its typed error (or the connection is cut
//! before an oversized body is read), the server's memory stays bounded (its peak resident set is
//! printed and checked), and the rounds complete.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{DEVICES, config, free_port, healthy, memory_kb, population, spawn};
use hearth_aggregator::simulate::{SimulateConfig, simulate};

const FLOOD: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_bad_requests_is_refused_in_bounded_memory_and_the_round_completes() {
    let dir = std::env::temp_dir().join(format!("hearth-flood-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = free_port();
    let cfg = config(&dir, port, 2);
    let mut child = spawn(&cfg, &dir.join("server.log"));
    let pid = child.id();
    let base = format!("http://127.0.0.1:{port}");
    healthy(&base).await;
    let (idle_kb, _) = memory_kb(pid).unwrap();
    // The devices.
    let sim = SimulateConfig { servers: vec![base.clone()], users: (0..DEVICES).collect(), dropout: 0.0, drop_from: 0, seed: 4, rounds: 2, parallel_training: 2, updates: None };
    let devices = tokio::spawn(async move { simulate(&sim, population(), |_| {}).await });
    // The flood: garbage messages, oversized messages, broken enrollments, unknown rounds'
    // plans.
    // A fresh connection per request: the server closes one whose oversized body it did not read.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).pool_max_idle_per_host(0).build().unwrap();
    let codes: Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>> = Arc::default();
    let cut = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    let watcher = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                if let Some((rss, _)) = memory_kb(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let t = Instant::now();
    // Over the limit (≈ 0.32 MB for this round), by a quarter.
    let oversized = bytes_of(400 << 10);
    let garbage = bytes_of(1000);
    futures::future::join_all((0..64).map(|lane| {
        let (http, base, codes, cut, oversized, garbage) = (http.clone(), base.clone(), codes.clone(), cut.clone(), oversized.clone(), garbage.clone());
        async move {
            for k in (lane..FLOOD).step_by(64) {
                let req = match k % 4 {
                    0 => http.post(format!("{base}/v1/rounds/1/messages")).body(garbage.clone()),
                    1 => http.post(format!("{base}/v1/rounds/1/messages")).body(oversized.clone()),
                    2 => http.post(format!("{base}/v1/devices")).header("content-type", "application/json").body("{\"public_key\": 12"),
                    _ => http.get(format!("{base}/v1/rounds/999999/plan")),
                };
                match req.send().await {
                    Ok(res) => {
                        let status = res.status().as_u16();
                        let body: serde_json::Value = res.json().await.unwrap_or_default();
                        let code = body["error"]["code"].as_str().unwrap_or("<no code>").to_owned();
                        assert!((400..500).contains(&status) || status == 503, "{status} {body}");
                        *codes.lock().unwrap().entry(format!("{status} {code}")).or_default() += 1;
                    }
                    // An oversized body may be cut off before it is all sent.
                    Err(_) if k % 4 == 1 => {
                        cut.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => panic!("request {k}: {e}"),
                }
            }
        }
    }))
    .await;
    let flood_secs = t.elapsed().as_secs_f64();
    let report = devices.await.unwrap().unwrap();
    watcher.abort();
    let (_, hwm_kb) = memory_kb(pid).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let codes = codes.lock().unwrap().clone();
    eprintln!(
        "{FLOOD} bad requests in {flood_secs:.1} s: {codes:?}, {} oversized cut off; server resident set {} MB idle, {} MB peak sampled, {} MB high-water mark",
        cut.load(Ordering::Relaxed),
        idle_kb / 1024,
        peak.load(Ordering::Relaxed) / 1024,
        hwm_kb / 1024
    );
    let answered: u64 = codes.values().sum();
    assert_eq!(answered + cut.load(Ordering::Relaxed), FLOOD as u64);
    for code in codes.keys() {
        assert!(
            ["400 malformed", "413 too_large", "404 no_round", "503 overloaded", "429 rate_limited"].contains(&code.as_str()),
            "unexpected answer {code}"
        );
    }
    // Bounded: at most 256 bodies of the limit (≈ 0.3 MB each) in flight, over the idle set.
    assert!(hwm_kb < idle_kb + 200 * 1024, "peak {hwm_kb} kB over an idle {idle_kb} kB");
    for r in &report.rounds {
        assert_eq!(r.status, "done", "{r:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn bytes_of(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}
