//! The aggregator's HTTP API. Devices enroll an Ed25519 key, find whether they were invited to
//! the open round, read its plan and the model, and exchange the SecAgg+ messages; operators read
//! rounds, the privacy ledger, `/metrics`, `/health` and `/openapi.json`.
//!
//! Every refusal is [`ApiError`]: a 4xx/5xx status and a JSON body `{"error": {"code",
//! "message"}}` whose `code` is stable. Limits: a body-size cap (413 `too_large`), requests in
//! flight (503 `overloaded`, refused at once so a flood cannot queue memory), per-device token
//! buckets (429 `rate_limited`). A client message is checked (frame, version, round, client
//! index, stage, signature) and committed to the store before it is acknowledged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hearth_core::data::hex;
use hearth_core::fed::layout::Layout;
use hearth_core::privacy::ddg::DdgPlan;
use hearth_core::secagg::wire::{self, Message, Signed};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::ServeConfig;
use super::models::{DEVICE_FILES, ModelStore, VersionIndex};
use super::rounds::{PHASE_AGGREGATE, RoundSummary};
use super::store::{Inserted, LedgerRow, Store};

/// A refused request: status, stable code, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable code clients switch on.
    pub code: &'static str,
    /// What happened, for people.
    pub message: String,
}

/// The JSON body of every error.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// See [`ErrorBody`].
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable code: malformed, unsupported_version, too_large, wrong_round, wrong_stage,
    /// not_asked, unknown_client, unknown_device, bad_signature, duplicate, rate_limited,
    /// no_round, round_closed, not_invited, not_yet, no_version, no_file, overloaded, internal.
    pub code: String,
    /// What happened.
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("hearth_http_refused_total", "code" => self.code).increment(1);
        let body = ErrorBody { error: ErrorDetail { code: self.code.into(), message: self.message } };
        (self.status, Json(body)).into_response()
    }
}

impl From<super::store::StoreError> for ApiError {
    fn from(e: super::store::StoreError) -> ApiError {
        tracing::error!(error = %e, "store");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "internal", "the store is unavailable; retry")
    }
}

impl From<super::models::ModelStoreError> for ApiError {
    fn from(e: super::models::ModelStoreError) -> ApiError {
        match e {
            super::models::ModelStoreError::NoVersion(v) => ApiError::new(StatusCode::NOT_FOUND, "no_version", format!("model version {v} is not published")),
            e => {
                tracing::error!(error = %e, "model store");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "internal", "the model store is unavailable; retry")
            }
        }
    }
}

fn body_error(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.body_text())
    } else {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed", e.body_text())
    }
}

fn json_error(e: JsonRejection) -> ApiError {
    match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.body_text()),
        _ => ApiError::new(StatusCode::BAD_REQUEST, "malformed", e.body_text()),
    }
}

/// A token bucket.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, rate: f64, burst: f64) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + rate * now.duration_since(self.at).as_secs_f64()).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A round's fixed facts, cached (they never change once it opened).
struct RoundFacts {
    number: i64,
    round_id: [u8; 16],
    participants: Vec<i64>,
    index_of: HashMap<i64, u32>,
    keys: Vec<Option<[u8; 32]>>,
    dim: u32,
    plan: Vec<u8>,
}

/// What every handler shares.
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    models: ModelStore,
    device_rate: f64,
    device_burst: f64,
    enroll_rate: f64,
    buckets: Mutex<HashMap<i64, Bucket>>,
    enroll_bucket: Mutex<Bucket>,
    facts: Mutex<Option<Arc<RoundFacts>>>,
    changed: tokio::sync::watch::Sender<u64>,
    wake: Arc<tokio::sync::Notify>,
    /// Requests with a body in flight, and the others (long polls hold little memory).
    in_flight: Arc<tokio::sync::Semaphore>,
    /// See `in_flight`.
    polls: Arc<tokio::sync::Semaphore>,
    max_body: usize,
    metrics: PrometheusHandle,
    started: Instant,
}

/// The process's Prometheus recorder (one per process, shared by every server in it).
fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may be installed (a test harness): then this one only renders.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

