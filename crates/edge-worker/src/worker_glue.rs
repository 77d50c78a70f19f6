//! The worker's routes on the Workers runtime (workers-rs): R2 `MODELS` for files and version
//! indexes, KV `MODELS_KV` for `latest`, the Cache API in front of file bodies, and the
//! `PUBLISH_TOKEN` secret for publishing. The rules they apply live in `http` and `models`.

use worker::{Cache, Context, Env, Headers, Range, Request, Response, Result, RouteContext, Router, event};

use crate::http::{EdgeError, RangeAnswer, internal, bearer_matches, etag, if_range_holds, none_match, parse_range, resolve_range};
use crate::models::{
    IMMUTABLE, LATEST_CACHE, MAX_FILE_BYTES, MAX_INDEX_BYTES, MoveLatest, VersionIndex, check_file_name, content_type, file_key, index_key,
    parse_sha256, parse_version,
};

/// R2 bucket of files and version indexes.
const BUCKET: &str = "MODELS";
/// KV namespace holding `latest`.
const KV: &str = "MODELS_KV";
/// Secret whose bearer token may publish.
const TOKEN: &str = "PUBLISH_TOKEN";
/// Variable naming the aggregator intake forwards to.
const AGGREGATOR: &str = "AGGREGATOR_URL";
/// Rate-limit binding of intake per device (address, round and index).
const INTAKE_LIMIT: &str = "INTAKE_LIMIT";
/// Rate-limit binding per client address (intake and the relay).
const CLIENT_LIMIT: &str = "CLIENT_LIMIT";
/// Durable Object namespace of the sync relay (one object per group).
const RELAY: &str = "SYNC_RELAY";
/// Cache API keys live under this origin (never fetched: the Cache API only needs a URL).
const CACHE_ORIGIN: &str = "https://hearth-edge.cache";

pub(crate) type Answer = std::result::Result<Response, EdgeError>;
/// A route's context: its parameters, the bindings and the request's `Context` (for
/// `wait_until`).
type Ctx = RouteContext<Context>;

/// An answer as a response: refusals as the aggregator's JSON errors.
pub(crate) fn respond(answer: Answer) -> Result<Response> {
    match answer {
        Ok(r) => Ok(r),
        Err(e) => Ok(Response::from_json(&e.body())?.with_status(e.status)),
    }
}

fn json_response<T: serde::Serialize>(value: &T, status: u16) -> Answer {
    Ok(Response::from_json(value).map_err(internal("json"))?.with_status(status))
}

fn set(headers: &Headers, name: &str, value: &str) -> std::result::Result<(), EdgeError> {
    headers.set(name, value).map_err(internal("a header"))
}

fn param<'a>(ctx: &'a Ctx, name: &str) -> std::result::Result<&'a str, EdgeError> {
    ctx.param(name).map(String::as_str).ok_or_else(|| EdgeError::malformed(format!("no {name} in the path")))
}

