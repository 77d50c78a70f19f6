//! The `simulate` command: starts an aggregator on 127.0.0.1 (unless `--server` names one), runs
//! the devices over HTTP (`hearth_aggregator::simulate`), and reports the rounds as a table (or
//! one JSON object) and a plot of HR@10 and cumulative ε per round.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hearth_aggregator::serve::rounds::RoundConfig;
use hearth_aggregator::serve::{ServeConfig, evaluator_on, start_with};
use hearth_aggregator::simulate::{Population, Progress, SimRound, SimulateConfig, simulate};
use hearth_aggregator::{load_dataset, make_split, read_model_dir};
use hearth_core::fed::layout::Layout;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;

#[derive(clap::Args)]
pub(crate) struct SimulateArgs {
    /// Devices: device k holds user k's history, cycling through the users when there are more
    /// devices than users (0: one device per user).
    #[arg(long, default_value_t = 100)]
    pub(crate) devices: u32,
    /// Rounds to run.
    #[arg(long, default_value_t = 5)]
    pub(crate) rounds: u32,
    /// Devices expected per round (Poisson sampling; default: all of them, at most 100).
    #[arg(long)]
    pub(crate) per_round: Option<u32>,
    /// Probability that an invited device drops out (at a stage chosen uniformly).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) dropout: f64,
    /// Cumulative ε the rounds may spend at δ = 1e-5 (the noise is set to reach it after
    /// --rounds rounds; none: no differential privacy).
    #[arg(long)]
    pub(crate) epsilon: Option<f64>,
    /// The users' data (MovieLens layout or CSV); the held-out item of each is the server's
    /// evaluation.
    #[arg(long, default_value = "../shared/data/movielens-100k")]
    pub(crate) data: PathBuf,
    /// The model the first round trains.
    #[arg(long, default_value = "models/ml100k")]
    pub(crate) model: PathBuf,
    /// An aggregator to use instead of starting one (its model must fit the data); several
    /// replicas comma-separated: devices move to the next when one cannot be reached.
    #[arg(long, value_delimiter = ',')]
    pub(crate) server: Vec<String>,
    /// The started server's data directory (default: a new temporary one).
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// How long each secure-aggregation stage waits for devices that dropped (ms).
    #[arg(long, default_value_t = 5_000)]
    pub(crate) stage_timeout_ms: i64,
    /// Close a stage early once enough devices answered and none did for this long (ms).
    #[arg(long)]
    pub(crate) stage_quiet_ms: Option<i64>,
    /// Seed of sampling, round seeds and devices.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Where the plot goes (SVG).
    #[arg(long, default_value = "simulate.svg")]
    pub(crate) plot: PathBuf,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Backend the server evaluates models on (devices train on the CPU, as phones would without
    /// a GPU): auto takes CUDA if it works, else a wgpu GPU, else the CPU.
    #[arg(long, value_enum, default_value = "auto")]
    pub(crate) backend: hearth_aggregator::Backend,
}


/// What `--json` prints.
#[derive(Serialize)]
struct JsonReport<'a> {
    /// The starting model's scores (sampled HR@10, full HR@10, full NDCG@10).
    base: [f64; 3],
    #[serde(flatten)]
    run: &'a hearth_aggregator::simulate::SimReport,
    noise_multiplier: f64,
    plot: &'a Path,
}

fn bar(multi: &MultiProgress, len: u64, template: &str) -> ProgressBar {
    let b = multi.add(ProgressBar::new(len));
    b.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()));
    b.enable_steady_tick(Duration::from_millis(250));
    b
}