impl App {
    /// The shared state of the routes.
    pub fn new(
        store: Arc<dyn Store>,
        models: ModelStore,
        cfg: &ServeConfig,
        base: &hearth_core::artifact::bundle::ModelBundle,
        changed: tokio::sync::watch::Sender<u64>,
        wake: Arc<tokio::sync::Notify>,
    ) -> App {
        // The largest message of a round with the configured groups: the masked input, 4 bytes a
        // word, plus its header and signature; key shares of up to 254 neighbours are smaller.
        let dim = Layout::new(&base.manifest.dims, &cfg.round.groups).len();
        let noise = hearth_core::privacy::ddg::DdgConfig { clip: cfg.round.clip, ..Default::default() };
        let words = DdgPlan::new(dim, &noise).map_or(dim.next_power_of_two(), |p| p.padded);
        let max_body = cfg.max_body_bytes.unwrap_or(4 * words + 64 * 1024);
        App {
            inner: Arc::new(Inner {
                store,
                models,
                device_rate: cfg.device_rate,
                device_burst: cfg.device_burst,
                enroll_rate: cfg.enroll_rate,
                buckets: Mutex::new(HashMap::new()),
                enroll_bucket: Mutex::new(Bucket { tokens: cfg.enroll_rate, at: Instant::now() }),
                facts: Mutex::new(None),
                changed,
                wake,
                in_flight: Arc::new(tokio::sync::Semaphore::new(cfg.max_in_flight.max(1))),
                polls: Arc::new(tokio::sync::Semaphore::new(cfg.max_polls.max(1))),
                max_body,
                metrics: prometheus(),
                started: Instant::now(),
            }),
        }
    }

    fn limit_device(&self, device: i64) -> Result<(), ApiError> {
        let mut b = self.inner.buckets.lock().map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "lock"))?;
        let burst = self.inner.device_burst;
        // Buckets of enrolled devices only (callers check the device first): bounded by them.
        if b.len() > 100_000 {
            b.retain(|_, v| v.at.elapsed() < Duration::from_secs(60));
        }
        let bucket = b.entry(device).or_insert(Bucket { tokens: burst, at: Instant::now() });
        if bucket.take(self.inner.device_rate, burst) {
            Ok(())
        } else {
            Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", format!("device {device}: more than {} requests a second", self.inner.device_rate)))
        }
    }

    async fn facts(&self, number: i64) -> Result<Arc<RoundFacts>, ApiError> {
        if let Ok(f) = self.inner.facts.lock()
            && let Some(f) = f.as_ref()
            && f.number == number
        {
            return Ok(f.clone());
        }
        let r = self.inner.store.round(number).await?.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no_round", format!("there is no round {number}")))?;
        let plan = hearth_core::fed::plan::RoundPlan::decode(&r.plan).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
        let keys = self.inner.store.device_keys(&r.participants).await?;
        let facts = Arc::new(RoundFacts {
            number,
            round_id: plan.secagg.round,
            index_of: r.participants.iter().enumerate().map(|(i, d)| (*d, i as u32)).collect(),
            participants: r.participants,
            keys,
            dim: plan.secagg.dim,
            plan: r.plan,
        });
        if let Ok(mut f) = self.inner.facts.lock() {
            *f = Some(facts.clone());
        }
        Ok(facts)
    }
}

/// Refuses requests beyond `max_in_flight` with a body (or `max_polls` without) at once, so a
/// flood holds bounded memory.
async fn shed(State(app): State<App>, req: Request, next: Next) -> Response {
    let limit = if req.method() == axum::http::Method::POST { &app.inner.in_flight } else { &app.inner.polls };
    match limit.clone().try_acquire_owned() {
        Ok(_permit) => next.run(req).await,
        Err(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "too many requests in flight; retry").into_response(),
    }
}

/// The routes.
pub fn router(app: App) -> axum::Router {
    let max_body = app.inner.max_body;
    axum::Router::new()
        .route("/v1/devices", post(enroll))
        .route("/v1/rounds/current", get(current_round))
        .route("/v1/rounds/{number}", get(round))
        .route("/v1/rounds/{number}/plan", get(plan))
        .route("/v1/rounds/{number}/participants/{device}", get(invitation))
        .route("/v1/rounds/{number}/messages", post(submit))
        .route("/v1/rounds/{number}/requests/{index}", get(request))
        .route("/v1/models/latest", get(latest_model))
        .route("/v1/models/{version}/{file}", get(model_file))
        .route("/v1/ledger", get(ledger))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such route") })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(app.clone(), shed))
        .layer(axum::middleware::from_fn(count))
        .with_state(app)
}

/// Counts requests and their latency by route.
async fn count(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<axum::extract::MatchedPath>().map_or_else(|| "other".to_owned(), |p| p.as_str().to_owned());
    let bytes = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()).unwrap_or(0);
    let t = Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::counter!("hearth_http_requests_total", "route" => route.clone(), "status" => status).increment(1);
    metrics::counter!("hearth_http_received_bytes_total").increment(bytes);
    metrics::histogram!("hearth_http_seconds", "route" => route).record(t.elapsed().as_secs_f64());
    res
}

