//! `hearth-aggregator simulate`: devices as concurrent tasks speaking real HTTP to an aggregator
//! (on 127.0.0.1, started in this process unless `--server` names one). Each device holds one
//! dataset user's training history and runs the real client code: enrollment with its own
//! Ed25519 key, local training (`fed::client::local_update`), clipping, rotation and distributed
//! noise (`privacy::ddg`), and the SecAgg+ client state machine, stage by stage over the API.
//!
//! One shortcut, said here: a single watcher long-polls for the next round and tells the device
//! tasks (a real device would poll on its own); everything a device sends or fetches for a round
//! — its invitation, the plan, the model files, its four messages and the server's requests —
//! goes over HTTP, by the device itself. Model files are fetched once per version and shared by
//! the tasks of this process, as one browser cache would hold them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::backend::{Autodiff, Flex};
use hearth_core::artifact::{ModelDims, ModelManifest, TensorFile};
use hearth_core::data::{Dataset, Split};
use hearth_core::fed::client::{DeviceCatalog, LocalUpdate, ModelSettings, PersonData, local_update};
use hearth_core::fed::layout::Layout;
use hearth_core::fed::plan::RoundPlan;
use hearth_core::secagg::client::Client;
use hearth_core::secagg::{SecAggError, crypto};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use reqwest::StatusCode;
use serde::Serialize;

use crate::serve::api::{Enrolled, Enrollment, ErrorBody, Invitation, RoundView, enrollment_message};

/// The people who may take part: each one's training history, ratings and tags.
pub struct Population {
    /// Per user: their data as their device holds it.
    pub people: Vec<PersonData>,
    /// The served catalog's side of training (tags, popularity).
    pub catalog: DeviceCatalog,
}

impl Population {
    /// Every user of `ds`, holding their `split.train` interactions, with the catalog
    /// popularity `popularity` (the served model's).
    pub fn new(ds: &Dataset, split: &Split, popularity: &[u32]) -> Population {
        // Times only where the data has a real order (central training treats the rest as sets).
        let ordered = ds.order().order == hearth_core::data::Order::Sequential;
        let histories = hearth_core::data::per_user_in_time_order(&split.train, ds.users.len(), |x| (x.item, x.rating, x.timestamp));
        let people = histories
            .into_iter()
            .zip(&ds.users)
            .map(|(h, u)| PersonData {
                history: h.iter().map(|x| x.0).collect(),
                ratings: h.iter().map(|x| x.1).collect(),
                times: if ordered { h.iter().map(|x| x.2).collect() } else { vec![] },
                tags: u.tags.clone(),
            })
            .collect();
        let catalog = DeviceCatalog { items: ds.items.iter().map(|i| i.tags.clone()).collect(), item_tags: ds.item_tags.len(), popularity: popularity.to_vec() };
        Population { people, catalog }
    }
}

/// The signing seed of simulated device `slot` in a simulation seeded `seed` (the in-process
/// simulation derives the same).
pub fn device_signing_seed(seed: u64, slot: u32) -> [u8; 32] {
    let mut s = [7u8; 32];
    s[..4].copy_from_slice(&slot.to_le_bytes());
    s[4..12].copy_from_slice(&seed.to_le_bytes());
    s
}

/// A simulation's settings.
#[derive(Debug, Clone)]
pub struct SimulateConfig {
    /// The aggregator's replicas' base URLs (`http://127.0.0.1:PORT`): devices speak to the first
    /// and move to the next when a connection fails (a replica killed), as a load balancer would
    /// send them on.
    pub servers: Vec<String>,
    /// The devices: device k holds the history of user `users[k]` (a user may back several
    /// devices, to simulate more devices than the data has people). Device k's key and
    /// randomness come from k.
    pub users: Vec<u32>,
    /// Probability that an invited device drops out, at a stage chosen uniformly from
    /// `drop_from` to the last (0: any stage; 2: only before its masked input or its unmasking,
    /// the two stages Flower's SecAgg+ survives dropouts at).
    pub dropout: f64,
    /// See `dropout`.
    pub drop_from: u32,
    /// Seed of the devices' randomness.
    pub seed: u64,
    /// Rounds to see end before stopping.
    pub rounds: u32,
    /// Devices computing their update at once (CPU-bound). Local training itself runs one device
    /// at a time in a process (`device_update`); clipping, rotation and noise run in parallel.
    pub parallel_training: usize,
    /// Updates computed by an earlier run, reused when a device trains the same model version
    /// in the same round (and filled otherwise): the load benchmark replays a warm-up round's
    /// updates so that what it times is the protocol, not local training. (Training is
    /// deterministic, so a replayed update is the one the device would compute.)
    pub updates: Option<Arc<UpdateCache>>,
}