pub(crate) fn run(a: SimulateArgs, rt: tokio::runtime::Runtime, on: hearth_aggregator::Device) -> Result<()> {
    let ds = load_dataset(&a.data, None)?;
    let split = make_split(&ds, None)?;
    let bundle = read_model_dir(&a.model)?;
    bundle.check_dataset(&ds).context("the model does not fit the data")?;
    anyhow::ensure!((0.0..1.0).contains(&a.dropout), "--dropout must be in [0, 1)");
    anyhow::ensure!(a.rounds > 0, "--rounds must be at least 1");
    let pop = Arc::new(Population::new(&ds, &split, &bundle.catalog.popularity));
    let n = if a.devices == 0 { ds.users.len() } else { a.devices as usize };
    let per_round = a.per_round.unwrap_or(n.min(100) as u32).min(n as u32).max(1);
    let q = f64::from(per_round) / n as f64;
    // The noise is sized for 70 % of the expected survivors; fewer abort the round.
    let min_survivors = ((f64::from(per_round) * (1.0 - a.dropout) * 0.7).floor() as u32).max(2);
    let mut round = RoundConfig {
        devices_per_round: per_round,
        min_devices: n as u32,
        min_survivors,
        max_rounds: Some(a.rounds),
        seed: Some(a.seed),
        stage_timeout_ms: a.stage_timeout_ms,
        stage_quiet_ms: a.stage_quiet_ms,
        budget_epsilon: a.epsilon.map(|e| e * (1.0 + 1e-6)),
        ..RoundConfig::default()
    };
    if let Some(e) = a.epsilon {
        let dim = Layout::new(&bundle.manifest.dims, &round.groups).len();
        round.noise_multiplier = hearth_aggregator::epsilon::noise_for_epsilon(e, a.rounds, min_survivors, q, dim, round.clip, round.delta)?;
    }
    let noise = round.noise_multiplier;
    // Scored as the server scores each published model: from history and profile, with no
    // personal vector (devices never receive the training users' ones).
    let evaluate = evaluator_on(&a.data, on)?;
    let base = {
        let mut b = bundle.clone();
        b.personal = None;
        evaluate(&b).map_err(anyhow::Error::msg)?
    };
    let multi = MultiProgress::new();
    if a.json {
        multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let report = rt.block_on(async {
        let (servers, running) = match a.server.is_empty() {
            false => (a.server.clone(), None),
            true => {
                let data_dir = a.data_dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("hearth-simulate-{}", std::process::id())));
                let _ = std::fs::remove_dir_all(&data_dir);
                let cfg = ServeConfig {
                    listen: ([127, 0, 0, 1], 0).into(),
                    data_dir: data_dir.clone(),
                    model: a.model.clone(),
                    eval_data: Some(a.data.clone()),
                    backend: on.into(),
                    round,
                    ..ServeConfig::default()
                };
                let r = start_with(cfg, Some(evaluate.clone())).await?;
                if !a.json {
                    eprintln!("aggregator on http://{} (data in {})", r.addr, data_dir.display());
                }
                (vec![format!("http://{}", r.addr)], Some(r))
            }
        };
        let enrolled = bar(&multi, n as u64, "enrolling {wide_bar} {pos}/{len} devices");
        let rounds = bar(&multi, u64::from(a.rounds), "rounds    {wide_bar} {pos}/{len} {msg}");
        let cfg = SimulateConfig {
            servers,
            users: (0..n).map(|k| (k % ds.users.len()) as u32).collect(),
            dropout: a.dropout,
            drop_from: 0,
            seed: a.seed,
            rounds: a.rounds,
            parallel_training: std::thread::available_parallelism().map_or(2, |p| p.get()),
            updates: None,
        };
        let report = simulate(&cfg, pop, |p| match p {
            Progress::Enrolled(k) => enrolled.set_position(u64::from(k)),
            Progress::Round(r) => {
                enrolled.finish_and_clear();
                rounds.inc(1);
                rounds.set_message(format!("round {} {}: {} survivors, HR@10 {}", r.round, r.status, r.survivors, r.eval.map_or("-".into(), |e| format!("{:.4}", e[0]))));
            }
        })
        .await;
        rounds.finish_and_clear();
        if let Some(r) = running {
            r.shutdown().await;
        }
        Ok::<_, anyhow::Error>(report?)
    })?;
    plot(&a.plot, base, &report.rounds).with_context(|| format!("writing {}", a.plot.display()))?;
    if a.json {
        println!("{}", serde_json::to_string(&JsonReport { base, run: &report, noise_multiplier: noise, plot: &a.plot })?);
        return Ok(());
    }
    println!("| round | status | invited | survivors | dropped | sampled HR@10 | full HR@10 | full NDCG@10 | ε (cumulative) | s |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!("| start (v{}) | | | | | {:.4} | {:.4} | {:.4} | | |", bundle.manifest.model_version, base[0], base[1], base[2]);
    for r in &report.rounds {
        let e = r.eval.map_or("| - | - | -".into(), |e| format!("| {:.4} | {:.4} | {:.4}", e[0], e[1], e[2]));
        let eps = r.epsilon.map_or("∞ (no noise)".into(), |e| format!("{e:.3}"));
        println!("| {} | {} | {} | {} | {} {e} | {eps} | {:.1} |", r.round, r.status, r.invited, r.survivors, r.dropped, r.secs);
    }
    println!(
        "{} devices, {} simulated dropouts, noise multiplier {noise:.3}; {} requests, p50 {:.1} ms, p99 {:.1} ms; {:.1} s; plot: {}",
        report.devices,
        report.dropouts,
        report.requests,
        report.p50_ms,
        report.p99_ms,
        report.secs,
        a.plot.display()
    );
    Ok(())
}

/// HR@10 (both protocols) and cumulative ε per round, as an SVG.
fn plot(path: &Path, base: [f64; 3], rounds: &[SimRound]) -> Result<()> {
    use plotters::prelude::*;
    let hr: Vec<(f64, [f64; 3])> = std::iter::once((0.0, base)).chain(rounds.iter().filter_map(|r| r.eval.map(|e| (r.round as f64, e)))).collect();
    let eps: Vec<(f64, f64)> = rounds.iter().filter_map(|r| r.epsilon.map(|e| (r.round as f64, e))).collect();
    let last = rounds.last().map_or(1.0, |r| r.round as f64).max(1.0);
    let root = SVGBackend::new(path, (900, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(380);
    let mut chart = ChartBuilder::on(&top)
        .caption("HR@10 of each published model (held-out items)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..last, 0.0..1.0)?;
    chart.configure_mesh().x_desc("round").y_desc("HR@10").draw()?;
    for (k, name, color) in [(0, "sampled (1 of 100)", BLUE), (1, "full ranking", RED)] {
        chart
            .draw_series(LineSeries::new(hr.iter().map(|(x, e)| (*x, e[k])), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw()?;
    let top_eps = eps.iter().map(|e| e.1).fold(0.0, f64::max).max(1e-3) * 1.1;
    let mut chart = ChartBuilder::on(&bottom)
        .caption("cumulative ε (δ = 1e-5)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..last, 0.0..top_eps)?;
    chart.configure_mesh().x_desc("round").y_desc("ε").draw()?;
    chart.draw_series(LineSeries::new(eps, GREEN.stroke_width(2)))?;
    root.present()?;
    Ok(())
}
