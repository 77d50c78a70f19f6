//! The round owner: opens rounds (Poisson sampling of the enrolled devices), closes their
//! secure-aggregation stages (everyone answered, or the stage's deadline passed), unmasks, sums,
//! steps the server optimizer, evaluates, publishes the next model version and writes the privacy
//! ledger. Only the replica holding the store's ownership runs it.
//!
//! It keeps no state the store does not have: the `secagg` server state machine is rebuilt after
//! a restart by replaying the round's committed messages stage by stage, in commit order, which
//! gives the same machine (it is deterministic given its parameters and graph seed), so a round
//! resumes where it stood and publishes the same model an uninterrupted run would.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hearth_core::artifact::{ModelDims, TensorFile};
use hearth_core::artifact::bundle::ModelBundle;
use hearth_core::fed::aggregate::{ServerOptimizer, ServerState, aggregate};
use hearth_core::fed::layout::Layout;
use hearth_core::fed::plan::{Group, LocalTraining, RoundPlan};
use hearth_core::privacy::ddg::{DdgConfig, DdgPlan};
use hearth_core::privacy::rdp::{Accountant, Mechanism, integer_orders};
use hearth_core::secagg::server::{Outcome, Server, Step};
use hearth_core::secagg::{Params, SecAggError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use super::models::{DEVICE_FILES, ModelStore};
use super::store::{LedgerRow, RoundEnd, RoundRow, Store};
use super::ServeError;

/// Stages of a round, as the phase counts them.
pub const STAGES: i64 = 4;
/// The phase of a round whose stages are all closed (aggregating and publishing).
pub const PHASE_AGGREGATE: i64 = 2 * STAGES;

/// What the operator sets for every round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoundConfig {
    /// Devices expected per round: each enrolled device is invited with probability
    /// `devices_per_round / enrolled` (Poisson sampling, what the accountant assumes).
    pub devices_per_round: u32,
    /// Enrolled devices needed before a round opens.
    pub min_devices: u32,
    /// The fewest survivors a round accepts (the noise is sized for them).
    pub min_survivors: u32,
    /// The parameter groups trained.
    pub groups: Vec<Group>,
    /// L2 clip of each device's update.
    pub clip: f64,
    /// Noise standard deviation of the sum over the clip (0: no differential privacy).
    pub noise_multiplier: f64,
    /// δ of the ledger's ε.
    pub delta: f64,
    /// The operator's budget: a round that would take cumulative ε past it does not open.
    pub budget_epsilon: Option<f64>,
    /// Rounds to run, then stop opening (None: keep going).
    pub max_rounds: Option<u32>,
    /// Local training on the devices.
    pub local: LocalTraining,
    /// The server optimizer.
    pub optimizer: ServerOptimizer,
    /// How long a stage waits for its messages (ms).
    pub stage_timeout_ms: i64,
    /// Close a secure-aggregation stage after the first (share keys, masked input, unmask)
    /// before its deadline once it holds the messages the round needs (the plan's minimum of
    /// survivors) and its count has not moved for this long (ms) on the owner's clock: devices
    /// that dropped then cost this, not the whole timeout. The first stage always waits for
    /// every invited device or its deadline (devices train before they advertise keys). None:
    /// every stage waits for every device asked or its deadline. Which messages a quiet close
    /// takes depends on timing, so runs that must repeat exactly leave it off.
    pub stage_quiet_ms: Option<i64>,
    /// Pause between rounds (ms).
    pub pause_ms: u64,
    /// Seed of sampling and round seeds (None: the system's CSPRNG). Set it only to reproduce a
    /// run: with it, anyone who knows it can recompute the round's public seeds.
    pub seed: Option<u64>,
}

impl Default for RoundConfig {
    fn default() -> RoundConfig {
        RoundConfig {
            devices_per_round: 100,
            min_devices: 10,
            min_survivors: 10,
            groups: vec![Group::Tower],
            clip: 0.03,
            noise_multiplier: 0.0,
            delta: 1e-5,
            budget_epsilon: Some(10.0),
            max_rounds: None,
            local: LocalTraining { reconstruction_steps: 0, lr: 0.005, user_l2: Some(0.0), ..LocalTraining::default() },
            optimizer: ServerOptimizer::FedAvg { lr: 2.0 },
            stage_timeout_ms: 60_000,
            stage_quiet_ms: None,
            pause_ms: 0,
            seed: None,
        }
    }
}