/// Encoded updates by (device slot, round, SHA-256 of the model's global.bin).
pub type UpdateCache = std::sync::Mutex<HashMap<(u32, i64, String), Vec<u32>>>;

/// What one device did in a round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceOutcome {
    /// Sent all four messages.
    #[default]
    Completed,
    /// Dropped on purpose (the simulated dropout).
    Dropped,
    /// The server did not ask it for a later stage (its neighbours dropped, or it was late).
    NotAsked,
    /// Its message came after the stage closed (409 `wrong_stage` or 410 `round_closed`): to the
    /// round, a dropout.
    Late,
    /// Local training failed (it sends nothing, as a real device would not).
    Failed,
}

/// One round as the simulation saw it.
#[derive(Debug, Clone, Serialize)]
pub struct SimRound {
    /// Round number.
    pub round: i64,
    /// done, aborted or skipped.
    pub status: String,
    /// Devices invited, surviving, dropped after sharing keys (server's count).
    pub invited: u32,
    /// See `invited`.
    pub survivors: u32,
    /// See `invited`.
    pub dropped: u32,
    /// Sampled HR@10, full HR@10, full NDCG@10 of the published model (the server's evaluation).
    pub eval: Option<[f64; 3]>,
    /// Cumulative ε after the round.
    pub epsilon: Option<f64>,
    /// The version it published.
    pub published: Option<u32>,
    /// Seconds the round took (server's clock).
    pub secs: f64,
}

/// The simulation's result.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    /// Rounds in order.
    pub rounds: Vec<SimRound>,
    /// Devices enrolled.
    pub devices: u32,
    /// Dropouts the devices simulated.
    pub dropouts: u64,
    /// HTTP requests the devices made, long polls excepted (enrollment, invitations, plans,
    /// model files, messages, round status), and their latency p50 / p99 (ms).
    pub requests: u64,
    /// See `requests`.
    pub p50_ms: f64,
    /// See `requests`.
    pub p99_ms: f64,
    /// The same by kind of request.
    pub by_kind: Vec<Latency>,
    /// Wall time (s).
    pub secs: f64,
    /// Every message the server acknowledged.
    #[serde(skip)]
    pub acked: Vec<Acked>,
}

/// A message the server acknowledged (202, or 200 for a resubmission).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    /// Round number.
    pub round: i64,
    /// Stage (0 advertise_keys … 3 unmask).
    pub stage: u32,
    /// The device's client index.
    pub index: u32,
    /// SHA-256 of the bytes (hex).
    pub sha256: String,
}

/// Why the simulation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimulateError {
    /// HTTP failed.
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    /// The server answered something unexpected.
    #[error("{0}")]
    Server(String),
    /// A device's own code failed.
    #[error("device: {0}")]
    Device(String),
}

type Res<T> = Result<T, SimulateError>;

/// A model version as a device holds it.
struct DeviceModel {
    global: TensorFile,
    sha256: String,
    manifest: ModelManifest,
    settings: ModelSettings,
}

/// What the device tasks share: the HTTP client, the model cache, the latency log.
struct Shared {
    http: reqwest::Client,
    servers: Vec<String>,
    /// The replica the devices speak to now.
    current: std::sync::atomic::AtomicUsize,
    pop: Arc<Population>,
    models: tokio::sync::Mutex<HashMap<u32, Arc<DeviceModel>>>,
    training: tokio::sync::Semaphore,
    latencies: std::sync::Mutex<Vec<(&'static str, f32)>>,
    acked: std::sync::Mutex<Vec<Acked>>,
    dropout: f64,
    drop_from: u32,
    seed: u64,
    updates: Option<Arc<UpdateCache>>,
}

impl Shared {
    /// Sends a request, retrying 429/503 and failed connections (a server restarting) with
    /// backoff for up to a minute, and logs its latency.
    async fn send(&self, path: &str, make: impl Fn(String) -> reqwest::RequestBuilder) -> Res<reqwest::Response> {
        self.send_logged(path, make, true).await
    }

