//! Load benchmark: one federated round of N devices (default 1,000) through a real
//! `hearth-aggregator serve` process on 127.0.0.1, beside Flower's SecAgg+ on the same n, d and
//! dropout in the same run.
//!
//! ```sh
//! bash bench/load.sh                      # builds, runs hearth then Flower, prints the table
//! bash bench/load.sh --runs 3 --no-flower # hearth only
//! ```
//!
//! Each measured run starts a fresh server (SQLite in a new directory, the committed model) and
//! the devices (tokio tasks in this process, the real client code over HTTP: enrollment,
//! invitation, plan, model files, the four SecAgg+ stages). The devices' local training is
//! measured once, in a warm-up round that fills an update cache; the measured rounds replay those
//! updates (same seeds: same plan, same model), so what is timed is the protocol and the server,
//! as Flower's clients, which return a vector without training, are timed. A dropped device stops
//! answering at a stage drawn uniformly from `--drop-from` (default 2: before its masked input or
//! before unmasking, the only stages Flower 1.42's SecAgg+ survives a dropout at; hearth's survives
//! all four, `--drop-from 0`). The server closes a stage once it is quiet for `--quiet-ms`
//! (Flower's simulation learns of a failed client at once). Reported: the round's wall
//! time on the server's clock, p50/p99 of the devices' requests (long polls excepted), and the
//! server process's peak resident memory (VmHWM).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use hearth_aggregator::serve::rounds::RoundConfig;
use hearth_aggregator::serve::ServeConfig;
use hearth_aggregator::simulate::{Population, SimReport, SimulateConfig, UpdateCache, simulate};
use hearth_aggregator::{load_dataset, make_split, read_model_dir};
use hearth_core::fed::layout::Layout;

// The server-as-a-child helpers the integration tests share (here: its memory from /proc).
#[path = "../tests/common/mod.rs"]
mod common;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

struct Args {
    devices: u32,
    dropout: f64,
    drop_from: u32,
    runs: u32,
    quiet_ms: i64,
    flower: Option<String>,
    data: PathBuf,
    model: PathBuf,
}

fn args() -> Result<Args> {
    let mut a = Args {
        devices: 1000,
        dropout: 0.1,
        drop_from: 2,
        runs: 2,
        quiet_ms: 1000,
        flower: None,
        data: PathBuf::from("../shared/data/movielens-100k"),
        model: PathBuf::from("models/ml100k"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or_else(|| anyhow!("{k} needs a value"));
        match k.as_str() {
            "--devices" => a.devices = v()?.parse()?,
            "--dropout" => a.dropout = v()?.parse()?,
            "--drop-from" => a.drop_from = v()?.parse()?,
            "--runs" => a.runs = v()?.parse()?,
            "--quiet-ms" => a.quiet_ms = v()?.parse()?,
            "--flower" => a.flower = Some(v()?),
            "--data" => a.data = v()?.into(),
            "--model" => a.model = v()?.into(),
            // cargo bench passes --bench.
            "--bench" => {}
            other => bail!("unknown argument {other} (--devices N --dropout P --drop-from S --runs R --quiet-ms MS --flower PYTHON --data D --model M)"),
        }
    }
    Ok(a)
}

/// A `hearth-aggregator serve` child and its address.
struct Server {
    child: Child,
    url: String,
    drain: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(config: &Path) -> Result<Server> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hearth-aggregator"))
            .current_dir(ROOT)
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting hearth-aggregator serve")?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let mut lines = BufReader::new(stderr).lines();
        let url = loop {
            let line = lines.next().ok_or_else(|| anyhow!("the server exited before listening"))??;
            if let Some(rest) = line.strip_prefix("aggregator on ") {
                break rest.split_whitespace().next().unwrap_or_default().trim_end_matches('/').to_string();
            }
        };
        // Keep reading its logs so the pipe never fills; show warnings and errors.
        let drain = std::thread::spawn(move || {
            for line in lines.map_while(|l| l.ok()) {
                if line.contains("WARN") || line.contains("ERROR") {
                    eprintln!("server: {line}");
                }
            }
        });
        Ok(Server { child, url, drain: Some(drain) })
    }

    /// Peak resident memory so far (MB), from /proc.
    fn peak_mb(&self) -> Result<f64> {
        let (_, peak_kb) = common::memory_kb(self.child.id()).ok_or_else(|| anyhow!("no VmHWM for the server"))?;
        Ok(peak_kb as f64 / 1024.0)
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = self.drain.take() {
            let _ = d.join();
        }
    }
}