/// What a round reports when it ends (stored with it, served at `/v1/rounds/{n}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoundSummary {
    /// Devices invited.
    pub invited: u32,
    /// Devices whose update is in the sum.
    pub survivors: u32,
    /// Devices that shared keys and then dropped (their masks were removed).
    pub dropped: u32,
    /// Why it ended without a model (aborted or skipped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// L2 norm of the mean update applied.
    pub update_norm: f64,
    /// The model version it published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published: Option<u32>,
    /// ε of this round and of all rounds so far, at δ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epsilon_round: Option<f64>,
    /// See `epsilon_round`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epsilon_total: Option<f64>,
    /// The published model on the operator's held-out set: sampled HR@10, full HR@10, full
    /// NDCG@10.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval: Option<[f64; 3]>,
    /// Seconds from opening to the end.
    pub secs: f64,
}

/// The plan of round `number` over the enrolled `devices` (in enrollment order), and its
/// participants: Poisson sampling at `devices_per_round / enrolled`, then the round's public seeds,
/// all drawn from `cfg.seed` and the round's number when the operator set a seed (else from the
/// system's CSPRNG). What the round owner opens; public so that the in-process simulation
/// (`tests/src/fed_sim.rs`) plans its rounds exactly as the server does.
pub fn plan_round(cfg: &RoundConfig, dims: &ModelDims, number: i64, version: u32, devices: &[i64], now_ms: i64) -> Result<(RoundPlan, Vec<i64>), ServeError> {
    let mut rng = match cfg.seed {
        Some(s) => ChaCha20Rng::seed_from_u64(s ^ (number as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        None => {
            let mut seed = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed).map_err(|_| ServeError::Round("no system randomness".into()))?;
            ChaCha20Rng::from_seed(seed)
        }
    };
    let q = (f64::from(cfg.devices_per_round) / devices.len() as f64).min(1.0);
    let participants: Vec<i64> = devices.iter().copied().filter(|_| rng.random::<f64>() < q).collect();
    let n = (participants.len() as u32).max(1);
    let layout = Layout::new(dims, &cfg.groups);
    let min_survivors = cfg.min_survivors.clamp(1, n);
    let noise = DdgConfig { clip: cfg.clip, noise_multiplier: cfg.noise_multiplier, min_survivors, max_clients: n, ..DdgConfig::default() };
    let padded = DdgPlan::new(layout.len(), &noise).map_err(|e| ServeError::Round(e.to_string()))?.padded;
    let mut round_id = [0u8; 16];
    rng.fill(&mut round_id);
    let plan = RoundPlan {
        model_version: version,
        groups: cfg.groups.clone(),
        local: LocalTraining { seed: cfg.local.seed ^ number as u64, ..cfg.local.clone() },
        noise,
        sampling_rate: q,
        delta: cfg.delta,
        secagg: Params::for_clients(round_id, n, padded as u32, min_survivors),
        rotation_seed: rng.random(),
        graph_seed: rng.random(),
        deadline_ms: now_ms + STAGES * cfg.stage_timeout_ms,
    };
    plan.check(layout.len()).map_err(|e| ServeError::Round(e.to_string()))?;
    Ok((plan, participants))
}

/// Scores a published model on the operator's held-out data (sampled HR@10, full HR@10, full
/// NDCG@10).
pub type Evaluator = Arc<dyn Fn(&ModelBundle) -> Result<[f64; 3], String> + Send + Sync>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The secure-aggregation server of the open round, as far as its stored messages took it.
struct Live {
    number: i64,
    server: Server,
    /// Stages whose messages it consumed.
    fed: i64,
    outcome: Option<Outcome>,
}

/// The round owner.
pub struct Engine {
    store: Arc<dyn Store>,
    models: ModelStore,
    cfg: RoundConfig,
    /// The served model's catalog and manifest (the template of every published version).
    base: ModelBundle,
    evaluator: Option<Evaluator>,
    live: Option<Live>,
    /// The last model read from the store: (version, parameters).
    current: Option<(u32, TensorFile)>,
    /// Bumped whenever a round changes phase or ends (wakes long polls).
    changed: tokio::sync::watch::Sender<u64>,
    /// (round, stage, messages) last seen, and since when on this process's clock.
    quiet: Option<((i64, i64, i64), i64)>,
}

fn fail(what: &str) -> impl FnOnce(String) -> ServeError + '_ {
    move |e| ServeError::Round(format!("{what}: {e}"))
}