    /// [`Shared::send`] for a long poll: its latency is how long the server had nothing to say,
    /// so it is not logged.
    async fn poll(&self, path: &str, make: impl Fn(String) -> reqwest::RequestBuilder) -> Res<reqwest::Response> {
        self.send_logged(path, make, false).await
    }

    /// Sends `path` to the current replica (`make` builds the request from the full URL); a
    /// connection that fails moves every device to the next replica.
    async fn send_logged(&self, path: &str, make: impl Fn(String) -> reqwest::RequestBuilder, log: bool) -> Res<reqwest::Response> {
        let mut pause = Duration::from_millis(20);
        let give_up = Instant::now() + Duration::from_secs(60);
        loop {
            let t = Instant::now();
            let at = self.current.load(std::sync::atomic::Ordering::Relaxed);
            let res = match make(format!("{}{path}", self.servers[at])).send().await {
                Ok(r) => r,
                // Refused, reset or cut: the replica may be restarting or gone; the same bytes go
                // again, to the next replica if there is one.
                Err(e) if !(e.is_builder() || e.is_decode()) && Instant::now() < give_up => {
                    let next = (at + 1) % self.servers.len();
                    if next != at && self.current.compare_exchange(at, next, std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed).is_ok() {
                        tracing::warn!(from = %self.servers[at], to = %self.servers[next], error = %e, "replica unreachable: moving to the next");
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if log && let Ok(mut l) = self.latencies.lock() {
                l.push((request_kind(path), t.elapsed().as_secs_f32() * 1e3));
            }
            if (res.status() == StatusCode::TOO_MANY_REQUESTS || res.status() == StatusCode::SERVICE_UNAVAILABLE) && Instant::now() < give_up {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                continue;
            }
            return Ok(res);
        }
    }

    async fn bytes(&self, path: &str) -> Res<Vec<u8>> {
        let res = self.send(path, |url| self.http.get(url)).await?;
        if !res.status().is_success() {
            return Err(SimulateError::Server(format!("GET {path}: {}", res.status())));
        }
        Ok(res.bytes().await?.to_vec())
    }

    async fn model(&self, version: u32) -> Res<Arc<DeviceModel>> {
        let mut cache = self.models.lock().await;
        if let Some(m) = cache.get(&version) {
            return Ok(m.clone());
        }
        let global = self.bytes(&format!("/v1/models/{version}/global.bin")).await?;
        let manifest = self.bytes(&format!("/v1/models/{version}/manifest.json")).await?;
        let manifest: ModelManifest = serde_json::from_slice(&manifest).map_err(|e| SimulateError::Device(format!("manifest: {e}")))?;
        if manifest.files.get("global.bin").map(String::as_str) != Some(crate::serve::models::sha256_hex(&global).as_str()) {
            return Err(SimulateError::Device(format!("global.bin of version {version} does not match its manifest")));
        }
        let sha256 = crate::serve::models::sha256_hex(&global);
        let global = TensorFile::decode(&global).map_err(|e| SimulateError::Device(format!("global.bin: {e}")))?;
        let settings = ModelSettings::of(&manifest).map_err(|e| SimulateError::Device(e.to_string()))?;
        let m = Arc::new(DeviceModel { global, sha256, manifest, settings });
        cache.insert(version, m.clone());
        Ok(m)
    }

    /// Sends a message; Ok(false) when it came after its stage closed (the device is then a
    /// dropout, not a failure).
    async fn post(&self, round: i64, stage: u32, index: u32, body: Vec<u8>) -> Res<bool> {
        let url = format!("/v1/rounds/{round}/messages");
        let res = self.send(&url, |url| self.http.post(url).header("content-type", "application/octet-stream").body(body.clone())).await?;
        match res.status() {
            StatusCode::ACCEPTED | StatusCode::OK => {
                if let Ok(mut a) = self.acked.lock() {
                    a.push(Acked { round, stage, index, sha256: crate::serve::models::sha256_hex(&body) });
                }
                Ok(true)
            }
            StatusCode::GONE => Ok(false),
            StatusCode::CONFLICT => {
                let text = res.text().await.unwrap_or_default();
                if serde_json::from_str::<ErrorBody>(&text).is_ok_and(|b| b.error.code == "wrong_stage") {
                    Ok(false)
                } else {
                    Err(SimulateError::Server(format!("POST {url}: 409: {text}")))
                }
            }
            s => Err(SimulateError::Server(format!("POST {url}: {s}: {}", res.text().await.unwrap_or_default()))),
        }
    }

    /// The server's request for `stage`, or None when this client is not asked.
    async fn ask(&self, round: i64, index: u32, stage: u32) -> Res<Option<Vec<u8>>> {
        let url = format!("/v1/rounds/{round}/requests/{index}?stage={stage}&wait_ms=20000");
        loop {
            let res = self.poll(&url, |url| self.http.get(url)).await?;
            match res.status() {
                StatusCode::OK => return Ok(Some(res.bytes().await?.to_vec())),
                StatusCode::TOO_EARLY => continue,
                StatusCode::NOT_FOUND | StatusCode::GONE => return Ok(None),
                s => return Err(SimulateError::Server(format!("GET {url}: {s}"))),
            }
        }
    }
}

/// One device: its slot, user, key and id.
struct Device {
    slot: u32,
    user: u32,
    signing: [u8; 32],
    id: i64,
}

async fn enroll(shared: &Shared, slot: u32, user: u32) -> Res<Device> {
    let signing = device_signing_seed(shared.seed, slot);
    let (pair, public) = crypto::signing_key(&signing).map_err(|e| SimulateError::Device(e.to_string()))?;
    let proof = ring::signature::KeyPair::public_key(&pair);
    debug_assert_eq!(proof.as_ref(), public);
    let sig = pair.sign(&enrollment_message(&public));
    let hex = hearth_core::data::hex;
    let body = Enrollment { public_key: hex(&public), proof: hex(sig.as_ref()) };
    let res = shared.send("/v1/devices", |url| shared.http.post(url).json(&body)).await?;
    if !res.status().is_success() {
        return Err(SimulateError::Server(format!("enrollment: {}", res.status())));
    }
    let e: Enrolled = res.json().await?;
    Ok(Device { slot, user, signing, id: e.device_id })
}

/// A device's part in round `round`.
async fn take_part(shared: Arc<Shared>, device: &Device, round: i64) -> Res<Option<DeviceOutcome>> {
    let url = format!("/v1/rounds/{round}/participants/{}", device.id);
    let res = shared.send(&url, |url| shared.http.get(url)).await?;
    if res.status() == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !res.status().is_success() {
        return Err(SimulateError::Server(format!("GET {url}: {}", res.status())));
    }
    let Invitation { index, .. } = res.json().await?;
    let plan = RoundPlan::decode(&shared.bytes(&format!("/v1/rounds/{round}/plan")).await?).map_err(|e| SimulateError::Device(e.to_string()))?;
    let model = shared.model(plan.model_version).await?;
    let r = round as u64;
    let (user, slot) = (device.user, device.slot);
    let (drop_at, mut rng) = device_fate(shared.seed, slot, r, shared.dropout, shared.drop_from);
    // Local training and encoding, off the async threads.
    let key = (slot, round, model.sha256.clone());
    let cached = shared.updates.as_ref().and_then(|c| c.lock().ok()?.get(&key).cloned());
    let words = if let Some(w) = cached {
        Ok(w)
    } else {
        let _permit = shared.training.acquire().await.map_err(|e| SimulateError::Device(e.to_string()))?;
        let (shared2, model2, plan2) = (shared.clone(), model.clone(), plan.clone());
        let seed = shared.seed;
        tokio::task::spawn_blocking(move || -> Result<Vec<u32>, String> {
            let person = &shared2.pop.people[user as usize];
            let m = &model2;
            device_update(&m.global, &m.manifest.dims, &m.settings, &shared2.pop.catalog, person, &plan2, seed, slot, r).map(|u| u.words)
        })
        .await
        .map_err(|e| SimulateError::Device(e.to_string()))?
    };
    let words = match words {
        Ok(w) => {
            if let Some(c) = &shared.updates
                && let Ok(mut c) = c.lock()
            {
                c.insert(key, w.clone());
            }
            w
        }
        Err(e) => {
            tracing::warn!(user, round, error = %e, "local training failed: the device sends nothing");
            return Ok(Some(DeviceOutcome::Failed));
        }
    };
    let (mut client, advert) = Client::new(plan.secagg.clone(), index, device.signing, rng.random()).map_err(|e| SimulateError::Device(e.to_string()))?;
    if drop_at == 0 {
        return Ok(Some(DeviceOutcome::Dropped));
    }
    if !shared.post(round, 0, index, advert).await? {
        return Ok(Some(DeviceOutcome::Late));
    }
    for stage in 1..=3u32 {
        tracing::debug!(device = device.id, round, stage, "asking");
        let Some(request) = shared.ask(round, index, stage).await? else { return Ok(Some(DeviceOutcome::NotAsked)) };
        tracing::debug!(device = device.id, round, stage, "asked");
        if drop_at == stage {
            return Ok(Some(DeviceOutcome::Dropped));
        }
        let reply = match stage {
            1 => client.share_keys(&request),
            2 => client.masked_input(&request, &words),
            _ => client.unmask(&request),
        };
        match reply {
            Ok(reply) => {
                if !shared.post(round, stage, index, reply).await? {
                    return Ok(Some(DeviceOutcome::Late));
                }
            }
            Err(SecAggError::Abort(_)) => return Ok(Some(DeviceOutcome::NotAsked)),
            Err(e) => return Err(SimulateError::Device(format!("user {user}, stage {stage}: {e}"))),
        }
    }
    Ok(Some(DeviceOutcome::Completed))
}

/// The stage at which simulated device `slot` drops out of round `round` in a simulation seeded
/// `seed` (0: before it advertises keys, 1–3: instead of answering that stage, 4: never; a drop
/// comes with probability `dropout`, at a stage from `drop_from` on), and the randomness its
/// SecAgg+ client draws next. The in-process simulation derives the same.
pub fn device_fate(seed: u64, slot: u32, round: u64, dropout: f64, drop_from: u32) -> (u32, ChaCha20Rng) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed.wrapping_mul(31) ^ (u64::from(slot) << 32) ^ round ^ 0x5eed);
    let drop_at = if rng.random::<f64>() < dropout { rng.random_range(drop_from.min(3)..4) } else { 4 };
    (drop_at, rng)
}

/// What a simulated device computed for a round.
#[derive(Debug, Clone)]
pub struct DeviceUpdate {
    /// Its local training's result (the update before clipping).
    pub update: LocalUpdate,
    /// The clipped, rotated, rounded and noised update it masks and sends.
    pub words: Vec<u32>,
    /// Milliseconds training, and encoding.
    pub ms: (f64, f64),
}

/// Simulated device `slot`'s update for round `round` of `plan` in a simulation seeded `seed`:
/// local training on one thread, seeded by its slot and the round, then clipping, rotation and
/// distributed noise with its own seeded randomness. The devices of `simulate` and of the
/// in-process simulation (`tests/src/fed_sim.rs`) both call this, so with the same seeds they send
/// the same words.
#[allow(clippy::too_many_arguments)]
pub fn device_update(global: &TensorFile, dims: &ModelDims, settings: &ModelSettings, catalog: &DeviceCatalog, person: &PersonData, plan: &RoundPlan, seed: u64, slot: u32, round: u64) -> Result<DeviceUpdate, String> {
    let layout = Layout::new(dims, &plan.groups);
    let t = Instant::now();
    // One thread per device, as in a browser's worker: multi-threaded kernels would split their
    // float sums by how busy the pool is, and the update would vary run to run. (Training itself
    // runs one device at a time: `local_update` holds `hearth_core::model::autodiff_lock`, for
    // burn's autodiff loses gradients when graphs are recorded on several threads at once; the
    // encoding runs in parallel.)
    let update = single_threaded(|| local_update::<Autodiff<Flex>>(global, dims, catalog, &layout, person, settings, &plan.local, u64::from(slot) << 20 | round, &Default::default()))?
        .map_err(|e| e.to_string())?;
    let trained = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let mut device_rng = ChaCha20Rng::seed_from_u64(seed.wrapping_mul(31) ^ (u64::from(slot) << 32) ^ round);
    let words = plan.ddg(layout.len()).and_then(|d| Ok(d.encode(&update.delta, plan.rotation_seed, &mut device_rng)?)).map_err(|e| e.to_string())?;
    Ok(DeviceUpdate { update, words, ms: (trained, t.elapsed().as_secs_f64() * 1e3) })
}

/// Runs `f` on a one-thread rayon pool (one per calling thread), so the CPU kernels it calls run
/// serially and give the same bits whatever else the process does.
fn single_threaded<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T, String> {
    thread_local! {
        static POOL: Result<rayon::ThreadPool, String> = rayon::ThreadPoolBuilder::new().num_threads(1).build().map_err(|e| e.to_string());
    }
    POOL.with(|p| p.as_ref().map(|p| p.install(f)).map_err(Clone::clone))
}

/// What the simulation tells its caller as it goes.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Devices enrolled so far.
    Enrolled(u32),
    /// A round ended.
    Round(SimRound),
}

/// Runs the devices until `cfg.rounds` rounds have ended on the server.
pub async fn simulate(cfg: &SimulateConfig, pop: Arc<Population>, mut progress: impl FnMut(Progress)) -> Res<SimReport> {
    let t0 = Instant::now();
    if cfg.servers.is_empty() {
        return Err(SimulateError::Device("no aggregator to speak to".into()));
    }
    let http = reqwest::Client::builder().pool_max_idle_per_host(4096).timeout(Duration::from_secs(120)).build()?;
    let shared = Arc::new(Shared {
        http,
        servers: cfg.servers.iter().map(|s| s.trim_end_matches('/').to_owned()).collect(),
        current: std::sync::atomic::AtomicUsize::new(0),
        pop,
        models: tokio::sync::Mutex::new(HashMap::new()),
        training: tokio::sync::Semaphore::new(cfg.parallel_training.max(1)),
        latencies: std::sync::Mutex::new(Vec::new()),
        acked: std::sync::Mutex::new(Vec::new()),
        dropout: cfg.dropout,
        drop_from: cfg.drop_from,
        seed: cfg.seed,
        updates: cfg.updates.clone(),
    });
    // Enroll every device, one after the other: on a fresh server, ids follow the users' order,
    // so runs with the same seeds sample the same people.
    let mut devices = Vec::with_capacity(cfg.users.len());
    if let Some(u) = cfg.users.iter().find(|&&u| u as usize >= shared.pop.people.len()) {
        return Err(SimulateError::Device(format!("user {u} is not among the {} people of the data", shared.pop.people.len())));
    }
    for (slot, &u) in cfg.users.iter().enumerate() {
        devices.push(Arc::new(enroll(&shared, slot as u32, u).await?));
        if devices.len() % 32 == 0 || devices.len() == cfg.users.len() {
            progress(Progress::Enrolled(devices.len() as u32));
        }
    }
    let (round_tx, round_rx) = tokio::sync::watch::channel(0i64);
    let dropouts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let errors: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for d in &devices {
        let (shared, d, mut rx, dropouts, errors) = (shared.clone(), d.clone(), round_rx.clone(), dropouts.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = 0i64;
            while rx.changed().await.is_ok() {
                let round = *rx.borrow_and_update();
                if round <= seen {
                    continue;
                }
                seen = round;
                match take_part(shared.clone(), &d, round).await {
                    Ok(Some(DeviceOutcome::Dropped)) => {
                        dropouts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(o) => tracing::debug!(device = d.id, round, outcome = ?o, "device done"),
                    Err(e) => {
                        tracing::error!(device = d.id, user = d.user, round, error = %e, "device failed");
                        if let Ok(mut v) = errors.lock() {
                            v.push(format!("device {} (user {}), round {round}: {e}", d.id, d.user));
                        }
                    }
                }
            }
        }));
    }
    // The watcher: the next round, then its end.
    let mut rounds = Vec::new();
    let mut after = 0i64;
    let mut waiting = Instant::now();
    while (rounds.len() as u32) < cfg.rounds {
        let url = format!("/v1/rounds/current?after={after}&wait_ms=20000");
        let res = shared.poll(&url, |url| shared.http.get(url)).await?;
        if res.status() == StatusCode::NOT_FOUND {
            if waiting.elapsed() > NO_ROUND_FOR {
                return Err(SimulateError::Server(format!(
                    "no round opened for {} s after round {after} (is the privacy budget spent, or are too few devices enrolled?)",
                    NO_ROUND_FOR.as_secs()
                )));
            }
            continue;
        }
        waiting = Instant::now();
        if !res.status().is_success() {
            return Err(SimulateError::Server(format!("GET {url}: {}", res.status())));
        }
        let v: RoundView = res.json().await?;
        after = v.number;
        if v.status == "open" {
            let _ = round_tx.send(v.number);
        }
        let v = wait_end(&shared, v).await?;
        let rep = v.report.clone().unwrap_or_default();
        let r = SimRound {
            round: v.number,
            status: v.status,
            invited: rep.invited,
            survivors: rep.survivors,
            dropped: rep.dropped,
            eval: rep.eval,
            epsilon: rep.epsilon_total,
            published: rep.published,
            secs: rep.secs,
        };
        progress(Progress::Round(r.clone()));
        rounds.push(r);
        if let Ok(e) = errors.lock()
            && let Some(first) = e.first()
        {
            return Err(SimulateError::Device(format!("{} device errors; the first: {first}", e.len())));
        }
    }
    drop(round_tx);
    for t in tasks {
        let _ = t.await;
    }
    let lat = shared.latencies.lock().map(|l| l.clone()).unwrap_or_default();
    let all = Latency::of("all", lat.iter().map(|l| l.1).collect());
    let mut kinds: Vec<&str> = lat.iter().map(|l| l.0).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let by_kind = kinds.into_iter().map(|k| Latency::of(k, lat.iter().filter(|l| l.0 == k).map(|l| l.1).collect())).collect();
    Ok(SimReport {
        rounds,
        devices: devices.len() as u32,
        dropouts: dropouts.load(std::sync::atomic::Ordering::Relaxed),
        requests: all.count,
        p50_ms: all.p50_ms,
        p99_ms: all.p99_ms,
        by_kind,
        secs: t0.elapsed().as_secs_f64(),
        acked: shared.acked.lock().map(|a| a.clone()).unwrap_or_default(),
    })
}

