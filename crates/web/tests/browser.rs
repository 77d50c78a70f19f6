//! The web crate's JavaScript API in real Chromium (wasm-bindgen-test-runner + chromedriver, flags
//! in `webdriver.json`): open the committed model, record, recommend, seal and reopen; then move
//! the catalog to WebGPU (SwiftShader) and check the GPU gives the CPU's lists.
//!
//! `.ci/test` runs it: `CHROMEDRIVER=/usr/bin/chromedriver cargo test -p hearth-web
//! --target wasm32-unknown-unknown --test browser` with wasm-bindgen-test-runner as the runner.
#![cfg(target_family = "wasm")]

use hearth_web::Hearth;
use wasm_bindgen::JsValue;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

const MANIFEST: &[u8] = include_bytes!("../../../models/ml100k/manifest.json");
const GLOBAL: &[u8] = include_bytes!("../../../models/ml100k/global.bin");
const CATALOG: &[u8] = include_bytes!("../../../models/ml100k/catalog.json");
const SHARD: &[u8] = include_bytes!("../../../models/ml100k/items.shard");
/// Star Wars, Empire Strikes Back, Return of the Jedi, Raiders of the Lost Ark, The Terminator.
const LIKED: [&str; 5] = ["50", "172", "181", "174", "195"];

fn open(sealed: Option<Vec<u8>>) -> Result<Hearth, JsValue> {
    Hearth::open(MANIFEST, GLOBAL, CATALOG, SHARD, sealed, None, Some(vec![7; 32]), "browser", 1)
}

fn json(v: &JsValue) -> String {
    js_sys::JSON::stringify(v).map(String::from).unwrap_or_default()
}

fn opts(k: u32, explore: f64) -> JsValue {
    let o = js_sys::Object::new();
    js_sys::Reflect::set(&o, &"k".into(), &k.into()).unwrap();
    js_sys::Reflect::set(&o, &"explore".into(), &explore.into()).unwrap();
    o.into()
}

fn get(v: &JsValue, key: &str) -> JsValue {
    js_sys::Reflect::get(v, &key.into()).unwrap()
}

#[wasm_bindgen_test]
async fn record_recommend_seal_and_reopen() {
    let mut h = open(None).unwrap();
    for (t, id) in LIKED.iter().enumerate() {
        h.record(id, "rate", Some(5.0), 1_000.0 + t as f64, None).unwrap();
    }
    let recs = JsFuture::from(h.recommend(JsValue::UNDEFINED)).await.unwrap();
    let list = js_sys::Array::from(&recs);
    assert_eq!(list.length(), 10);
    let ids: Vec<String> = list.iter().map(|r| get(&r, "id").as_string().unwrap()).collect();
    assert!(ids.iter().all(|id| !LIKED.contains(&id.as_str())), "{ids:?}");
    let reasons = list.iter().filter(|r| get(r, "reason").as_string().unwrap().starts_with("Because you liked ")).count();
    assert!(reasons >= 8, "{}", json(&recs));
    assert_eq!(json(&h.recommend_cpu(JsValue::UNDEFINED).unwrap()), json(&recs));

    let sealed = h.sealed().unwrap();
    assert!(!sealed.windows(9).any(|w| w == b"Star Wars"));
    let again = open(Some(sealed.clone())).unwrap();
    assert_eq!(json(&again.history().unwrap()), json(&h.history().unwrap()));
    let wrong = Hearth::open(MANIFEST, GLOBAL, CATALOG, SHARD, Some(sealed), None, Some(vec![8; 32]), "browser", 1);
    let code = get(&wrong.err().expect("a wrong key is refused"), "code");
    assert_eq!(code.as_string().as_deref(), Some("wrong-key"));
    let bad = JsFuture::from(h.recommend(opts(0, 0.0))).await.expect_err("k = 0 is refused");
    assert_eq!(get(&bad, "code").as_string().as_deref(), Some("bad-input"));
}

#[wasm_bindgen_test]
async fn webgpu_scores_like_the_cpu() {
    let mut h = open(None).unwrap();
    for (t, id) in LIKED.iter().enumerate() {
        h.record(id, if t % 2 == 0 { "like" } else { "play" }, None, t as f64, None).unwrap();
    }
    let before = JsFuture::from(h.recommend(opts(10, 0.0))).await.unwrap();
    let info = JsFuture::from(h.enable_gpu()).await.expect("a WebGPU adapter (SwiftShader with --enable-unsafe-webgpu)");
    assert_eq!(get(&info, "backend").as_string().as_deref(), Some("webgpu"));
    assert_eq!(get(&info, "kernel").as_string().as_deref(), Some("packed"));
    let caps = h.capabilities().unwrap();
    assert_eq!(get(&caps, "scorer").as_string().as_deref(), Some("webgpu"));
    for (k, explore) in [(10, 0.0), (10, 0.1), (40, 0.0), (25, 0.3)] {
        let gpu = JsFuture::from(h.recommend(opts(k, explore))).await.unwrap();
        assert_eq!(js_sys::Array::from(&gpu).length(), k);
        assert_eq!(json(&gpu), json(&h.recommend_cpu(opts(k, explore)).unwrap()), "k {k} explore {explore}");
    }
    assert_eq!(json(&JsFuture::from(h.recommend(opts(10, 0.0))).await.unwrap()), json(&before));
    // k = 100 needs more candidates than the GPU selects: scored on the CPU, still answered.
    let long = JsFuture::from(h.recommend(opts(100, 0.0))).await.unwrap();
    assert_eq!(js_sys::Array::from(&long).length(), 100);
}