impl Engine {
    /// An owner for `base` (its catalog and manifest; its version is published first when the
    /// store holds none).
    pub fn new(store: Arc<dyn Store>, models: ModelStore, cfg: RoundConfig, base: ModelBundle, evaluator: Option<Evaluator>, changed: tokio::sync::watch::Sender<u64>) -> Engine {
        Engine { store, models, cfg, base, evaluator, live: None, current: None, changed, quiet: None }
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Messages the live round needs in each stage (its plan's fewest survivors; 0 if none).
    fn needed(&self) -> i64 {
        self.live.as_ref().map_or(0, |l| i64::from(l.server.params().min_survivors))
    }

    /// Since when (this process's clock) a stage has held `seen.2` messages: the first time it is
    /// seen with that count. A new owner starts counting when it takes the round.
    fn unchanged_since(&mut self, seen: (i64, i64, i64), now: i64) -> i64 {
        match self.quiet {
            Some((s, since)) if s == seen => since,
            _ => {
                self.quiet = Some((seen, now));
                now
            }
        }
    }

    /// Publishes the base model when the store has no version yet.
    pub async fn init(&mut self) -> Result<u32, ServeError> {
        if let Some(v) = self.models.latest().await? {
            return Ok(v);
        }
        let version = self.base.manifest.model_version;
        let global = self.base.global.clone();
        self.publish(version, global).await?;
        Ok(version)
    }

    /// Runs rounds until `stop` is set, checking every `tick`.
    pub async fn run(mut self, tick: Duration, stop: tokio::sync::watch::Receiver<bool>, wake: Arc<tokio::sync::Notify>) {
        loop {
            if *stop.borrow() {
                return;
            }
            let pause = match self.step().await {
                Ok(Some(p)) => p,
                Ok(None) => tick,
                Err(e) => {
                    tracing::error!(error = %e, "round step failed; retrying");
                    // Rebuild from the store next time: memory may be ahead of it.
                    self.live = None;
                    tick * 10
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = wake.notified() => {}
            }
        }
    }

    /// One step of the owner's work; returns how long to wait before the next (None: a tick).
    pub async fn step(&mut self) -> Result<Option<Duration>, ServeError> {
        if !self.store.try_own().await? {
            self.live = None;
            return Ok(Some(Duration::from_millis(500)));
        }
        let latest = self.store.latest_round().await?;
        match latest {
            Some(r) if r.status == "open" => self.drive(r).await.map(|()| None),
            last => self.maybe_open(last).await,
        }
    }

    async fn maybe_open(&mut self, last: Option<RoundRow>) -> Result<Option<Duration>, ServeError> {
        let number = last.as_ref().map_or(1, |r| r.number + 1);
        if let Some(max) = self.cfg.max_rounds
            && number > i64::from(max)
        {
            return Ok(Some(Duration::from_millis(500)));
        }
        if let Some(r) = &last
            && let Some(closed) = r.closed_ms
            && now_ms() < closed + self.cfg.pause_ms as i64
        {
            return Ok(Some(Duration::from_millis(self.cfg.pause_ms.min(100))));
        }
        let devices = self.store.devices().await?;
        if (devices.len() as u32) < self.cfg.min_devices.max(1) {
            return Ok(None);
        }
        let version = self.models.latest().await?.ok_or_else(|| ServeError::Round("no model published".into()))?;
        let (plan, participants) = plan_round(&self.cfg, &self.base.manifest.dims, number, version, &devices, now_ms())?;
        let n = participants.len() as u32;
        let ledger = self.store.ledger().await?;
        if let Some(budget) = self.cfg.budget_epsilon
            && plan.noise.noise_multiplier > 0.0
        {
            let layout = Layout::new(&self.base.manifest.dims, &plan.groups);
            let ddg = plan.ddg(layout.len()).map_err(|e| ServeError::Round(e.to_string()))?;
            // The worst case the round can record: the fewest survivors it accepts.
            let next = ddg.mechanism(plan.sampling_rate, plan.secagg.min_survivors);
            let total = cumulative(&ledger, Some(&next), self.cfg.delta)?;
            if total > budget {
                metrics::gauge!("hearth_budget_exhausted").set(1.0);
                tracing::warn!(budget, would_reach = total, "the privacy budget is spent: no more rounds");
                return Ok(Some(Duration::from_secs(5)));
            }
        }
        let now = now_ms();
        let publishes = i64::from(self.models.highest().await?.max(version)) + 1;
        let mut row = RoundRow {
            number,
            round_id: plan.secagg.round.to_vec(),
            model_version: i64::from(version),
            publishes,
            plan: plan.encode(),
            participants,
            phase: 0,
            status: "open".into(),
            opened_ms: now,
            stage_deadline_ms: now + self.cfg.stage_timeout_ms,
            closed_ms: None,
            report: None,
        };
        if n < self.cfg.min_survivors.max(1) {
            // Too few invited to reach the threshold: the round releases nothing.
            row.status = "skipped".into();
            row.closed_ms = Some(now);
            row.report = Some(json(&RoundSummary { invited: n, reason: Some(format!("{n} devices invited, {} needed", self.cfg.min_survivors)), ..RoundSummary::default() })?);
            self.store.open_round(&row).await?;
            metrics::counter!("hearth_rounds_total", "status" => "skipped").increment(1);
            return Ok(None);
        }
        self.store.open_round(&row).await?;
        self.bump();
        metrics::counter!("hearth_rounds_opened_total").increment(1);
        metrics::gauge!("hearth_round").set(number as f64);
        tracing::info!(round = number, invited = n, model_version = version, "round opened");
        Ok(None)
    }

    /// The open round's state machine, rebuilt from the store when this process has none.
    async fn live(&mut self, r: &RoundRow) -> Result<&mut Live, ServeError> {
        if self.live.as_ref().is_none_or(|l| l.number != r.number) {
            let plan = RoundPlan::decode(&r.plan).map_err(|e| ServeError::Round(e.to_string()))?;
            let keys = self.store.device_keys(&r.participants).await?;
            let keys = keys.into_iter().map(|k| k.ok_or_else(|| ServeError::Round("a participant is no longer enrolled".into()))).collect::<Result<Vec<_>, _>>()?;
            let server = Server::new(plan.secagg.clone(), keys, plan.graph_seed).map_err(|e| ServeError::Round(e.to_string()))?;
            self.live = Some(Live { number: r.number, server, fed: 0, outcome: None });
            tracing::info!(round = r.number, phase = r.phase, "round state rebuilt from the store");
        }
        self.live.as_mut().ok_or_else(|| ServeError::Round("no live round".into()))
    }

    /// Feeds stage `stage`'s committed messages to the machine and closes the stage.
    async fn consume(&mut self, number: i64, stage: i64) -> Result<Result<Step, SecAggError>, ServeError> {
        let messages = self.store.messages(number, stage).await?;
        let live = self.live.as_mut().ok_or_else(|| ServeError::Round("no live round".into()))?;
        let mut refused = 0u64;
        for (idx, body) in &messages {
            if let Err(e) = live.server.receive(body) {
                // Checked at intake already; what the machine still refuses (shares for someone
                // who is not a neighbour, …) is logged and left out.
                refused += 1;
                tracing::warn!(round = number, stage, client = idx, error = %e, "a committed message was refused by the protocol");
            }
        }
        if refused > 0 {
            metrics::counter!("hearth_messages_refused_total").increment(refused);
        }
        live.fed = stage + 1;
        Ok(live.server.advance())
    }

    async fn drive(&mut self, r: RoundRow) -> Result<(), ServeError> {
        let closed = if r.phase >= PHASE_AGGREGATE { STAGES } else { r.phase / 2 };
        self.live(&r).await?;
        // Catch up on stages closed before this process had the round (after a restart).
        while self.live.as_ref().is_some_and(|l| l.fed < closed) {
            let stage = self.live.as_ref().map_or(0, |l| l.fed);
            match self.consume(r.number, stage).await? {
                Ok(Step::Done(o)) => {
                    if let Some(l) = self.live.as_mut() {
                        l.outcome = Some(o);
                    }
                }
                Ok(Step::Send(_)) => {}
                Err(e) => return self.abort(&r, e.to_string()).await,
            }
        }
        let now = now_ms();
        if r.phase >= PHASE_AGGREGATE {
            return self.finish(&r).await;
        }
        let stage = r.phase / 2;
        if r.phase % 2 == 0 {
            let expected = if stage == 0 { r.participants.len() as i64 } else { self.store.count_requests(r.number, stage).await? };
            let got = self.store.count_messages(r.number, stage).await?;
            let quiet = stage > 0 && self.cfg.stage_quiet_ms.is_some_and(|q| got >= self.needed() && now - self.unchanged_since((r.number, stage, got), now) >= q);
            if got >= expected || quiet || now >= r.stage_deadline_ms {
                // Stop accepting first: the messages consumed are then exactly those stored.
                self.store.set_phase(r.number, r.phase + 1, r.stage_deadline_ms).await?;
                self.bump();
                metrics::histogram!("hearth_stage_seconds", "stage" => stage_name(stage)).record((now - stage_start(&r, self.cfg.stage_timeout_ms)) as f64 / 1e3);
                metrics::counter!("hearth_stage_missing_total", "stage" => stage_name(stage)).increment((expected - got).max(0) as u64);
                return Box::pin(self.drive(RoundRow { phase: r.phase + 1, ..r })).await;
            }
            return Ok(());
        }
        match self.consume(r.number, stage).await? {
            Ok(Step::Send(out)) => {
                let deadline = now + self.cfg.stage_timeout_ms;
                self.store.close_stage(r.number, stage + 1, &out, 2 * (stage + 1), deadline).await?;
                self.bump();
                tracing::info!(round = r.number, stage = stage_name(stage + 1), asked = out.len(), "stage opened");
                Ok(())
            }
            Ok(Step::Done(o)) => {
                if let Some(l) = self.live.as_mut() {
                    l.outcome = Some(o);
                }
                self.store.set_phase(r.number, PHASE_AGGREGATE, now).await?;
                self.finish(&RoundRow { phase: PHASE_AGGREGATE, ..r }).await
            }
            Err(e) => self.abort(&r, e.to_string()).await,
        }
    }

    async fn abort(&mut self, r: &RoundRow, reason: String) -> Result<(), ServeError> {
        tracing::warn!(round = r.number, %reason, "round aborted: nothing is unmasked");
        let summary = RoundSummary { invited: r.participants.len() as u32, reason: Some(reason), secs: secs_since(r.opened_ms), ..RoundSummary::default() };
        self.store.end_round(r.number, &RoundEnd { status: "aborted", report: json(&summary)?, ledger: None, optimizer: None, now_ms: now_ms() }).await?;
        self.bump();
        metrics::counter!("hearth_rounds_total", "status" => "aborted").increment(1);
        self.live = None;
        Ok(())
    }

    async fn global(&mut self, version: u32) -> Result<TensorFile, ServeError> {
        if let Some((v, g)) = &self.current
            && *v == version
        {
            return Ok(g.clone());
        }
        let bytes = self.models.file(version, "global.bin").await?.ok_or_else(|| ServeError::Round(format!("version {version} has no global.bin")))?;
        let g = TensorFile::decode(&bytes).map_err(|e| ServeError::Round(format!("global.bin of version {version}: {e}")))?;
        self.current = Some((version, g.clone()));
        Ok(g)
    }

    /// Unmasked: sum → mean → optimizer → evaluate → publish → ledger → close.
    async fn finish(&mut self, r: &RoundRow) -> Result<(), ServeError> {
        let outcome = self.live.as_ref().and_then(|l| l.outcome.clone()).ok_or_else(|| ServeError::Round("no outcome".into()))?;
        let plan = RoundPlan::decode(&r.plan).map_err(|e| ServeError::Round(e.to_string()))?;
        let version = u32::try_from(r.model_version).map_err(|_| ServeError::Round("model version".into()))?;
        let publishes = u32::try_from(r.publishes).map_err(|_| ServeError::Round("model version".into()))?;
        let global = self.global(version).await?;
        let layout = Layout::new(&self.base.manifest.dims, &plan.groups);
        let mut state = match self.store.optimizer(r.model_version).await? {
            Some(s) => serde_json::from_str(&s).map_err(|e| ServeError::Round(format!("optimizer state: {e}")))?,
            None => ServerState::new(self.cfg.optimizer.clone()),
        };
        let (next, report) = match aggregate(&plan, &layout, &global, &outcome, &mut state) {
            Ok(x) => x,
            Err(e) => return self.abort(r, e.to_string()).await,
        };
        // Scored as `eval` scores: from history and profile, with no personal vector (the
        // training users' table stays in the template only for its shape).
        let mut bundle = self.base.clone();
        bundle.global = next.clone();
        bundle.personal = None;
        let eval = match &self.evaluator {
            Some(f) => {
                let f = f.clone();
                let b = bundle.clone();
                Some(tokio::task::spawn_blocking(move || f(&b)).await.map_err(|e| ServeError::Round(e.to_string()))?.map_err(fail("evaluation"))?)
            }
            None => None,
        };
        self.publish(publishes, next).await?;
        let now = now_ms();
        let ledger = self.store.ledger().await?;
        let (entry, eps) = match &report.mechanism {
            Some(m) => {
                let round = cumulative(&[], Some(m), self.cfg.delta)?;
                let total = cumulative(&ledger, Some(m), self.cfg.delta)?;
                let mechanism = json(m)?;
                (Some(LedgerRow { round: r.number, model_version: r.publishes, mechanism, epsilon_round: round, epsilon_total: total, delta: self.cfg.delta, closed_ms: now }), Some((round, total)))
            }
            None => (None, None),
        };
        let summary = RoundSummary {
            invited: r.participants.len() as u32,
            survivors: report.survivors,
            dropped: report.dropped,
            reason: None,
            update_norm: report.mean_update_norm,
            published: Some(publishes),
            epsilon_round: eps.map(|e| e.0),
            epsilon_total: eps.map(|e| e.1),
            eval,
            secs: secs_since(r.opened_ms),
        };
        let end = RoundEnd { status: "done", report: json(&summary)?, ledger: entry, optimizer: Some((r.publishes, json(&state)?)), now_ms: now };
        self.store.end_round(r.number, &end).await?;
        self.bump();
        metrics::counter!("hearth_rounds_total", "status" => "done").increment(1);
        metrics::counter!("hearth_round_survivors_total").increment(u64::from(report.survivors));
        metrics::counter!("hearth_dropouts_total").increment(u64::from(report.dropped) + u64::from(summary.invited.saturating_sub(report.survivors + report.dropped)));
        if let Some((_, total)) = eps {
            metrics::gauge!("hearth_epsilon_spent").set(total);
        }
        metrics::gauge!("hearth_model_version").set(f64::from(publishes));
        tracing::info!(round = r.number, survivors = report.survivors, dropped = report.dropped, published = publishes, eval = ?summary.eval, epsilon = ?eps, "round done");
        self.live = None;
        Ok(())
    }

    /// The base bundle with other parameters and version, without the training users' data.
    fn bundle(&self, version: u32, global: TensorFile) -> ModelBundle {
        let mut b = self.base.clone();
        b.global = global;
        b.personal = None;
        b.users = vec![];
        b.shard = None;
        b.manifest.model_version = version;
        b
    }

    async fn publish(&mut self, version: u32, global: TensorFile) -> Result<(), ServeError> {
        let mut bundle = self.bundle(version, global.clone());
        let files = tokio::task::spawn_blocking(move || -> Result<Vec<(&'static str, Vec<u8>)>, String> {
            crate::io::attach_shard(&mut bundle).map_err(|e| e.to_string())?;
            Ok(bundle.to_files().into_iter().filter(|(n, _)| DEVICE_FILES.contains(n)).collect())
        })
        .await
        .map_err(|e| ServeError::Round(e.to_string()))?
        .map_err(fail("the catalog shard"))?;
        self.models.publish(version, &files).await?;
        self.current = Some((version, global));
        tracing::info!(version, "model published");
        Ok(())
    }
}

fn stage_name(stage: i64) -> &'static str {
    ["advertise_keys", "share_keys", "masked_input", "unmask"].get(stage as usize).copied().unwrap_or("done")
}

/// When the stage that `r` is in opened (its deadline minus the timeout).
fn stage_start(r: &RoundRow, timeout: i64) -> i64 {
    r.stage_deadline_ms - timeout
}

fn secs_since(ms: i64) -> f64 {
    (now_ms() - ms) as f64 / 1e3
}

fn json<T: Serialize>(v: &T) -> Result<String, ServeError> {
    serde_json::to_string(v).map_err(|e| ServeError::Round(format!("JSON: {e}")))
}

/// Cumulative ε at δ of the ledger's mechanisms plus `next`.
pub fn cumulative(ledger: &[LedgerRow], next: Option<&Mechanism>, delta: f64) -> Result<f64, ServeError> {
    let mut a = Accountant::with_orders(integer_orders());
    for l in ledger {
        let m: Mechanism = serde_json::from_str(&l.mechanism).map_err(|e| ServeError::Round(format!("ledger entry {}: {e}", l.round)))?;
        a.compose(&m, 1).map_err(|e| ServeError::Round(e.to_string()))?;
    }
    if let Some(m) = next {
        a.compose(m, 1).map_err(|e| ServeError::Round(e.to_string()))?;
    }
    Ok(a.epsilon(delta).map_or(f64::INFINITY, |e| e.0))
}