/// A request body of at most `limit` bytes (413 `too_large` beyond: by its length header before
/// reading, else while reading, so a chunked body is never held past the limit).
async fn body(req: &mut Request, limit: usize) -> std::result::Result<Vec<u8>, EdgeError> {
    use futures::StreamExt;
    let too_large = |n: usize| EdgeError::new(413, "too_large", format!("a body of {n} bytes or more (at most {limit})"));
    if let Some(n) = req.headers().get("content-length").map_err(internal("a header"))?.and_then(|v| v.parse::<usize>().ok())
        && n > limit
    {
        return Err(too_large(n));
    }
    let mut stream = match req.stream() {
        Ok(s) => s,
        // No body at all.
        Err(_) => return Ok(vec![]),
    };
    let mut out = vec![];
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| EdgeError::malformed(format!("the body: {e}")))?;
        if out.len() + chunk.len() > limit {
            return Err(too_large(out.len() + chunk.len()));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The caller's address as the runtime gives it (`CF-Connecting-IP`), for per-client limits.
fn client_ip(req: &Request) -> String {
    req.headers().get("cf-connecting-ip").ok().flatten().unwrap_or_else(|| "unknown".into())
}

/// Counts a request of `key` against the rate-limit binding `binding` (429 `rate_limited`).
async fn limit(env: &Env, binding: &str, key: String, what: &str) -> std::result::Result<(), EdgeError> {
    let limiter = env.rate_limiter(binding).map_err(internal("the rate limiter"))?;
    if !limiter.limit(key).await.map_err(internal("the rate limiter"))?.success {
        return Err(EdgeError::new(429, "rate_limited", format!("too many {what}; try again in a minute")));
    }
    Ok(())
}

/// Stores `response` under `key` in the Cache API after the answer is sent (a failure only
/// means a later miss).
fn cache_later(ctx: &Ctx, key: String, response: Response) {
    ctx.data.wait_until(async move {
        let _ = Cache::default().put(key.as_str(), response).await;
    });
}

/// A version's index: from the Cache API, else R2 (and then cached: indexes never change once
/// written). None: not published.
async fn read_index(env: &Env, version: u32) -> std::result::Result<Option<VersionIndex>, EdgeError> {
    if let Some(index) = INDEXES.with_borrow(|m| m.get(&version).cloned()) {
        return Ok(Some(index));
    }
    let index = read_index_cached(env, version).await?;
    if let Some(i) = &index {
        INDEXES.with_borrow_mut(|m| {
            if m.len() >= MAX_INDEXES_IN_MEMORY {
                m.clear();
            }
            m.insert(version, i.clone());
        });
    }
    Ok(index)
}

thread_local! {
    /// Version indexes this isolate has read: they never change once stored, so an isolate keeps
    /// them (a few hundred bytes each) and most file requests skip the Cache API lookup.
    static INDEXES: std::cell::RefCell<std::collections::HashMap<u32, VersionIndex>> = Default::default();
}
/// Indexes an isolate keeps before it starts over.
const MAX_INDEXES_IN_MEMORY: usize = 256;

/// [`read_index`] below the isolate's memory: the Cache API, then R2.
async fn read_index_cached(env: &Env, version: u32) -> std::result::Result<Option<VersionIndex>, EdgeError> {
    let cache = Cache::default();
    let key = format!("{CACHE_ORIGIN}/{}", index_key(version));
    if let Some(mut hit) = cache.get(key.as_str(), false).await.map_err(internal("the cache"))? {
        let bytes = hit.bytes().await.map_err(internal("the cache"))?;
        return serde_json::from_slice(&bytes).map(Some).map_err(internal("a cached index"));
    }
    let bucket = env.bucket(BUCKET).map_err(internal("the R2 binding"))?;
    let Some(object) = bucket.get(index_key(version)).execute().await.map_err(internal("R2"))? else { return Ok(None) };
    let bytes = object.body().ok_or_else(|| EdgeError::internal("an index without a body"))?.bytes().await.map_err(internal("R2"))?;
    let index = VersionIndex::decode(&bytes, version).map_err(|e| EdgeError::internal(format!("stored index {version}: {e}")))?;
    let copy = Response::from_bytes(bytes).map_err(internal("a response"))?;
    set(copy.headers(), "cache-control", IMMUTABLE)?;
    // An index is a few hundred bytes: stored before answering, a failure ignored.
    let _ = cache.put(key.as_str(), copy).await;
    Ok(Some(index))
}

/// `GET /v1/models/latest`: the index `latest` names.
async fn latest(env: &Env) -> Answer {
    let kv = env.kv(KV).map_err(internal("the KV binding"))?;
    let json = kv.get("latest").cache_ttl(60).text().await.map_err(internal("KV"))?;
    let json = json.ok_or_else(|| EdgeError::new(404, "no_version", "nothing is published"))?;
    let r = Response::from_bytes(json.into_bytes()).map_err(internal("a response"))?;
    set(r.headers(), "content-type", "application/json")?;
    set(r.headers(), "cache-control", LATEST_CACHE)?;
    Ok(r)
}

/// `GET|HEAD /v1/models/:version/:file`: a versioned file, with its SHA-256 as entity tag,
/// conditional (304) and range (206, 416) answers, the whole body through the Cache API.
async fn model_file(req: &Request, ctx: &Ctx) -> Answer {
    let version = parse_version(param(ctx, "version")?)?;
    let name = param(ctx, "file")?;
    check_file_name(name)?;
    let index = read_index(&ctx.env, version).await?.ok_or_else(|| EdgeError::new(404, "no_version", format!("model version {version} is not published")))?;
    let sha = index.files.get(name).ok_or_else(|| EdgeError::new(404, "no_file", format!("version {version} has no {name}")))?;
    let headers = Headers::new();
    set(&headers, "etag", &etag(sha))?;
    set(&headers, "cache-control", IMMUTABLE)?;
    set(&headers, "accept-ranges", "bytes")?;
    let header = |n: &str| req.headers().get(n).map_err(internal("a header"));
    if header("if-none-match")?.is_some_and(|h| none_match(&h, sha)) {
        return Ok(Response::empty().map_err(internal("a response"))?.with_status(304).with_headers(headers));
    }
    set(&headers, "content-type", content_type(name))?;
    let range = header("range")?.and_then(|h| parse_range(&h)).filter(|_| header("if-range").ok().flatten().is_none_or(|h| if_range_holds(&h, sha)));
    let bucket = ctx.env.bucket(BUCKET).map_err(internal("the R2 binding"))?;
    let missing = || EdgeError::internal(format!("version {version}'s {name} ({sha}) is not in R2"));
    if range.is_none() {
        let cache = Cache::default();
        let key = format!("{CACHE_ORIGIN}/{}", file_key(sha));
        if let Some(hit) = cache.get(key.as_str(), false).await.map_err(internal("the cache"))? {
            return Ok(hit.with_headers(headers));
        }
        let object = bucket.get(file_key(sha)).execute().await.map_err(internal("R2"))?.ok_or_else(missing)?;
        let body = object.body().ok_or_else(missing)?.response_body().map_err(internal("R2"))?;
        let mut r = Response::from_body(body).map_err(internal("a response"))?.with_headers(headers);
        cache_later(ctx, key, r.cloned().map_err(internal("a response"))?);
        return Ok(r);
    }
    let size = bucket.head(file_key(sha)).await.map_err(internal("R2"))?.ok_or_else(missing)?.size();
    match resolve_range(range, size) {
        RangeAnswer::Part { offset, length } => {
            let object = bucket.get(file_key(sha)).range(Range::OffsetWithLength { offset, length }).execute().await.map_err(internal("R2"))?.ok_or_else(missing)?;
            let body = object.body().ok_or_else(missing)?.response_body().map_err(internal("R2"))?;
            set(&headers, "content-range", &format!("bytes {offset}-{}/{size}", offset + length - 1))?;
            Ok(Response::from_body(body).map_err(internal("a response"))?.with_status(206).with_headers(headers))
        }
        RangeAnswer::Unsatisfiable | RangeAnswer::Whole => {
            let e = EdgeError::new(416, "range_not_satisfiable", format!("the file has {size} bytes"));
            let r = Response::from_json(&e.body()).map_err(internal("json"))?.with_status(416);
            set(r.headers(), "content-range", &format!("bytes */{size}"))?;
            Ok(r)
        }
    }
}

/// Refuses a publishing request without the configured bearer token.
fn authorize(req: &Request, env: &Env) -> std::result::Result<(), EdgeError> {
    let token = env.secret(TOKEN).map(|s| s.to_string()).map_err(|_| EdgeError::new(403, "publishing_disabled", format!("no {TOKEN} is configured: this worker does not take publications")))?;
    let given = req.headers().get("authorization").map_err(internal("a header"))?;
    if !bearer_matches(given.as_deref(), &token) {
        return Err(EdgeError::new(401, "unauthorized", "publishing takes the publisher's bearer token"));
    }
    Ok(())
}

/// `PUT /v1/admin/files/:sha256`: stores a file under its digest, once.
async fn put_file(mut req: Request, ctx: Ctx) -> Answer {
    authorize(&req, &ctx.env)?;
    let sha = param(&ctx, "sha256")?.to_owned();
    let digest = parse_sha256(&sha)?;
    let bytes = body(&mut req, MAX_FILE_BYTES).await?;
    if hearth_core::codec::sha256(&bytes).as_ref() != digest {
        return Err(EdgeError::new(400, "digest_mismatch", format!("the body's SHA-256 is not {sha}")));
    }
    let bucket = ctx.env.bucket(BUCKET).map_err(internal("the R2 binding"))?;
    let stored = bucket.head(file_key(&sha)).await.map_err(internal("R2"))?.is_none();
    if stored {
        bucket.put(file_key(&sha), bytes).sha256(digest.to_vec()).execute().await.map_err(internal("R2"))?;
    }
    json_response(&serde_json::json!({ "sha256": sha, "stored": stored }), if stored { 201 } else { 200 })
}

/// `PUT /v1/admin/versions/:version`: stores a version's index once every file it names is in R2.
async fn put_version(mut req: Request, ctx: Ctx) -> Answer {
    authorize(&req, &ctx.env)?;
    let version = parse_version(param(&ctx, "version")?)?;
    let index = VersionIndex::decode(&body(&mut req, MAX_INDEX_BYTES).await?, version)?;
    let bucket = ctx.env.bucket(BUCKET).map_err(internal("the R2 binding"))?;
    for (name, sha) in &index.files {
        if bucket.head(file_key(sha)).await.map_err(internal("R2"))?.is_none() {
            return Err(EdgeError::new(409, "missing_file", format!("{name} ({sha}) is not stored: PUT /v1/admin/files/{sha} first")));
        }
    }
    let canonical = serde_json::to_vec(&index).map_err(internal("json"))?;
    // Written only if no index is there yet (of two racing publications, one wins); otherwise the
    // stored one is compared: the same files are a harmless repeat, others a refusal.
    let only_new = worker::Conditional { etag_does_not_match: Some("*".into()), ..Default::default() };
    if bucket.put(index_key(version), canonical).only_if(only_new).execute().await.map_err(internal("R2"))?.is_none() {
        let existing = read_index(&ctx.env, version).await?;
        return if existing.as_ref() == Some(&index) {
            json_response(&serde_json::json!({ "version": version, "stored": false }), 200)
        } else {
            Err(EdgeError::new(409, "version_exists", format!("version {version} is published with other files; versions never change")))
        };
    }
    json_response(&serde_json::json!({ "version": version, "stored": true }), 201)
}

/// `PUT /v1/admin/latest`: points `latest` at a published version (forward, or back: a rollback).
async fn put_latest(mut req: Request, ctx: Ctx) -> Answer {
    authorize(&req, &ctx.env)?;
    let bytes = body(&mut req, 1024).await?;
    let MoveLatest { version } = serde_json::from_slice(&bytes).map_err(|e| EdgeError::malformed(format!("expected {{\"version\": n}}: {e}")))?;
    let index = read_index(&ctx.env, version).await?.ok_or_else(|| EdgeError::new(409, "no_version", format!("version {version} has no index: PUT /v1/admin/versions/{version} first")))?;
    let json = serde_json::to_string(&index).map_err(internal("json"))?;
    let kv = ctx.env.kv(KV).map_err(internal("the KV binding"))?;
    kv.put("latest", json).map_err(internal("KV"))?.execute().await.map_err(internal("KV"))?;
    json_response(&serde_json::json!({ "version": version }), 200)
}

/// The aggregator intake forwards to (`AGGREGATOR_URL`, e.g. `https://aggregator.example`).
fn aggregator(env: &Env) -> std::result::Result<String, EdgeError> {
    let url = env.var(AGGREGATOR).map(|v| v.to_string()).map_err(|_| EdgeError::new(503, "no_aggregator", format!("no {AGGREGATOR} is configured")))?;
    Ok(url.trim_end_matches('/').to_owned())
}

/// Sends `method path` with `body` to the aggregator and answers what it answered (status, body,
/// content type): its typed errors reach the device unchanged. 502 `upstream_unavailable` when
/// it cannot be reached.
async fn forward(env: &Env, method: worker::Method, path_and_query: &str, body: Option<Vec<u8>>, content_type: &str) -> Answer {
    let url = format!("{}{path_and_query}", aggregator(env)?);
    let headers = Headers::new();
    set(&headers, "content-type", content_type)?;
    let mut init = worker::RequestInit::new();
    init.with_method(method).with_headers(headers);
    if let Some(b) = body {
        init.with_body(Some(worker::js_sys::Uint8Array::from(b.as_slice()).into()));
    }
    let req = Request::new_with_init(&url, &init).map_err(internal("a request"))?;
    let mut res = worker::Fetch::Request(req).send().await.map_err(|e| EdgeError::new(502, "upstream_unavailable", format!("the aggregator: {e}")))?;
    let status = res.status_code();
    let kind = res.headers().get("content-type").map_err(internal("a header"))?.unwrap_or_else(|| "application/octet-stream".into());
    let retry = res.headers().get("retry-after").map_err(internal("a header"))?;
    let bytes = res.bytes().await.map_err(|e| EdgeError::new(502, "upstream_unavailable", format!("the aggregator's answer: {e}")))?;
    // Statuses without a body cannot be built with one (the runtime throws).
    let out = if matches!(status, 101 | 204 | 205 | 304) { Response::empty() } else { Response::from_bytes(bytes) };
    let out = out.map_err(internal("a response"))?.with_status(status);
    set(out.headers(), "content-type", &kind)?;
    set(out.headers(), "cache-control", "no-store")?;
    if let Some(r) = retry {
        set(out.headers(), "retry-after", &r)?;
    }
    Ok(out)
}

/// `POST /v1/rounds/:number/messages`: a device's secure-aggregation message, checked (size,
/// version, a client's kind), rate-limited per device (its place in the round), forwarded.
async fn intake_message(mut req: Request, ctx: Ctx) -> Answer {
    let round = crate::intake::parse_round(param(&ctx, "number")?)?;
    let ip = client_ip(&req);
    // Per address first, before the body is read: cycling the index in the message (which the
    // edge cannot authenticate) does not get past it.
    limit(&ctx.env, CLIENT_LIMIT, ip.clone(), "requests from this address").await?;
    let max = crate::intake::max_message(|n| ctx.env.var(n).ok().map(|v| v.to_string()));
    let bytes = body(&mut req, max).await?;
    let key = crate::intake::check_message(round, &bytes, max)?;
    // Then per device (its place in the round) from this address: a sender can only spend the
    // budget of the keys it sends from.
    limit(&ctx.env, INTAKE_LIMIT, format!("{ip}|{key}"), "messages from this device").await?;
    forward(&ctx.env, worker::Method::Post, &format!("/v1/rounds/{round}/messages"), Some(bytes), "application/octet-stream").await
}

/// `POST /v1/devices`: an enrollment (a public key and its proof), size-checked, forwarded.
async fn intake_enrollment(mut req: Request, ctx: Ctx) -> Answer {
    limit(&ctx.env, CLIENT_LIMIT, client_ip(&req), "requests from this address").await?;
    let bytes = body(&mut req, crate::intake::MAX_ENROLLMENT).await?;
    forward(&ctx.env, worker::Method::Post, "/v1/devices", Some(bytes), "application/json").await
}

/// `GET /v1/rounds/…`: what a device reads of a round (its invitation, the plan, the server's
/// requests, the round's status), forwarded with its query.
async fn intake_read(req: Request, ctx: Ctx) -> Answer {
    limit(&ctx.env, CLIENT_LIMIT, client_ip(&req), "requests from this address").await?;
    let url = req.url().map_err(internal("the URL"))?;
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    forward(&ctx.env, worker::Method::Get, &path, None, "application/octet-stream").await
}

/// `/v1/sync/:group…`: checked here (the group id, an envelope's declared size), then handed to
/// the group's `SyncRelay` object, which checks and stores what it is sent.
async fn relay(mut req: Request, ctx: Ctx) -> Result<Response> {
    let checked = async {
        let group = param(&ctx, "group")?.to_owned();
        crate::relay::parse_group(&group)?;
        limit(&ctx.env, CLIENT_LIMIT, client_ip(&req), "requests from this address").await?;
        if req.method() != worker::Method::Post {
            return Ok((group, None));
        }
        let limits = crate::relay::Limits::from_vars(|n| ctx.env.var(n).ok().map(|v| v.to_string()));
        Ok((group, Some(body(&mut req, limits.max_envelope).await?)))
    };
    let (group, envelope) = match checked.await {
        Ok(x) => x,
        Err(e) => return respond(Err(e)),
    };
    // The request as it came (the upgrade of the live socket included), with the sender's address
    // set here whatever the client put in that header, and a posted envelope as read here, within
    // the limit.
    let headers = Headers::new();
    for (name, value) in req.headers().entries() {
        if name != "x-hearth-client" {
            headers.set(&name, &value)?;
        }
    }
    headers.set("x-hearth-client", &client_ip(&req))?;
    let mut init = worker::RequestInit::new();
    init.with_method(req.method()).with_headers(headers);
    if let Some(bytes) = envelope {
        init.with_body(Some(worker::js_sys::Uint8Array::from(bytes.as_slice()).into()));
    }
    let stub = ctx.env.durable_object(RELAY)?.id_from_name(&group)?.get_stub()?;
    stub.fetch_with_request(Request::new_with_init(req.url()?.as_str(), &init)?).await
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> Result<Response> {
    Router::with_data(ctx)
        .get("/health", |_, _| Response::from_json(&super::health()))
        .get_async("/v1/models/latest", |_, ctx| async move { respond(latest(&ctx.env).await) })
        .get_async("/v1/models/:version/:file", |req, ctx| async move { respond(model_file(&req, &ctx).await) })
        .head_async("/v1/models/:version/:file", |req, ctx| async move { respond(model_file(&req, &ctx).await) })
        .put_async("/v1/admin/files/:sha256", |req, ctx| async move { respond(put_file(req, ctx).await) })
        .put_async("/v1/admin/versions/:version", |req, ctx| async move { respond(put_version(req, ctx).await) })
        .put_async("/v1/admin/latest", |req, ctx| async move { respond(put_latest(req, ctx).await) })
        .post_async("/v1/rounds/:number/messages", |req, ctx| async move { respond(intake_message(req, ctx).await) })
        .post_async("/v1/devices", |req, ctx| async move { respond(intake_enrollment(req, ctx).await) })
        .get_async("/v1/rounds/*rest", |req, ctx| async move { respond(intake_read(req, ctx).await) })
        .post_async("/v1/sync/:group", |req, ctx| async move { relay(req, ctx).await })
        .get_async("/v1/sync/:group", |req, ctx| async move { relay(req, ctx).await })
        .get_async("/v1/sync/:group/live", |req, ctx| async move { relay(req, ctx).await })
        .run(req, env)
        .await
}
