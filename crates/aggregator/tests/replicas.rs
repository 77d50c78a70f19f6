//! Two aggregator replicas on one PostgreSQL that the test starts itself (Debian's server
//! binaries, `initdb` / `pg_ctl` as the `postgres` user in a temporary directory, no network):
//! the devices speak to one replica while the other owns the rounds; the owner is SIGKILLed in
//! the middle of a round; the survivor takes the ownership (the advisory lock dies with the
//! killed process's connection), rebuilds the round from the database and completes it, and
//! every acknowledged message is in it exactly once.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_postgres_survive_the_owner_killed_mid_round() {
    let devices: u32 = std::env::var("HEARTH_REPLICA_DEVICES").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let root = std::env::temp_dir().join(format!("hearth-replicas-{}", std::process::id()));
    let pg = Postgres::start(&root.join("pg"));
    let extra = format!("database = \"{}\"\nmodel_store = \"{}\"", pg.url(), root.join("models").display());
    let (pa, pb) = (free_port(), free_port());
    let mut a = spawn(&config_with(&root.join("a"), pa, 2, devices, &extra), &root.join("a.log"));
    healthy(&format!("http://127.0.0.1:{pa}")).await;
    let mut b = spawn(&config_with(&root.join("b"), pb, 2, devices, &extra), &root.join("b.log"));
    let base_b = format!("http://127.0.0.1:{pb}");
    healthy(&base_b).await;
    // Every device speaks to B; A owns the rounds.
    let sim = SimulateConfig { server: base_b.clone(), users: (0..devices).map(|k| k % 943).collect(), dropout: 0.0, seed: 2, rounds: 2, parallel_training: 2, updates: None };
    let run = tokio::spawn(async move { simulate(&sim, population(), |_| {}).await });
    // Kill A in the middle of a round.
    let t = Instant::now();
    let killed_at = loop {
        let v: serde_json::Value = match reqwest::get(format!("{base_b}/v1/rounds/current")).await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        // The first mid-round stage seen (masked input, usually: the longest stage).
        if v["status"] == "open" && ["share_keys", "masked_input", "unmask"].contains(&v["stage"].as_str().unwrap_or_default()) {
            a.kill().unwrap();
            a.wait().unwrap();
            break format!("round {}'s {}", v["number"], v["stage"].as_str().unwrap_or_default());
        }
        assert!(t.elapsed() < Duration::from_secs(300), "no round was seen mid-way: {v}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
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
        "{devices} devices through replica B; replica A (the owner) SIGKILLed at {killed_at} stage; B took over; 2 rounds done with {devices} survivors each; {} acknowledged messages each stored once",
        report.acked.len()
    );
    b.kill().unwrap();
    b.wait().unwrap();
    drop(pg);
    let _ = std::fs::remove_dir_all(&root);
}