fn unhex<const N: usize>(s: &str, what: &str) -> Result<[u8; N], ApiError> {
    let bad = || ApiError::new(StatusCode::BAD_REQUEST, "malformed", format!("{what}: {} hexadecimal digits expected", 2 * N));
    if s.len() != 2 * N || !s.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// The bytes a device signs to enroll its key: proof it holds the private half.
pub fn enrollment_message(public_key: &[u8; 32]) -> Vec<u8> {
    [b"hearth enroll v1".as_slice(), public_key].concat()
}

/// An enrollment request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Enrollment {
    /// The device's Ed25519 public key (64 hex digits): it signs every secure-aggregation message.
    pub public_key: String,
    /// Its signature of `"hearth enroll v1" ‖ public_key` (128 hex digits).
    pub proof: String,
}

/// An enrolled device.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Enrolled {
    /// The device id.
    pub device_id: i64,
}

/// Enrolls a device (the same key again gets the same id).
#[utoipa::path(post, path = "/v1/devices", request_body = Enrollment, responses(
    (status = 201, description = "enrolled", body = Enrolled), (status = 200, description = "already enrolled", body = Enrolled),
    (status = 400, description = "malformed", body = ErrorBody), (status = 401, description = "bad_signature", body = ErrorBody),
    (status = 429, description = "rate_limited", body = ErrorBody)))]
async fn enroll(State(app): State<App>, body: Result<Json<Enrollment>, JsonRejection>) -> Result<(StatusCode, Json<Enrolled>), ApiError> {
    let Json(e) = body.map_err(json_error)?;
    let key: [u8; 32] = unhex(&e.public_key, "public_key")?;
    let proof: [u8; 64] = unhex(&e.proof, "proof")?;
    {
        let mut b = app.inner.enroll_bucket.lock().map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "lock"))?;
        if !b.take(app.inner.enroll_rate, app.inner.enroll_rate) {
            return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many enrollments; retry"));
        }
    }
    if !hearth_core::secagg::crypto::verify(&key, &enrollment_message(&key), &proof) {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "bad_signature", "the proof does not verify with the key"));
    }
    let (id, new) = app.inner.store.enroll(key, super::rounds::now_ms()).await?;
    if new {
        metrics::counter!("hearth_devices_enrolled_total").increment(1);
        app.inner.wake.notify_one();
    }
    Ok((if new { StatusCode::CREATED } else { StatusCode::OK }, Json(Enrolled { device_id: id })))
}

/// A round as devices and operators see it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RoundView {
    /// Round number.
    pub number: i64,
    /// The secure-aggregation round id (hex).
    pub round_id: String,
    /// The model version it trains.
    pub model_version: i64,
    /// The model version it publishes when it completes.
    pub publishes: i64,
    /// open, done, aborted or skipped.
    pub status: String,
    /// The stage: advertise_keys, share_keys, masked_input, unmask, aggregate, or closed.
    pub stage: String,
    /// Devices invited.
    pub invited: usize,
    /// When the current stage closes at the latest (ms since the epoch).
    pub deadline_ms: i64,
    /// The report, once ended.
    pub report: Option<RoundSummary>,
}

fn view(r: super::store::RoundRow) -> RoundView {
    let stage = if r.status != "open" {
        "closed"
    } else if r.phase >= PHASE_AGGREGATE {
        "aggregate"
    } else {
        ["advertise_keys", "share_keys", "masked_input", "unmask"][(r.phase / 2).clamp(0, 3) as usize]
    };
    RoundView {
        number: r.number,
        round_id: hex(&r.round_id),
        model_version: r.model_version,
        publishes: r.publishes,
        status: r.status,
        stage: stage.into(),
        invited: r.participants.len(),
        deadline_ms: r.stage_deadline_ms,
        report: r.report.and_then(|s| serde_json::from_str(&s).ok()),
    }
}

/// Long-poll parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct Wait {
    /// Wait up to this long (ms, at most 30,000) for the answer to change.
    #[serde(default)]
    pub wait_ms: u64,
    /// For `current`: wait for a round numbered above this.
    #[serde(default)]
    pub after: Option<i64>,
    /// For `requests`: the stage asked about (1 share_keys, 2 masked_input, 3 unmask).
    #[serde(default)]
    pub stage: Option<i64>,
}

