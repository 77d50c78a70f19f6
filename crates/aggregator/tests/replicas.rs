//! Two aggregator replicas on one PostgreSQL that the test starts itself (Debian's server
//! binaries, `initdb` / `pg_ctl` as the `postgres` user in a temporary directory, no network).
//! A owns the rounds; the devices speak to B. In round 1, B (taking every submission) is
//! SIGKILLed mid-round: the devices move to A and resend what was not acknowledged. B restarts.
//! In round 2, A (the owner, now taking the submissions) is SIGKILLed mid-round: the devices
//! move back to B, which takes the ownership (the advisory lock dies with the killed process's
//! connection), rebuilds the round from the database and completes it. Both rounds complete with
//! every device, and every acknowledged message is in them exactly once.
//!
//! `HEARTH_REPLICA_DEVICES` (default 100) sets the devices (past MovieLens' 943 people, device k
//! holds user k mod 943's history).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{config_with, free_port, healthy, population, spawn};
use hearth_aggregator::serve::store::{PgStore, Store};
use hearth_aggregator::simulate::{SimulateConfig, simulate};

/// A PostgreSQL server in a temporary directory, stopped and removed on drop.
struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl Postgres {
    fn start(dir: &Path) -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| d.filter_map(Result::ok).map(|e| e.path().join("bin")).filter(|b| b.join("initdb").exists()).max())
            .expect("PostgreSQL's server binaries (Debian package postgresql; .ci/setup.sh installs it)");
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        let as_postgres = |args: &[&str]| {
            let ok = Command::new("runuser").args(["-u", "postgres", "--"]).args(args).status().expect("runuser (the tests run as root)").success();
            assert!(ok, "{args:?} failed");
        };
        assert!(Command::new("chown").args(["postgres:postgres"]).arg(dir).status().unwrap().success());
        let data = dir.join("data");
        let port = free_port();
        as_postgres(&[bin.join("initdb").to_str().unwrap(), "-D", data.to_str().unwrap(), "-A", "trust", "--no-sync", "-U", "postgres"]);
        let opts = format!("-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off", dir.display());
        as_postgres(&[bin.join("pg_ctl").to_str().unwrap(), "-D", data.to_str().unwrap(), "-o", &opts, "-l", dir.join("log").to_str().unwrap(), "-w", "start"]);
        Postgres { bin, dir: dir.to_path_buf(), port }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D"])
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Round `number`'s status as `base` reports it (None: unreachable or unknown).
async fn status_of(base: &str, number: i64) -> Option<String> {
    let v: serde_json::Value = reqwest::get(format!("{base}/v1/rounds/{number}")).await.ok()?.json().await.ok()?;
    v["status"].as_str().map(str::to_owned)
}