/// One round against a fresh server: (the devices' report, server peak MB).
fn one_round(rt: &tokio::runtime::Runtime, a: &Args, round: &RoundConfig, pop: &Arc<Population>, cache: &Arc<UpdateCache>, tag: &str) -> Result<(SimReport, f64)> {
    let dir = std::env::temp_dir().join(format!("hearth-load-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let cfg = ServeConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        data_dir: dir.clone(),
        model: a.model.clone(),
        backend: hearth_aggregator::Backend::Cpu,
        round: round.clone(),
        ..ServeConfig::default()
    };
    let config = dir.join("serve.toml");
    std::fs::write(&config, cfg.to_toml())?;
    let server = Server::start(&config)?;
    let n = a.devices as usize;
    let people = pop.people.len();
    let sim = SimulateConfig {
        servers: vec![server.url.clone()],
        users: (0..n).map(|k| (k % people) as u32).collect(),
        dropout: a.dropout,
        drop_from: a.drop_from,
        seed: 1,
        rounds: 1,
        parallel_training: std::thread::available_parallelism().map_or(2, |p| p.get()),
        updates: Some(cache.clone()),
    };
    let report = rt.block_on(simulate(&sim, pop.clone(), |_| {}));
    let peak = server.peak_mb();
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
    let report = report?;
    let r = report.rounds.first().ok_or_else(|| anyhow!("no round"))?;
    if r.status != "done" {
        bail!("round {} ended {}", r.round, r.status);
    }
    Ok((report, peak?))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn spread(v: &[f64]) -> String {
    let (lo, hi) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    format!("{lo:.2}–{hi:.2}")
}

fn main() -> Result<()> {
    let a = args()?;
    std::env::set_current_dir(ROOT)?;
    anyhow::ensure!(a.runs >= 1 && a.devices >= 2 && (0.0..0.5).contains(&a.dropout), "need --runs ≥ 1, --devices ≥ 2, --dropout in [0, 0.5)");
    let ds = load_dataset(&a.data, None)?;
    let split = make_split(&ds, None)?;
    let bundle = read_model_dir(&a.model)?;
    let pop = Arc::new(Population::new(&ds, &split, &bundle.catalog.popularity));
    let n = a.devices;
    let round = RoundConfig {
        devices_per_round: n,
        min_devices: n,
        // The round needs 70 % of the expected survivors (as `simulate` sizes it).
        min_survivors: ((f64::from(n) * (1.0 - a.dropout) * 0.7).floor() as u32).max(2),
        max_rounds: Some(1),
        seed: Some(7),
        stage_timeout_ms: 600_000,
        stage_quiet_ms: Some(a.quiet_ms),
        budget_epsilon: None,
        ..RoundConfig::default()
    };
    let dim = Layout::new(&bundle.manifest.dims, &round.groups).len();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let cache: Arc<UpdateCache> = Arc::default();

    eprintln!("warm-up: {n} devices train their updates ({dim} values each), one round");
    let t = Instant::now();
    let (warm, _) = one_round(&rt, &a, &round, &pop, &cache, "warm")?;
    let train_secs = t.elapsed().as_secs_f64();
    eprintln!("warm-up round: {:.1} s with local training ({} updates cached)", train_secs, cache.lock().map(|c| c.len()).unwrap_or(0));
    drop(warm);

    let mut rows = Vec::new();
    for run in 0..a.runs {
        let (r, peak) = one_round(&rt, &a, &round, &pop, &cache, &format!("run{run}"))?;
        let round = &r.rounds[0];
        eprintln!(
            "run {}: round {:.2} s, {} invited, {} survivors, {} dropped after sharing keys; {} requests p50 {:.2} ms p99 {:.2} ms; server peak {peak:.0} MB",
            run + 1,
            round.secs,
            round.invited,
            round.survivors,
            round.dropped,
            r.requests,
            r.p50_ms,
            r.p99_ms
        );
        for k in &r.by_kind {
            eprintln!("  {:<12} {:>5} requests, p50 {:>7.2} ms, p99 {:>8.2} ms, max {:>8.2} ms", k.kind, k.count, k.p50_ms, k.p99_ms, k.max_ms);
        }
        rows.push((round.secs, r.p50_ms, r.p99_ms, peak, round.survivors, r.requests));
    }
    let col = |f: fn(&(f64, f64, f64, f64, u32, u64)) -> f64| rows.iter().map(f).collect::<Vec<_>>();
    let (secs, p50, p99, peak) = (col(|r| r.0), col(|r| r.1), col(|r| r.2), col(|r| r.3));

    let flower = match &a.flower {
        Some(python) => Some(run_flower(python, n, dim, a.dropout)?),
        None => None,
    };
    println!();
    println!("one round, {n} devices, d = {dim}, dropout {:.0} %, {} runs (median; spread)", a.dropout * 100.0, a.runs);
    println!();
    println!("| | hearth (HTTP, SQLite) | Flower {} SecAgg+ (simulation) | Flower / hearth |", flower.as_ref().map_or("-".into(), |f| f["flwr"].as_str().unwrap_or("?").to_string()));
    println!("|---|---|---|---|");
    let f = |k: &str| flower.as_ref().and_then(|f| f[k].as_f64());
    let ratio = |ours: f64, theirs: Option<f64>| theirs.map_or("-".into(), |t| format!("**{:.1}×**", t / ours));
    let show = |v: Option<f64>, unit: &str| v.map_or("-".into(), |v| format!("{v:.2} {unit}"));
    println!("| round wall time | {:.2} s ({}) | {} | {} |", median(secs.clone()), spread(&secs), show(f("round_secs"), "s"), ratio(median(secs.clone()), f("round_secs")));
    println!("| request latency p50 / p99 | {:.2} / {:.2} ms ({} / {}) | no requests (in-process Ray calls) | |", median(p50.clone()), median(p99.clone()), spread(&p50), spread(&p99));
    println!("| server peak memory | {:.0} MB ({}) | {} | {} |", median(peak.clone()), spread(&peak), show(f("peak_rss_mb"), "MB"), ratio(median(peak.clone()), f("peak_rss_mb")));
    if let Some(fl) = &flower {
        println!("| … Ray's processes (workers, GCS, raylet; shared pages counted in each) | | {} | |", show(fl["descendants_peak_rss_mb"].as_f64(), "MB"));
        println!("| updates in the sum (run 1) | {} | {} | |", rows[0].4, fl["survivors"]);
        println!("| Flower's stages (s) | | {} | |", fl["stage_secs"]);
        println!("| check | every acknowledged update summed (server) | max abs error {} | |", fl["max_abs_error"]);
    }
    println!("| requests per round | {} | | |", rows[0].5);
    println!("| devices' local training (warm-up round, not in the above) | {train_secs:.1} s | none | |");
    Ok(())
}

/// Runs bench/flower_secagg.py with `python` and returns its JSON.
fn run_flower(python: &str, n: u32, dim: usize, dropout: f64) -> Result<serde_json::Value> {
    eprintln!("Flower: {n} clients, d = {dim}, dropout {dropout}");
    let out = Command::new(python)
        .current_dir(ROOT)
        .args(["bench/flower_secagg.py", "--clients", &n.to_string(), "--dim", &dim.to_string(), "--dropout", &dropout.to_string(), "--json"])
        .stderr(Stdio::inherit())
        .output()
        .context("running bench/flower_secagg.py")?;
    if !out.status.success() {
        bail!("bench/flower_secagg.py failed: {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.starts_with('{')).ok_or_else(|| anyhow!("Flower printed no JSON: {text}"))?;
    Ok(serde_json::from_str(line)?)
}