/// Waits until the owner changes something or `until` passes; false once it passed.
async fn wait_change(rx: &mut tokio::sync::watch::Receiver<u64>, until: Instant) -> bool {
    let now = Instant::now();
    if now >= until {
        return false;
    }
    // Replicas that do not own the rounds see no notification: they look again every 250 ms.
    let _ = tokio::time::timeout((until - now).min(Duration::from_millis(250)), rx.changed()).await;
    true
}

fn deadline(wait: &Wait) -> Instant {
    Instant::now() + Duration::from_millis(wait.wait_ms.min(30_000))
}

/// The latest round (long-poll with `after` for the next one).
#[utoipa::path(get, path = "/v1/rounds/current", params(Wait), responses((status = 200, body = RoundView), (status = 404, description = "no_round", body = ErrorBody)))]
async fn current_round(State(app): State<App>, Query(wait): Query<Wait>) -> Result<Json<RoundView>, ApiError> {
    let until = deadline(&wait);
    let mut rx = app.inner.changed.subscribe();
    loop {
        let r = app.inner.store.latest_round().await?;
        match r {
            Some(r) if wait.after.is_none_or(|a| r.number > a) => return Ok(Json(view(r))),
            _ if !wait_change(&mut rx, until).await => {
                return Err(ApiError::new(StatusCode::NOT_FOUND, "no_round", "no round yet"));
            }
            _ => {}
        }
    }
}

/// One round.
#[utoipa::path(get, path = "/v1/rounds/{number}", params(("number" = i64, Path, description = "round number")), responses((status = 200, body = RoundView), (status = 404, description = "no_round", body = ErrorBody)))]
async fn round(State(app): State<App>, Path(number): Path<i64>) -> Result<Json<RoundView>, ApiError> {
    let r = app.inner.store.round(number).await?.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no_round", format!("there is no round {number}")))?;
    Ok(Json(view(r)))
}

fn octets(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"))], bytes).into_response()
}

/// The round's plan (the framed `RoundPlan` every device decodes).
#[utoipa::path(get, path = "/v1/rounds/{number}/plan", params(("number" = i64, Path, description = "round number")), responses((status = 200, description = "the plan", content_type = "application/octet-stream"), (status = 404, description = "no_round", body = ErrorBody)))]
async fn plan(State(app): State<App>, Path(number): Path<i64>) -> Result<Response, ApiError> {
    Ok(octets(app.facts(number).await?.plan.clone()))
}

/// A device's place in a round.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Invitation {
    /// The round.
    pub round: i64,
    /// The device's client index in it.
    pub index: u32,
}

/// Whether a device was invited to a round, and its client index.
#[utoipa::path(get, path = "/v1/rounds/{number}/participants/{device}", params(("number" = i64, Path, description = "round number"), ("device" = i64, Path, description = "device id")),
    responses((status = 200, body = Invitation), (status = 404, description = "not_invited, unknown_device or no_round", body = ErrorBody)))]
async fn invitation(State(app): State<App>, Path((number, device)): Path<(i64, i64)>) -> Result<Json<Invitation>, ApiError> {
    let f = app.facts(number).await?;
    if app.inner.store.device_keys(&[device]).await?.first().copied().flatten().is_none() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_device", format!("device {device} is not enrolled")));
    }
    let index = *f.index_of.get(&device).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_invited", format!("device {device} is not in round {number}")))?;
    Ok(Json(Invitation { round: number, index }))
}

/// What was done with a submitted message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    /// The stage it belongs to (0 advertise_keys … 3 unmask).
    pub stage: i64,
    /// accepted, or already_accepted for an identical resubmission.
    pub status: String,
}

/// Submits a signed SecAgg+ message (the body is its bytes).
#[utoipa::path(post, path = "/v1/rounds/{number}/messages", params(("number" = i64, Path, description = "round number")), request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 202, body = Accepted), (status = 200, description = "already_accepted", body = Accepted),
    (status = 400, description = "malformed, unsupported_version", body = ErrorBody), (status = 401, description = "bad_signature", body = ErrorBody),
    (status = 403, description = "unknown_client, unknown_device", body = ErrorBody), (status = 404, description = "no_round", body = ErrorBody),
    (status = 409, description = "wrong_round, wrong_stage, not_asked, duplicate", body = ErrorBody), (status = 410, description = "round_closed", body = ErrorBody),
    (status = 413, description = "too_large", body = ErrorBody), (status = 429, description = "rate_limited", body = ErrorBody)))]
