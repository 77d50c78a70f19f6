//! What the tests that run the server as a child process share: paths, its configuration, its
//! process, the devices' population.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use hearth_aggregator::simulate::Population;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn ml100k() -> PathBuf {
    std::env::var_os("HEARTH_ML100K").map_or_else(|| root().join("../shared/data/movielens-100k"), PathBuf::from)
}

pub const DEVICES: u32 = 12;

pub fn config(dir: &Path, port: u16, rounds: u32) -> PathBuf {
    config_with(dir, port, rounds, DEVICES, "")
}

/// [`config`] for `devices` devices, with `extra` top-level settings (`database = …`).
pub fn config_with(dir: &Path, port: u16, rounds: u32, devices: u32, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let toml = format!(
        r#"listen = "127.0.0.1:{port}"
data_dir = "{}"
model = "{}"
tick_ms = 50
{extra}

[round]
devices_per_round = {devices}
min_devices = {devices}
min_survivors = 6
noise_multiplier = 0.8
budget_epsilon = 1000.0
max_rounds = {rounds}
stage_timeout_ms = 120000
seed = 5
"#,
        dir.display(),
        root().join("models/ml100k").display()
    );
    let path = dir.join("aggregator.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

pub fn spawn(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_hearth-aggregator"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Every MovieLens 100K user's training history, as devices hold it.
pub fn population() -> Arc<Population> {
    let ds = hearth_aggregator::load_dataset(&ml100k(), None).expect("MovieLens 100K (set HEARTH_ML100K)");
    let split = hearth_aggregator::make_split(&ds, None).unwrap();
    let bundle = hearth_aggregator::read_model_dir(&root().join("models/ml100k")).unwrap();
    Arc::new(Population::new(&ds, &split, &bundle.catalog.popularity))
}

/// The resident set of a process now and at its peak (kB), from /proc.
pub fn memory_kb(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| status.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse().ok();
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Waits until the server answers `/health`.
pub async fn healthy(base: &str) {
    for _ in 0..400 {
        if reqwest::get(format!("{base}/health")).await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{base} never answered /health");
}