/// Latencies of one kind of request.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// enroll, invitation, plan, model file, message or round status.
    pub kind: &'static str,
    /// Requests.
    pub count: u64,
    /// Median (ms).
    pub p50_ms: f64,
    /// 99th percentile (ms).
    pub p99_ms: f64,
    /// Largest (ms).
    pub max_ms: f64,
}

impl Latency {
    fn of(kind: &'static str, mut ms: Vec<f32>) -> Latency {
        ms.sort_by(f32::total_cmp);
        let pct = |p: f64| ms.get(((ms.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0) as f64;
        Latency { kind, count: ms.len() as u64, p50_ms: pct(0.5), p99_ms: pct(0.99), max_ms: pct(1.0) }
    }
}

/// What a device's request to `path` is, for the latency table.
fn request_kind(path: &str) -> &'static str {
    if path.starts_with("/v1/devices") {
        "enroll"
    } else if path.starts_with("/v1/models/") {
        "model file"
    } else if path.contains("/participants/") {
        "invitation"
    } else if path.ends_with("/plan") {
        "plan"
    } else if path.ends_with("/messages") {
        "message"
    } else {
        "round status"
    }
}

/// How long the simulation waits for the server to open its next round.
const NO_ROUND_FOR: Duration = Duration::from_secs(120);

/// Long-polls a round until it ends.
async fn wait_end(shared: &Shared, mut v: RoundView) -> Res<RoundView> {
    while v.status == "open" {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let url = format!("/v1/rounds/{}", v.number);
        let res = shared.send(&url, |url| shared.http.get(url)).await?;
        if !res.status().is_success() {
            return Err(SimulateError::Server(format!("GET {url}: {}", res.status())));
        }
        v = res.json().await?;
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::request_kind;

    #[test]
    fn requests_are_told_apart_by_path() {
        for (path, kind) in [
            ("/v1/devices", "enroll"),
            ("/v1/models/3/global.bin", "model file"),
            ("/v1/rounds/2/participants/17", "invitation"),
            ("/v1/rounds/2/plan", "plan"),
            ("/v1/rounds/2/messages", "message"),
            ("/v1/rounds/2", "round status"),
        ] {
            assert_eq!(request_kind(path), kind, "{path}");
        }
    }
}