async fn submit(State(app): State<App>, Path(number): Path<i64>, body: Result<Bytes, BytesRejection>) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let body = body.map_err(body_error)?;
    let decoded = wire::decode(&body).map_err(|e| {
        if body.len() > 8 && &body[..8] == wire::MAGIC && body[8] != wire::VERSION {
            ApiError::new(StatusCode::BAD_REQUEST, "unsupported_version", format!("message version {}; this server reads {}", body[8], wire::VERSION))
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "malformed", e.to_string())
        }
    })?;
    let (round_id, index, stage, words) = match &decoded.message {
        Message::Advertise(m) => (m.round, m.index, 0, None),
        Message::ShareKeys(m) => (m.round, m.index, 1, None),
        Message::MaskedInput(m) => (m.round, m.index, 2, Some(m.words.len())),
        Message::Unmask(m) => (m.round, m.index, 3, None),
        _ => return Err(ApiError::new(StatusCode::BAD_REQUEST, "malformed", "a server's message, not a client's")),
    };
    let f = app.facts(number).await?;
    if round_id != f.round_id {
        return Err(ApiError::new(StatusCode::CONFLICT, "wrong_round", format!("the message is for round {}, not round {number}", hex(&round_id))));
    }
    let device = *f.participants.get(index as usize).ok_or_else(|| ApiError::new(StatusCode::FORBIDDEN, "unknown_client", format!("client {index} is not in round {number}")))?;
    let key = f.keys.get(index as usize).copied().flatten().ok_or_else(|| ApiError::new(StatusCode::FORBIDDEN, "unknown_device", format!("device {device} is not enrolled")))?;
    if !decoded.verify(&key) {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "bad_signature", format!("the signature does not verify with device {device}'s key")));
    }
    // After the signature: forged messages cannot spend a device's budget.
    app.limit_device(device)?;
    if let Some(n) = words
        && n != f.dim as usize
    {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "malformed", format!("{n} words; the round sums {}", f.dim)));
    }
    if stage > 0 && app.inner.store.request(number, stage, i64::from(index)).await?.is_none() {
        return Err(ApiError::new(StatusCode::CONFLICT, "not_asked", format!("client {index} was not asked for stage {stage} (yet)")));
    }
    let inserted = app.inner.store.insert_message(number, stage, i64::from(index), &body, super::rounds::now_ms()).await?;
    match inserted {
        Inserted::New => {
            metrics::counter!("hearth_messages_total", "stage" => stage.to_string()).increment(1);
            metrics::counter!("hearth_message_bytes_total").increment(body.len() as u64);
            app.inner.wake.notify_one();
            Ok((StatusCode::ACCEPTED, Json(Accepted { stage, status: "accepted".into() })))
        }
        Inserted::Again => Ok((StatusCode::OK, Json(Accepted { stage, status: "already_accepted".into() }))),
        Inserted::Conflict | Inserted::Closed => {
            let r = app.inner.store.round(number).await?;
            if r.is_some_and(|r| r.status != "open") {
                Err(ApiError::new(StatusCode::GONE, "round_closed", format!("round {number} has ended")))
            } else if inserted == Inserted::Conflict {
                Err(ApiError::new(StatusCode::CONFLICT, "duplicate", format!("client {index} already sent a different message for stage {stage}")))
            } else {
                Err(ApiError::new(StatusCode::CONFLICT, "wrong_stage", format!("round {number} does not accept stage {stage} now")))
            }
        }
    }
}

/// The server's message to a client for a stage (long-poll with `wait_ms`).
#[utoipa::path(get, path = "/v1/rounds/{number}/requests/{index}", params(("number" = i64, Path, description = "round number"), ("index" = u32, Path, description = "client index"), Wait),
    responses((status = 200, description = "the request", content_type = "application/octet-stream"), (status = 404, description = "not_asked or no_round", body = ErrorBody),
    (status = 410, description = "round_closed", body = ErrorBody), (status = 425, description = "not_yet", body = ErrorBody)))]