/// Waits until `base` shows round `number` in a mid-round stage (the first seen), then SIGKILLs
/// `victim`; returns where it was. Fails at once if the round ended unseen.
async fn kill_mid_round(base: &str, number: i64, victim: &mut std::process::Child) -> String {
    let t = Instant::now();
    loop {
        let v: serde_json::Value = match reqwest::get(format!("{base}/v1/rounds/current")).await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        if v["number"] == number && v["status"] == "open" && ["share_keys", "masked_input", "unmask"].contains(&v["stage"].as_str().unwrap_or_default()) {
            victim.kill().unwrap();
            victim.wait().unwrap();
            return format!("round {number}'s {}", v["stage"].as_str().unwrap_or_default());
        }
        assert!(v["number"].as_i64().is_none_or(|n| n <= number), "round {number} ended before it was seen mid-way: {v}");
        assert!(t.elapsed() < Duration::from_secs(300), "round {number} was not seen mid-way: {v}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_postgres_survive_either_killed_mid_round() {
    let devices: u32 = std::env::var("HEARTH_REPLICA_DEVICES").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let root = std::env::temp_dir().join(format!("hearth-replicas-{}", std::process::id()));
    let pg = Postgres::start(&root.join("pg"));
    let extra = format!("database = \"{}\"\nmodel_store = \"{}\"", pg.url(), root.join("models").display());
    let (pa, pb) = (free_port(), free_port());
    let (cfg_a, cfg_b) = (config_with(&root.join("a"), pa, 2, devices, &extra), config_with(&root.join("b"), pb, 2, devices, &extra));
    let (base_a, base_b) = (format!("http://127.0.0.1:{pa}"), format!("http://127.0.0.1:{pb}"));
    let mut a = spawn(&cfg_a, &root.join("a.log"));
    healthy(&base_a).await;
    let mut b = spawn(&cfg_b, &root.join("b.log"));
    healthy(&base_b).await;
    // A owns the rounds (it took the lock first); every device speaks to B, then to A if B
    // cannot be reached, and back.
    let sim = SimulateConfig {
        servers: vec![base_b.clone(), base_a.clone()],
        users: (0..devices).map(|k| k % 943).collect(),
        dropout: 0.0,
        drop_from: 0,
        seed: 2,
        rounds: 2,
        parallel_training: 2,
        updates: None,
    };
    let run = tokio::spawn(async move { simulate(&sim, population(), |_| {}).await });
    // Round 1: kill B, the replica taking every submission (not the owner): the devices move to A.
    // B comes back at once (not the owner; the devices stay on A).
    let first = kill_mid_round(&base_a, 1, &mut b).await;
    let mut b = spawn(&cfg_b, &root.join("b.log"));
    healthy(&base_b).await;
    let t = Instant::now();
    while matches!(status_of(&base_b, 1).await.as_deref(), None | Some("open")) {
        assert!(t.elapsed() < Duration::from_secs(300), "round 1 never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Round 2: kill A, the owner, which now also takes the submissions: the devices move back to
    // B, which takes the ownership and rebuilds the round from the database.
    let second = kill_mid_round(&base_b, 2, &mut a).await;
    let killed_at = format!("B (taking submissions) at {first}, then A (the owner, taking submissions) at {second}");
    let report = run.await.unwrap().unwrap_or_else(|e| panic!("{e}; logs in {}", root.display()));
    for r in &report.rounds {
        assert_eq!(r.status, "done", "{r:?}");
        assert_eq!(r.survivors, devices, "{r:?}");
    }
    // B finished round 1 and ran round 2: its log says it rebuilt the round.
    let log_b = std::fs::read_to_string(root.join("b.log")).unwrap();
    assert!(log_b.contains("round state rebuilt from the store"), "B never took over");
    // Every acknowledged message is stored once, and the sums counted each survivor once.
    let store = PgStore::open(&pg.url()).await.unwrap();
    let hex = hearth_aggregator::serve::models::sha256_hex;
    for round in [1i64, 2] {
        for stage in 0..4i64 {
            let stored = store.messages(round, stage).await.unwrap();
            let mut idx: Vec<i64> = stored.iter().map(|m| m.0).collect();
            idx.sort_unstable();
            idx.dedup();
            assert_eq!(idx.len(), stored.len(), "round {round} stage {stage}: a message stored twice");
            let acked: Vec<_> = report.acked.iter().filter(|a| a.round == round && i64::from(a.stage) == stage).collect();
            assert_eq!(acked.len(), stored.len(), "round {round} stage {stage}");
            for a in acked {
                assert!(stored.iter().any(|(i, m)| *i == i64::from(a.index) && hex(m) == a.sha256), "{a:?} not stored");
            }
        }
    }
    eprintln!(
        "{devices} devices; SIGKILLed {killed_at}; devices moved replica both times, B took the rounds over; 2 rounds done with {devices} survivors each; {} acknowledged messages each stored once",
        report.acked.len()
    );
    b.kill().unwrap();
    b.wait().unwrap();
    drop(pg);
    let _ = std::fs::remove_dir_all(&root);
}
