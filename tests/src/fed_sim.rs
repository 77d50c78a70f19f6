//! Federated rounds in one process: MovieLens users as devices, each running the real client
//! code (`fed::client::local_update`, `privacy::ddg` encoding, the `secagg` client state machine)
//! against the real server state machine and `fed::aggregate`, with dropouts at random stages.
//! Used by the scenario tests (a CI-sized run) and by `fed_quality` (the full runs).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use hearth_aggregator::serve::rounds::{RoundConfig, plan_round};
use hearth_aggregator::simulate::{device_fate, device_update};
use hearth_core::artifact::bundle::ModelBundle;
use hearth_core::artifact::{ModelDims, TensorFile};
use hearth_core::fed::aggregate::{ServerOptimizer, ServerState, aggregate};
use hearth_core::fed::client::ModelSettings;
use hearth_core::fed::layout::Layout;
use hearth_core::fed::plan::{Group, LocalTraining};
use hearth_core::privacy::rdp::{Accountant, integer_orders};
use hearth_core::secagg::client::Client;
use hearth_core::secagg::server::{Server, Step};
use hearth_core::secagg::{SecAggError, crypto};
use rand::Rng;
use rand_chacha::ChaCha20Rng;

/// A device's round: its encoded words, local loss before and after, its clipped update, ms
/// training and encoding, its update's norm before clipping.
type Update = (Vec<u32>, (f32, f32), Vec<f32>, (f64, f64), f64);

/// What stands for a device that sends nothing (it never reaches the masked input).
static EMPTY_UPDATE: Update = (Vec::new(), (0.0, 0.0), Vec::new(), (0.0, 0.0), 0.0);

pub use hearth_aggregator::simulate::Population;

/// One simulation's settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Rounds to run.
    pub rounds: u32,
    /// Expected devices per round (each eligible person is invited with probability
    /// `devices / eligible`: Poisson sampling, as the accountant assumes).
    pub devices: u32,
    /// The groups trained.
    pub groups: Vec<Group>,
    /// Local training.
    pub local: LocalTraining,
    /// L2 clip of each update.
    pub clip: f64,
    /// Noise of the sum over `clip` (0: no DP).
    pub noise_multiplier: f64,
    /// The fewest survivors a round accepts (and the noise is sized for).
    pub min_survivors: u32,
    /// The server optimizer.
    pub server: ServerOptimizer,
    /// Probability that a device drops out, at a stage chosen uniformly.
    pub dropout: f64,
    /// Seed of sampling, graphs, device randomness.
    pub seed: u64,
    /// A step schedule: every `decay_every` rounds (0: never) the server and the local learning
    /// rates are multiplied by `decay`.
    pub decay_every: u32,
    /// See `decay_every`.
    pub decay: f64,
}

/// What a round did.
#[derive(Debug, Clone)]
pub struct RoundLog {
    /// 1-based round.
    pub round: u32,
    /// Devices invited.
    pub invited: u32,
    /// Devices whose update is in the sum.
    pub survivors: u32,
    /// Devices whose local training failed (a diverged loss) or whose update did not encode:
    /// they send nothing, as a real device would not, and count as dropped before advertising
    /// keys.
    pub failed: u32,
    /// Devices that dropped after sharing keys (their masks removed).
    pub dropped: u32,
    /// Mean local loss before and after local training, over the survivors.
    pub local_loss: (f64, f64),
    /// Cumulative ε at δ = 1e-5 (None without noise).
    pub epsilon: Option<f64>,
    /// Bytes a device sent (all four stages) and received, mean over survivors.
    pub bytes_up: f64,
    /// See `bytes_up`.
    pub bytes_down: f64,
    /// The largest difference, over the update's values, between the mean the server decoded
    /// and the plain mean of the survivors' clipped updates: the noise (and rounding) the
    /// round's mean carries.
    pub max_error: f64,
    /// L2 norm of the mean update the server applied (noise included).
    pub update_norm: f64,
    /// The median L2 norm of the survivors' updates before clipping (what a clip norm is set
    /// against).
    pub device_norm_p50: f64,
    /// Mean per device: local training, and encoding (clip, rotate, round, noise), in ms.
    pub device_ms: (f64, f64),
    /// Wall time of the round: local training and the protocol.
    pub secs: f64,
}

