//! The aggregator server over real HTTP on 127.0.0.1, with SQLite: rounds that publish models and
//! keep the privacy ledger with devices running the real client code; every refusal in a table
//! with its status and code; `/metrics` and the OpenAPI document.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hearth_aggregator::serve::rounds::RoundConfig;
use hearth_aggregator::serve::{ServeConfig, start};
use hearth_aggregator::simulate::{Population, SimulateConfig, device_signing_seed, simulate};
use hearth_core::fed::plan::RoundPlan;
use hearth_core::secagg::client::Client;
use hearth_core::secagg::crypto;
use hearth_core::secagg::wire::{Advertise, ShareKeys};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn ml100k() -> PathBuf {
    std::env::var_os("HEARTH_ML100K").map_or_else(|| root().join("../shared/data/movielens-100k"), PathBuf::from)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hearth-serve-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(name: &str, devices: u32, round: RoundConfig) -> ServeConfig {
    ServeConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        data_dir: scratch(name),
        model: root().join("models/ml100k"),
        tick_ms: 50,
        round: RoundConfig { devices_per_round: devices, min_devices: devices, seed: Some(11), ..round },
        ..ServeConfig::default()
    }
}

fn population() -> Arc<Population> {
    let ds = hearth_aggregator::load_dataset(&ml100k(), None).expect("MovieLens 100K (set HEARTH_ML100K)");
    let split = hearth_aggregator::make_split(&ds, None).unwrap();
    let bundle = hearth_aggregator::read_model_dir(&root().join("models/ml100k")).unwrap();
    Arc::new(Population::new(&ds, &split, &bundle.catalog.popularity))
}