async fn request(State(app): State<App>, Path((number, index)): Path<(i64, u32)>, Query(wait): Query<Wait>) -> Result<Response, ApiError> {
    let stage = wait.stage.filter(|s| (1..=3).contains(s)).ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "malformed", "stage=1, 2 or 3 expected"))?;
    let f = app.facts(number).await?;
    let device = *f.participants.get(index as usize).ok_or_else(|| ApiError::new(StatusCode::FORBIDDEN, "unknown_client", format!("client {index} is not in round {number}")))?;
    app.limit_device(device)?;
    let until = deadline(&wait);
    let mut rx = app.inner.changed.subscribe();
    loop {
        // The round first: a stage's requests are committed with the phase that opens it, so a
        // phase read before the request tells whether a missing request will never come.
        let r = app.inner.store.round(number).await?.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no_round", format!("there is no round {number}")))?;
        if let Some(b) = app.inner.store.request(number, stage, i64::from(index)).await? {
            return Ok(octets(b));
        }
        if r.status != "open" {
            return Err(ApiError::new(StatusCode::GONE, "round_closed", format!("round {number} has ended")));
        }
        if r.phase >= 2 * stage {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "not_asked", format!("client {index} is not asked at stage {stage}")));
        }
        if !wait_change(&mut rx, until).await {
            return Err(ApiError::new(StatusCode::TOO_EARLY, "not_yet", format!("stage {stage} has not opened")));
        }
    }
}

/// The published model version devices should use.
#[utoipa::path(get, path = "/v1/models/latest", responses((status = 200, body = VersionIndex), (status = 404, description = "no_version", body = ErrorBody)))]
async fn latest_model(State(app): State<App>) -> Result<Json<VersionIndex>, ApiError> {
    let v = app.inner.models.latest().await?.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no_version", "nothing is published"))?;
    Ok(Json(app.inner.models.index(v).await?))
}

/// A file of a published model version (immutable).
#[utoipa::path(get, path = "/v1/models/{version}/{file}", params(("version" = u32, Path, description = "model version"), ("file" = String, Path, description = "manifest.json, global.bin, catalog.json or items.shard")),
    responses((status = 200, description = "the file"), (status = 404, description = "no_version or no_file", body = ErrorBody)))]
async fn model_file(State(app): State<App>, Path((version, file)): Path<(u32, String)>) -> Result<Response, ApiError> {
    if !DEVICE_FILES.contains(&file.as_str()) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no_file", format!("{file} is not a published file")));
    }
    let bytes = app.inner.models.file(version, &file).await?.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no_file", format!("version {version} has no {file}")))?;
    let mut res = octets(bytes);
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    Ok(res)
}

/// The privacy ledger.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Ledger {
    /// ε of all rounds so far (0 before any noised round).
    pub epsilon_total: f64,
    /// One entry per round that released a noised sum.
    pub entries: Vec<LedgerRow>,
}

/// The privacy ledger: per-round and cumulative ε.
#[utoipa::path(get, path = "/v1/ledger", responses((status = 200, body = Ledger)))]
async fn ledger(State(app): State<App>) -> Result<Json<Ledger>, ApiError> {
    let entries = app.inner.store.ledger().await?;
    Ok(Json(Ledger { epsilon_total: entries.last().map_or(0.0, |l| l.epsilon_total), entries }))
}

/// Liveness and what the server is doing.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// ok.
    pub status: String,
    /// sqlite or postgres.
    pub store: String,
    /// The published version `latest` points to.
    pub model_version: Option<u32>,
    /// The latest round's number and status.
    pub round: Option<(i64, String)>,
    /// Seconds since start.
    pub uptime_secs: f64,
}

/// Liveness: the store and model store answer.
#[utoipa::path(get, path = "/health", responses((status = 200, body = Health), (status = 503, description = "internal", body = ErrorBody)))]
async fn health(State(app): State<App>) -> Result<Json<Health>, ApiError> {
    let round = app.inner.store.latest_round().await?.map(|r| (r.number, r.status));
    Ok(Json(Health {
        status: "ok".into(),
        store: app.inner.store.kind().into(),
        model_version: app.inner.models.latest().await?,
        round,
        uptime_secs: app.inner.started.elapsed().as_secs_f64(),
    }))
}

/// Prometheus metrics (text format).
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics_text(State(app): State<App>) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))], app.inner.metrics.render()).into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "the OpenAPI document")))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The OpenAPI document of every route.
#[derive(OpenApi)]
#[openapi(
    info(title = "hearth aggregator", description = "Federated rounds with SecAgg+ and distributed differential privacy"),
    paths(enroll, current_round, round, plan, invitation, submit, request, latest_model, model_file, ledger, health, metrics_text, openapi),
    components(schemas(ErrorBody, ErrorDetail, Enrollment, Enrolled, RoundView, RoundSummary, Invitation, Accepted, VersionIndex, Ledger, LedgerRow, Health))
)]
pub struct ApiDoc;
