//! The web crate's JavaScript API in real Chromium (wasm-bindgen-test-runner + chromedriver, flags
//! in `webdriver.json`): open the committed model, record, recommend, seal and reopen; then move
//! the user tower and the catalog to WebGPU (SwiftShader) and check the GPU gives the CPU's
//! lists, and that the tower computes on WebGPU what it computes on the CPU.
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

/// The same recommendations: equal in everything but the raw score, which may differ in the last
/// bits when the user tower ran on the GPU (f32) rather than the CPU (f64 sums).
fn assert_same_list(gpu: &JsValue, cpu: &JsValue, what: &str) {
    let (gpu, cpu) = (js_sys::Array::from(gpu), js_sys::Array::from(cpu));
    assert_eq!(gpu.length(), cpu.length(), "{what}");
    for (a, b) in gpu.iter().zip(cpu.iter()) {
        for key in ["id", "title", "matchPercent", "reason", "becauseOf", "source"] {
            assert_eq!(json(&get(&a, key)), json(&get(&b, key)), "{what}: {key}");
        }
        let (x, y) = (get(&a, "score").as_f64().unwrap(), get(&b, "score").as_f64().unwrap());
        assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "{what}: score {x} vs {y}");
    }
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
        assert_same_list(&gpu, &h.recommend_cpu(opts(k, explore)).unwrap(), &format!("k {k} explore {explore}"));
    }
    assert_same_list(&JsFuture::from(h.recommend(opts(10, 0.0))).await.unwrap(), &before, "before and after enableGpu");
    // k = 100 needs more candidates than the GPU selects: scored on the CPU, still answered.
    let long = JsFuture::from(h.recommend(opts(100, 0.0))).await.unwrap();
    assert_eq!(js_sys::Array::from(&long).length(), 100);
}

/// The user tower's WGSL kernel on SwiftShader computes what the plain-Rust tower computes (which
/// equals burn's forward pass within 2.1e-6: `cargo test -p hearth-tests the_plain_rust`), for
/// random histories and profiles, out-of-range indices and a fine-tuning offset included.
#[wasm_bindgen_test]
async fn the_user_tower_on_webgpu_matches_the_cpu_tower() {
    use hearth_core::artifact::bundle::{ModelBundle, PersonInput, SERVED_ARCHITECTURE};
    use hearth_core::device::gpu::request_device;
    use hearth_core::device::tower::UserTower;
    use hearth_core::device::tower::gpu::GpuTower;
    let mut read = |name: &str| match name {
        "manifest.json" => Some(MANIFEST.to_vec()),
        "global.bin" => Some(GLOBAL.to_vec()),
        "catalog.json" => Some(CATALOG.to_vec()),
        _ => None,
    };
    let bundle = ModelBundle::from_files(SERVED_ARCHITECTURE, &mut read).unwrap();
    let cpu = UserTower::from_bundle(&bundle).unwrap();
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor { backends: wgpu::Backends::BROWSER_WEBGPU, ..wgpu::InstanceDescriptor::new_without_display_handle() });
    let (device, queue, _) = request_device(&instance).await.expect("a WebGPU adapter (SwiftShader with --enable-unsafe-webgpu)");
    let gpu = GpuTower::new(&device, &queue, &cpu).await.unwrap();
    let dims = cpu.dims();
    // xorshift: seeded, no dependency.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let mut worst = 0f32;
    for case in 0..120 {
        let len = next(70) as usize;
        let history = (0..len).map(|_| next(dims.items as u64 + 3) as u32).collect();
        let tags = (0..next(4)).map(|_| next(dims.user_tags as u64 + 2) as u32).collect();
        let input = PersonInput { history, tags };
        let offset: Option<Vec<f32>> = (case % 3 == 0).then(|| (0..dims.dim).map(|_| next(2001) as f32 / 1000.0 - 1.0).collect());
        let out = gpu.person_vector(&input, offset.as_deref()).await.unwrap();
        let mut expected = cpu.person_vector(&input);
        if let Some(o) = &offset {
            expected.iter_mut().zip(o).for_each(|(e, o)| *e += o);
        }
        let diff = out.user.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        worst = worst.max(diff);
        assert!(diff < 1e-5, "case {case}: max |diff| {diff}");
        assert_eq!(out.quantized.values.len(), dims.dim);
    }
    wasm_bindgen_test::console_log!("GPU tower (SwiftShader) vs CPU tower over 120 people: max |diff| {worst:e}");
}