/// The aggregator's settings for `cfg`'s rounds (its step schedule aside): what the in-process
/// rounds plan with, and what [`run_over_http`] gives the server.
pub fn round_config(cfg: &SimConfig, eligible: usize) -> RoundConfig {
    RoundConfig {
        devices_per_round: cfg.devices,
        min_devices: eligible as u32,
        min_survivors: cfg.min_survivors,
        groups: cfg.groups.clone(),
        clip: cfg.clip,
        noise_multiplier: cfg.noise_multiplier,
        budget_epsilon: None,
        max_rounds: Some(cfg.rounds),
        local: cfg.local.clone(),
        optimizer: cfg.server.clone(),
        seed: Some(cfg.seed),
        ..RoundConfig::default()
    }
}

/// Runs `cfg.rounds` rounds from `global` over the `eligible` people, calling `on_round` after
/// each with the round's log and the new parameters. A round that aborts (too few survivors)
/// keeps the parameters and is logged with 0 survivors.
///
/// Each round is planned by the server's own code (`serve::rounds::plan_round`, the `eligible`
/// people as devices enrolled in that order), and each device computes its update and its fate as
/// `simulate`'s devices do (`simulate::device_update`, `simulate::device_fate`, its place in
/// `eligible` as its slot): with the same seeds, these rounds and [`run_over_http`]'s publish the
/// same parameters, bit for bit.
#[allow(clippy::too_many_arguments)]
pub fn run(
    pop: &Population,
    eligible: &[u32],
    dims: &ModelDims,
    settings: &ModelSettings,
    mut global: TensorFile,
    cfg: &SimConfig,
    mut on_round: impl FnMut(&RoundLog, &TensorFile),
) -> Result<TensorFile, String> {
    let slots: Vec<i64> = (0..eligible.len() as i64).collect();
    let mut rounds = round_config(cfg, eligible.len());
    let layout = Layout::new(dims, &cfg.groups);
    let mut state = ServerState::new(cfg.server.clone());
    let mut accountant = Accountant::with_orders(integer_orders());
    let mut version = 1;
    for round in 1..=cfg.rounds {
        let t0 = Instant::now();
        if cfg.decay_every > 0 && round > 1 && (round - 1) % cfg.decay_every == 0 {
            rounds.local.lr *= cfg.decay;
            match &mut state.optimizer {
                ServerOptimizer::FedAvg { lr } | ServerOptimizer::FedAdam { lr, .. } => *lr *= cfg.decay,
            }
        }
        let (plan, participants) = plan_round(&rounds, dims, i64::from(round), version, &slots, 0).map_err(|e| e.to_string())?;
        let invited: Vec<u32> = participants.iter().map(|&s| s as u32).collect();
        let n = invited.len() as u32;
        if n < cfg.min_survivors.max(1) {
            on_round(&RoundLog { round, invited: n, survivors: 0, failed: 0, dropped: 0, local_loss: (0.0, 0.0), epsilon: None, bytes_up: 0.0, bytes_down: 0.0, max_error: 0.0, update_norm: 0.0, device_norm_p50: 0.0, device_ms: (0.0, 0.0), secs: 0.0 }, &global);
            continue;
        }
        let ddg = plan.ddg(layout.len()).map_err(|e| e.to_string())?;
        // Each device: local training, then its words (None: training or encoding failed).
        let updates: Vec<Option<Update>> = hearth_core::platform::par_map(invited.len(), |k| {
            let (slot, person) = (invited[k], &pop.people[eligible[invited[k] as usize] as usize]);
            let mut u = device_update(&global, dims, settings, &pop.catalog, person, &plan, cfg.seed, slot, u64::from(round)).ok()?;
            let norm = u.update.delta.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
            hearth_core::privacy::ddg::clip_l2(&mut u.update.delta, cfg.clip);
            Some((u.words, (u.update.loss_before, u.update.loss_after), u.update.delta, u.ms, norm))
        });
        let failed = updates.iter().filter(|u| u.is_none()).count() as u32;
        // The stage each device drops at (0..4, 4 = never; one whose training failed sends
        // nothing), and its SecAgg+ client's randomness.
        let fates: Vec<(u32, ChaCha20Rng)> = invited.iter().map(|&slot| device_fate(cfg.seed, slot, u64::from(round), cfg.dropout, 0)).collect();
        let drop_at: Vec<u32> = updates.iter().zip(&fates).map(|(u, f)| if u.is_some() { f.0 } else { 0 }).collect();
        // Survivors all trained: their updates are there.
        let updates: Vec<&Update> = updates.iter().map(|u| u.as_ref().unwrap_or(&EMPTY_UPDATE)).collect();
        let signing: Vec<[u8; 32]> = invited.iter().map(|&slot| hearth_aggregator::simulate::device_signing_seed(cfg.seed, slot)).collect();
        let keys: Vec<[u8; 32]> = signing.iter().map(|s| crypto::signing_key(s).map(|k| k.1).map_err(|e| e.to_string())).collect::<Result<_, _>>()?;
        let mut server = Server::new(plan.secagg.clone(), keys, plan.graph_seed).map_err(|e| e.to_string())?;
        let mut up = vec![0usize; invited.len()];
        let mut down = vec![0usize; invited.len()];
        let mut clients: Vec<Option<Client>> = Vec::with_capacity(invited.len());
        for (k, (s, (_, mut rng))) in signing.iter().zip(fates).enumerate() {
            let (c, msg) = Client::new(plan.secagg.clone(), k as u32, *s, rng.random()).map_err(|e| e.to_string())?;
            if drop_at[k] == 0 {
                clients.push(None);
                continue;
            }
            up[k] += msg.len();
            server.receive(&msg).map_err(|e| e.to_string())?;
            clients.push(Some(c));
        }
        let mut stage = 1u8;
        let outcome = loop {
            match server.advance() {
                Err(SecAggError::Abort(_)) => break None,
                Err(e) => return Err(e.to_string()),
                Ok(Step::Done(o)) => break Some(o),
                Ok(Step::Send(out)) => {
                    for (k, msg) in out {
                        let k = k as usize;
                        let Some(c) = clients[k].as_mut() else { continue };
                        down[k] += msg.len();
                        if drop_at[k] == u32::from(stage) {
                            clients[k] = None;
                            continue;
                        }
                        let reply = match stage {
                            1 => c.share_keys(&msg),
                            2 => c.masked_input(&msg, &updates[k].0),
                            _ => c.unmask(&msg),
                        };
                        match reply {
                            Ok(r) => {
                                up[k] += r.len();
                                server.receive(&r).map_err(|e| e.to_string())?;
                            }
                            Err(SecAggError::Abort(_)) => clients[k] = None,
                            Err(e) => return Err(e.to_string()),
                        }
                    }
                    stage += 1;
                }
            }
        };
        let Some(outcome) = outcome else {
            on_round(&RoundLog { round, invited: n, survivors: 0, failed: 0, dropped: 0, local_loss: (0.0, 0.0), epsilon: None, bytes_up: 0.0, bytes_down: 0.0, max_error: 0.0, update_norm: 0.0, device_norm_p50: 0.0, device_ms: (0.0, 0.0), secs: t0.elapsed().as_secs_f64() }, &global);
            continue;
        };
        assert!(server.both_kinds_held().is_empty());
        let (next, report) = aggregate(&plan, &layout, &global, &outcome, &mut state).map_err(|e| e.to_string())?;
        global = next;
        version += 1;
        if let Some(m) = &report.mechanism {
            accountant.compose(m, 1).map_err(|e| e.to_string())?;
        }
        let survivors: BTreeSet<usize> = outcome.survivors.iter().map(|&s| s as usize).collect();
        let s = survivors.len().max(1) as f64;
        let decoded = ddg.decode(&outcome.sum, plan.rotation_seed, outcome.survivors.len() as u32).map_err(|e| e.to_string())?;
        let max_error = (0..layout.len())
            .map(|j| (decoded[j] / s - survivors.iter().map(|&k| f64::from(updates[k].2[j])).sum::<f64>() / s).abs())
            .fold(0.0, f64::max);
        let mean = |f: &dyn Fn(usize) -> f64| survivors.iter().map(|&k| f(k)).sum::<f64>() / s;
        let log = RoundLog {
            round,
            invited: n,
            survivors: report.survivors,
            failed,
            dropped: report.dropped,
            local_loss: (mean(&|k| f64::from(updates[k].1.0)), mean(&|k| f64::from(updates[k].1.1))),
            epsilon: report.mechanism.is_some().then(|| accountant.epsilon(1e-5).map(|e| e.0).unwrap_or(f64::INFINITY)),
            bytes_up: mean(&|k| up[k] as f64),
            bytes_down: mean(&|k| down[k] as f64),
            max_error,
            update_norm: report.mean_update_norm,
            device_norm_p50: {
                let mut n: Vec<f64> = survivors.iter().map(|&k| updates[k].4).collect();
                n.sort_by(f64::total_cmp);
                n[n.len() / 2]
            },
            device_ms: (mean(&|k| updates[k].3.0), mean(&|k| updates[k].3.1)),
            secs: t0.elapsed().as_secs_f64(),
        };
        on_round(&log, &global);
    }
    Ok(global)
}