/// The sum of a metric's samples in a Prometheus text page.
fn sum_of(text: &str, name: &str) -> f64 {
    text.lines().filter(|l| l.starts_with(name) && !l.starts_with('#')).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// The server's metrics now, as a lookup.
async fn scrape(base: &str) -> impl Fn(&str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    move |name| sum_of(&text, name)
}

async fn get(url: &str) -> (u16, Value) {
    let res = reqwest::get(url).await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// The servers these tests start share the process's metrics recorder: one at a time, and the
/// rounds test counts from what it found.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quiet_stages_close_without_waiting_out_the_deadline() {
    let _alone = ONE_AT_A_TIME.lock().await;
    // A quarter of 16 devices drop before their masked input or before unmasking; the deadline is
    // a minute, the quiet time 400 ms: the round must end in seconds, with the dropouts out.
    let round = RoundConfig { min_survivors: 6, max_rounds: Some(1), stage_timeout_ms: 60_000, stage_quiet_ms: Some(400), budget_epsilon: None, ..RoundConfig::default() };
    let running = start(config("quiet", 16, round)).await.unwrap();
    let base = format!("http://{}", running.addr);
    let sim = SimulateConfig { servers: vec![base.clone()], users: (0..16).collect(), dropout: 0.25, drop_from: 2, seed: 5, rounds: 1, parallel_training: 2, updates: None };
    let t = std::time::Instant::now();
    let report = simulate(&sim, population(), |_| {}).await.unwrap();
    let r = &report.rounds[0];
    assert!(report.dropouts >= 1, "the seed must drop someone for this test to mean anything: {report:?}");
    assert_eq!(r.status, "done", "{r:?}");
    // The plan's fewest survivors is max(min_survivors, half the round) = 8.
    assert!((8..=16).contains(&r.survivors), "{r:?}");
    assert!(t.elapsed() < std::time::Duration::from_secs(30) && r.secs < 30.0, "the round waited out a deadline: {r:?}, {:?}", t.elapsed());
    eprintln!("{} dropouts; round done in {:.1} s with {} of 16 in the sum (deadline 60 s a stage)", report.dropouts, r.secs, r.survivors);
    // A quiet time that is not positive is refused at start.
    let bad = RoundConfig { stage_quiet_ms: Some(0), ..RoundConfig::default() };
    let err = start(config("quiet-bad", 16, bad)).await.err().expect("refused");
    assert!(err.to_string().contains("stage_quiet_ms = 0"), "{err}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rounds_over_http_publish_versions_keep_the_ledger_and_are_observable() {
    let _alone = ONE_AT_A_TIME.lock().await;
    // 16 devices, all invited, one in five dropping at a random stage, with noise: each round
    // either completes (a new version, a ledger entry) or aborts having unmasked nothing.
    let round = RoundConfig { min_survivors: 6, noise_multiplier: 0.8, max_rounds: Some(3), stage_timeout_ms: 4_000, budget_epsilon: None, ..RoundConfig::default() };
    let cfg = config("rounds", 16, round);
    let running = start(cfg).await.unwrap();
    let base = format!("http://{}", running.addr);
    let done_before = scrape(&base).await("hearth_rounds_total{status=\"done\"}");
    let sim = SimulateConfig { servers: vec![base.clone()], users: (0..16).collect(), dropout: 0.2, drop_from: 0, seed: 3, rounds: 3, parallel_training: 2, updates: None };
    let report = simulate(&sim, population(), |_| {}).await.unwrap();
    assert_eq!(report.rounds.len(), 3);
    let done: Vec<_> = report.rounds.iter().filter(|r| r.status == "done").collect();
    assert!(!done.is_empty(), "no round completed: {:?}", report.rounds);
    for r in &report.rounds {
        assert!(r.status == "done" || r.status == "aborted", "{r:?}");
        if r.status == "done" {
            assert!(r.survivors >= 6 && r.survivors + r.dropped <= r.invited, "{r:?}");
        }
    }
    // Versions: the base (1), then one per completed round, `latest` on the last.
    let (s, latest) = get(&format!("{base}/v1/models/latest")).await;
    assert_eq!(s, 200);
    assert_eq!(latest["version"], done.last().unwrap().published.unwrap());
    for name in ["manifest.json", "global.bin", "catalog.json", "items.shard"] {
        assert!(latest["files"][name].is_string(), "{latest}");
    }
    assert!(latest["files"].get("personal.bin").is_none() && latest["files"].get("users.json").is_none(), "training users' data is never published");
    let res = reqwest::get(format!("{base}/v1/models/{}/manifest.json", latest["version"])).await.unwrap();
    assert_eq!(res.headers()["cache-control"], "public, max-age=31536000, immutable");
    let manifest: Value = res.json().await.unwrap();
    assert_eq!(manifest["model_version"], latest["version"]);
    // The ledger: one entry per completed round, ε growing.
    let (_, ledger) = get(&format!("{base}/v1/ledger")).await;
    let entries = ledger["entries"].as_array().unwrap();
    assert_eq!(entries.len(), done.len());
    let mut last = 0.0;
    for (e, r) in entries.iter().zip(&done) {
        let total = e["epsilon_total"].as_f64().unwrap();
        assert!(total > last && e["epsilon_round"].as_f64().unwrap() <= total + 1e-9, "{e}");
        assert_eq!(Some(total), r.epsilon);
        last = total;
    }
    // Metrics, scraped.
    let text = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    let metric = |name: &str| sum_of(&text, name);
    assert_eq!(metric("hearth_rounds_total{status=\"done\"}") - done_before, done.len() as f64, "{text}");
    assert!(metric("hearth_messages_total") >= 16.0);
    assert!(metric("hearth_devices_enrolled_total") >= 16.0);
    assert!((metric("hearth_epsilon_spent") - last).abs() < 1e-9, "{text}");
    for name in ["hearth_http_requests_total", "hearth_http_seconds", "hearth_stage_seconds", "hearth_message_bytes_total", "hearth_model_version", "hearth_dropouts_total"] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    // Health.
    let (s, health) = get(&format!("{base}/health")).await;
    assert_eq!(s, 200);
    assert_eq!(health["store"], "sqlite");
    assert_eq!(health["model_version"], latest["version"]);
    // The OpenAPI document lists every route the server answers.
    let (_, doc) = get(&format!("{base}/openapi.json")).await;
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/devices",
        "/v1/rounds/current",
        "/v1/rounds/{number}",
        "/v1/rounds/{number}/plan",
        "/v1/rounds/{number}/participants/{device}",
        "/v1/rounds/{number}/messages",
        "/v1/rounds/{number}/requests/{index}",
        "/v1/models/latest",
        "/v1/models/{version}/{file}",
        "/v1/ledger",
        "/health",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(paths.contains_key(p), "{p} missing from the OpenAPI document");
    }
    assert_eq!(paths.len(), 13, "a route the test does not know: {:?}", paths.keys().collect::<Vec<_>>());
    running.shutdown().await;
}

/// A device of the bad-input test: its key, enrollment and id.
struct TestDevice {
    pair: ring::signature::Ed25519KeyPair,
    public: [u8; 32],
    seed: [u8; 32],
    id: i64,
}

async fn enroll(http: &reqwest::Client, base: &str, seed: [u8; 32]) -> TestDevice {
    let (pair, public) = crypto::signing_key(&seed).unwrap();
    let proof = pair.sign(&hearth_aggregator::serve::api::enrollment_message(&public));
    let hex = hearth_core::data::hex;
    let body = serde_json::json!({ "public_key": hex(&public), "proof": hex(proof.as_ref()) });
    let res = http.post(format!("{base}/v1/devices")).json(&body).send().await.unwrap();
    assert_eq!(res.status(), 201);
    let id = res.json::<Value>().await.unwrap()["device_id"].as_i64().unwrap();
    TestDevice { pair, public, seed, id }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_bad_request_gets_its_status_and_code() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let round = RoundConfig { min_survivors: 2, max_rounds: Some(1), stage_timeout_ms: 2_500, ..RoundConfig::default() };
    let mut cfg = config("bad", 3, round);
    cfg.device_rate = 20.0;
    cfg.device_burst = 20.0;
    let running = start(cfg).await.unwrap();
    let base = format!("http://{}", running.addr);
    let http = reqwest::Client::new();
    let hex = hearth_core::data::hex;
    let mut devices = vec![];
    for u in 0..3 {
        devices.push(enroll(&http, &base, device_signing_seed(5, u)).await);
    }
    // The round opens once the three are enrolled; all three are invited (rate 1).
    let (s, view) = get(&format!("{base}/v1/rounds/current?after=0&wait_ms=10000")).await;
    assert_eq!(s, 200, "{view}");
    let number = view["number"].as_i64().unwrap();
    let plan = RoundPlan::decode(&reqwest::get(format!("{base}/v1/rounds/{number}/plan")).await.unwrap().bytes().await.unwrap()).unwrap();
    let mut index = vec![];
    for d in &devices {
        let (s, inv) = get(&format!("{base}/v1/rounds/{number}/participants/{}", d.id)).await;
        assert_eq!(s, 200);
        index.push(inv["index"].as_u64().unwrap() as u32);
    }
    let advert = |k: usize, rng: u8| Client::new(plan.secagg.clone(), index[k], devices[k].seed, [rng; 32]).unwrap();
    let (_, a0) = advert(0, 1);
    let (_, a0_other) = advert(0, 2);
    let (_, a1) = advert(1, 1);
    let mut other_version = a1.clone();
    other_version[8] = 9;
    let wrong_round = Advertise { round: [0xee; 16], index: index[1], seal_key: [1; 32], mask_key: [2; 32] }.encode(&devices[1].pair);
    let stranger = Advertise { round: plan.secagg.round, index: 999, seal_key: [1; 32], mask_key: [2; 32] }.encode(&devices[1].pair);
    let forged = Advertise { round: plan.secagg.round, index: index[2], seal_key: [1; 32], mask_key: [2; 32] }.encode(&devices[1].pair);
    let early = ShareKeys { round: plan.secagg.round, index: index[1], commitment: [0; 32], sealed: vec![] }.encode(&devices[1].pair);
    let short_input = hearth_core::secagg::wire::MaskedInput { round: plan.secagg.round, index: index[1], words: vec![1, 2, 3] }.encode(&devices[1].pair);
    let huge = vec![0u8; 400 << 10];
    let post = |path: String, body: Vec<u8>| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let res = http.post(format!("{base}{path}")).header("content-type", "application/octet-stream").body(body).send().await.unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let msgs = format!("/v1/rounds/{number}/messages");
    // (what, status, code) in order: the accepted advertisement of device 0 comes before the
    // cases that need it.
    let mut table: Vec<(&str, u16, Value)> = vec![];
    let mut check = |what: &'static str, want: (u16, &str), got: (u16, Value)| {
        let code = got.1["error"]["code"].as_str().map(str::to_owned).or_else(|| got.1["status"].as_str().map(str::to_owned)).unwrap_or_default();
        assert_eq!((got.0, code.as_str()), want, "{what}: {}", got.1);
        table.push((what, got.0, Value::String(code)));
    };
    check("garbage bytes", (400, "malformed"), post(msgs.clone(), b"not a message".to_vec()).await);
    check("unknown message version", (400, "unsupported_version"), post(msgs.clone(), other_version).await);
    check("a server's message posted", (400, "malformed"), post(msgs.clone(), plan.encode()).await);
    check("body over the limit", (413, "too_large"), post(msgs.clone(), huge).await);
    check("round that does not exist", (404, "no_round"), post("/v1/rounds/999/messages".into(), a1.clone()).await);
    check("message of another round", (409, "wrong_round"), post(msgs.clone(), wrong_round).await);
    check("client index not in the round", (403, "unknown_client"), post(msgs.clone(), stranger).await);
    check("signed by another device", (401, "bad_signature"), post(msgs.clone(), forged).await);
    check("a later stage before being asked", (409, "not_asked"), post(msgs.clone(), early).await);
    check("masked input of the wrong length", (400, "malformed"), post(msgs.clone(), short_input).await);
    check("first advertisement", (202, "accepted"), post(msgs.clone(), a0.clone()).await);
    check("the same bytes again (a retry)", (200, "already_accepted"), post(msgs.clone(), a0.clone()).await);
    check("other bytes for the same stage (a replay)", (409, "duplicate"), post(msgs.clone(), a0_other).await);
    // Device 2 never advertises: the stage closes at its deadline with devices 0 and 1.
    check("second advertisement", (202, "accepted"), post(msgs.clone(), a1).await);
    check("request before its stage opened", (425, "not_yet"), {
        let (s, v) = get(&format!("{base}/v1/rounds/{number}/requests/{}?stage=3", index[0])).await;
        (s, v)
    });
    // Wait for share keys: device 2 is not asked.
    let (s, _) = get(&format!("{base}/v1/rounds/{number}/requests/{}?stage=1&wait_ms=10000", index[0])).await;
    assert_eq!(s, 200);
    let (_, late) = advert(2, 1);
    check("advertisement after its stage closed", (409, "wrong_stage"), post(msgs.clone(), late).await);
    check("request of a client that was not asked", (404, "not_asked"), get(&format!("{base}/v1/rounds/{number}/requests/{}?stage=1", index[2])).await);
    check("request without a stage", (400, "malformed"), get(&format!("{base}/v1/rounds/{number}/requests/{}", index[0])).await);
    check("device not invited", (404, "not_invited"), {
        let d = enroll(&http, &base, [99; 32]).await;
        get(&format!("{base}/v1/rounds/{number}/participants/{}", d.id)).await
    });
    check("device never enrolled", (404, "unknown_device"), get(&format!("{base}/v1/rounds/{number}/participants/424242")).await);
    // Enrollment.
    let enroll_with = |body: Value| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let res = http.post(format!("{base}/v1/devices")).json(&body).send().await.unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    check("enrollment that is not JSON", (400, "malformed"), post("/v1/devices".into(), b"{".to_vec()).await);
    check("enrollment with a short key", (400, "malformed"), enroll_with(serde_json::json!({"public_key": "abcd", "proof": "00"})).await);
    check("enrollment with a wrong proof", (401, "bad_signature"), enroll_with(serde_json::json!({"public_key": hex(&devices[0].public), "proof": hex(&[0u8; 64])})).await);
    // Models.
    check("model version never published", (404, "no_version"), get(&format!("{base}/v1/models/99/global.bin")).await);
    check("file that is not published", (404, "no_file"), get(&format!("{base}/v1/models/1/personal.bin")).await);
    check("no such route", (404, "no_route"), get(&format!("{base}/v2/anything")).await);
    // A device over its rate: 20 a second, burst 20.
    let mut limited = None;
    for _ in 0..40 {
        let got = get(&format!("{base}/v1/rounds/{number}/requests/{}?stage=1", index[1])).await;
        if got.0 == 429 {
            limited = Some(got);
            break;
        }
    }
    check("requests over the device's rate", (429, "rate_limited"), limited.expect("no 429 within 40 requests"));
    // After the round: it ended (device 2 and the others' silence abort or complete it).
    let (_, end) = get(&format!("{base}/v1/rounds/{number}")).await;
    let mut end = end;
    for _ in 0..100 {
        if end["status"] != "open" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        end = get(&format!("{base}/v1/rounds/{number}")).await.1;
    }
    assert_ne!(end["status"], "open", "{end}");
    let (_, a1_again) = advert(1, 7);
    check("message after the round ended", (410, "round_closed"), post(msgs.clone(), a1_again).await);
    println!("| request | status | code |\n|---|---|---|");
    for (what, status, code) in &table {
        println!("| {what} | {status} | {} |", code.as_str().unwrap_or(""));
    }
    running.shutdown().await;
}
