//! The aggregator process SIGKILLed at random moments of its rounds and restarted on the same
//! data directory, while devices (the real client code over HTTP) keep retrying: afterwards every
//! message the server acknowledged is in its database, the rounds completed, and the published
//! model is the one an uninterrupted run with the same seeds publishes, bit for bit (the devices of
//! both runs train for real: with the same seeds they send the same updates).
//!
//! `HEARTH_CRASH_ROUNDS` (default 5) sets the rounds; the kills come every 20–250 ms until the
//! devices see the last round end.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{DEVICES, config, free_port, population, spawn};
use hearth_aggregator::serve::store::{SqliteStore, Store};
use hearth_aggregator::simulate::{Acked, SimulateConfig, simulate};
use rand::{Rng, SeedableRng};

struct Run {
    /// global.bin of versions 2, 3, … (one per round).
    models: Vec<Vec<u8>>,
    acked: Vec<Acked>,
    kills: u32,
    dir: PathBuf,
}

/// One run: the server as a child process, the devices in this process, and (if `kill`) a
/// killer restarting the server at random moments until the devices saw `rounds` rounds end.
async fn run(name: &str, rounds: u32, kill: bool) -> Run {
    let dir = std::env::temp_dir().join(format!("hearth-crash-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = free_port();
    let cfg = config(&dir, port, rounds);
    let log = dir.join("server.log");
    let child = Arc::new(std::sync::Mutex::new(spawn(&cfg, &log)));
    let pop = population();
    let base = format!("http://127.0.0.1:{port}");
    let sim = SimulateConfig { servers: vec![base.clone()], users: (0..DEVICES).collect(), dropout: 0.0, drop_from: 0, seed: 9, rounds, parallel_training: 2, updates: None };
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let (child, done, cfg, log) = (child.clone(), done.clone(), cfg.clone(), log.clone());
        std::thread::spawn(move || {
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(u64::from(std::process::id()));
            let mut kills = 0u32;
            while kill && !done.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(rng.random_range(20..250)));
                let mut c = child.lock().unwrap();
                c.kill().unwrap(); // SIGKILL
                c.wait().unwrap();
                kills += 1;
                let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
                writeln!(f, "=== SIGKILL {kills} ===").unwrap();
                *c = spawn(&cfg, &log);
            }
            kills
        })
    };
    let t = Instant::now();
    let report = simulate(&sim, pop, |_| {}).await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let kills = killer.join().unwrap();
    let report = report.unwrap_or_else(|e| panic!("{name}: {e}; server log in {}", log.display()));
    eprintln!("{name}: {rounds} rounds in {:.1} s with {kills} kills", t.elapsed().as_secs_f64());
    for r in &report.rounds {
        assert_eq!(r.status, "done", "{name}: {r:?}; server log in {}", log.display());
        assert_eq!(r.survivors, DEVICES, "{name}: {r:?}");
    }
    // The latest model, read over HTTP from the (restarted) server once it answers.
    common::healthy(&base).await;
    let latest: serde_json::Value = reqwest::get(format!("{base}/v1/models/latest")).await.unwrap().json().await.unwrap();
    assert_eq!(latest["version"], u64::from(rounds) + 1, "{latest}");
    let mut models = vec![];
    for v in 2..=rounds + 1 {
        models.push(reqwest::get(format!("{base}/v1/models/{v}/global.bin")).await.unwrap().bytes().await.unwrap().to_vec());
    }
    let mut c = child.lock().unwrap();
    c.kill().unwrap();
    c.wait().unwrap();
    Run { models, acked: report.acked, kills, dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_at_random_moments_the_server_loses_nothing_and_publishes_the_same_model() {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into())).with_test_writer().try_init();
    let rounds: u32 = std::env::var("HEARTH_CRASH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let calm = run("calm", rounds, false).await;
    let killed = run("killed", rounds, true).await;
    assert!(killed.kills >= rounds, "only {} kills", killed.kills);
    // Every acknowledged message is in the database.
    let store = SqliteStore::open(&format!("sqlite:{}", killed.dir.join("aggregator.db").display())).await.unwrap();
    let hex = hearth_aggregator::serve::models::sha256_hex;
    for a in &killed.acked {
        let stored = store.messages(a.round, i64::from(a.stage)).await.unwrap();
        assert!(
            stored.iter().any(|(i, b)| *i == i64::from(a.index) && hex(b) == a.sha256),
            "acknowledged but not stored: {a:?}"
        );
    }
    assert_eq!(killed.acked.len(), calm.acked.len(), "every device sent its four messages each round in both runs");
    for (k, (a, b)) in calm.models.iter().zip(&killed.models).enumerate() {
        assert!(a == b, "model version {} published after {} kills differs from the uninterrupted run's", k + 2, killed.kills);
    }
    eprintln!("{} kills; {} acknowledged messages all stored; the published model equals the uninterrupted run's", killed.kills, killed.acked.len());
    let _ = std::fs::remove_dir_all(&killed.dir);
    let _ = std::fs::remove_dir_all(&calm.dir);
}