/// `cfg`'s rounds through the aggregator server: one started in this process on 127.0.0.1
/// (SQLite in a temporary directory, `v1` its first model, `cfg`'s seed its seed) and one
/// `simulate` device task per `eligible` user speaking HTTP to it. Returns the last published
/// global parameters and the ledger's ε. With dropouts, stages close after a quiet second rather
/// than their deadline; which late messages a quiet close takes depends on timing, so only runs
/// without dropouts are certain to match [`run`] bit for bit. No step schedule (`decay_every`).
pub fn run_over_http(v1: &ModelBundle, pop: Arc<Population>, eligible: &[u32], cfg: &SimConfig, name: &str) -> Result<(TensorFile, Option<f64>), String> {
    use hearth_aggregator::serve::models::ModelStore;
    use hearth_aggregator::serve::{ServeConfig, start};
    use hearth_aggregator::simulate::{Progress, SimulateConfig, simulate};
    if cfg.decay_every > 0 {
        return Err("the server has no step schedule".into());
    }
    let ctx = |what: &'static str| move |e: String| format!("{what}: {e}");
    let dir = std::env::temp_dir().join(format!("hearth-fed-sim-{}-{}-{}", std::process::id(), cfg.seed, name.len()));
    let _ = std::fs::remove_dir_all(&dir);
    hearth_aggregator::write_model_dir(&dir.join("v1"), v1).map_err(|e| ctx("writing v1")(e.to_string()))?;
    let round = RoundConfig {
        stage_timeout_ms: 120_000,
        // Dropped devices cost a quiet second, not the timeout.
        stage_quiet_ms: (cfg.dropout > 0.0).then_some(1_000),
        ..round_config(cfg, eligible.len())
    };
    let serve = ServeConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        data_dir: dir.clone(),
        model: dir.join("v1"),
        backend: hearth_aggregator::Backend::Cpu,
        round,
        ..ServeConfig::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| ctx("a runtime")(e.to_string()))?;
    let out = rt.block_on(async {
        let server = start(serve).await.map_err(|e| ctx("starting the aggregator")(e.to_string()))?;
        let sim = SimulateConfig {
            servers: vec![format!("http://{}", server.addr)],
            users: eligible.to_vec(),
            dropout: cfg.dropout,
            drop_from: 0,
            seed: cfg.seed,
            rounds: cfg.rounds,
            parallel_training: std::thread::available_parallelism().map_or(2, |p| p.get()),
            updates: None,
        };
        let report = simulate(&sim, pop, |p| {
            if let Progress::Round(r) = p {
                eprintln!("{name} round {} over HTTP: {} {}, {} of {} devices, ε {:?}, {:.1} s", r.round, r.status, r.published.map_or(String::new(), |v| format!("v{v}")), r.survivors, r.invited, r.epsilon, r.secs);
            }
        })
        .await
        .map_err(|e| ctx("the devices")(e.to_string()))?;
        let models = ModelStore::local(&dir.join("models")).map_err(|e| ctx("the model store")(e.to_string()))?;
        let latest = models.latest().await.map_err(|e| ctx("the model store")(e.to_string()))?.ok_or("nothing published")?;
        let global = models.file(latest, "global.bin").await.map_err(|e| ctx("the model store")(e.to_string()))?.ok_or("no global.bin")?;
        server.shutdown().await;
        let done = report.rounds.iter().filter(|r| r.status == "done").count();
        if done as u32 != cfg.rounds {
            return Err(format!("{done} of {} rounds done: {:?}", cfg.rounds, report.rounds));
        }
        let global = TensorFile::decode(&global).map_err(|e| ctx("the published global.bin")(e.to_string()))?;
        Ok((global, report.rounds.last().and_then(|r| r.epsilon)))
    });
    let _ = std::fs::remove_dir_all(&dir);
    out
}
