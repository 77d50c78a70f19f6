//! hearth's training worker module: a second wasm module, loaded in a Web Worker only when there
//! is training to do, so burn (about 2 MB gzip with its WebGPU backend) stays out of the page's
//! first load. It fine-tunes the person's embedding ([`hearth_core::model::tune`]) on WebGPU when the
//! worker has an adapter, else on burn's CPU backend (ndarray), and returns the tuned vector and
//! the loss per step. Nothing leaves the device: the page hands it the catalog it already has,
//! the tower's vector and the positive items' indices, and stores the result sealed.
#![cfg_attr(not(target_family = "wasm"), allow(unused))]

#[cfg(target_family = "wasm")]
mod js {
    use burn::backend::wgpu::graphics::WebGpu;
    use burn::backend::wgpu::{WgpuDevice, init_setup_async};
    use burn::backend::{Autodiff, NdArray, Wgpu};
    use hearth_core::artifact::Link;
    use hearth_core::artifact::shard::CatalogShard;
    use hearth_core::model::tune::{TuneConfig, Tuned, fine_tune};
    use wasm_bindgen::prelude::*;

    #[wasm_bindgen(typescript_custom_section)]
    const TS: &'static str = r#"
/** Options of `fineTune`. */
export interface TuneOptions { backend: "webgpu" | "cpu"; steps?: number; seed?: number; /** The model's link (`trainingInput().link`); default "softplus". */ link?: "exp" | "softplus"; }
/** What `fineTune` returns. */
export interface TuneResult { backend: "webgpu" | "cpu"; vector: number[]; losses: number[]; ms: number; }
"#;

    thread_local! {
        static GPU_READY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    #[derive(serde::Deserialize)]
    struct Options {
        backend: String,
        steps: Option<usize>,
        seed: Option<u32>,
        link: Option<String>,
    }

    #[wasm_bindgen]
    extern "C" {
        #[wasm_bindgen(js_namespace = console, js_name = error)]
        fn console_error(s: &str);
    }

    /// A panic aborts the module (the size profile has `panic = "abort"`): say why on the
    /// console first, so the page's "training failed" has a cause to look up.
    fn report_panics() {
        std::panic::set_hook(Box::new(|info| console_error(&format!("hearth training worker: {info}"))));
    }

    fn err(msg: impl std::fmt::Display) -> JsValue {
        js_sys::Error::new(&msg.to_string()).into()
    }

    /// Fine-tunes `start` (the user tower's vector) on `positives` (catalog indices) against the
    /// catalog in `shard` (the served `items.shard`). `backend: "webgpu"` needs a WebGPU adapter
    /// in this worker (the caller checks `navigator.gpu.requestAdapter()` first).
    #[wasm_bindgen(js_name = fineTune, unchecked_return_type = "Promise<TuneResult>")]
    pub async fn fine_tune_js(
        shard: Vec<u8>,
        start: Vec<f32>,
        positives: Vec<u32>,
        #[wasm_bindgen(unchecked_param_type = "TuneOptions")] opts: JsValue,
    ) -> Result<JsValue, JsValue> {
        report_panics();
        let opts: Options = serde_wasm_bindgen::from_value(opts).map_err(err)?;
        let shard = CatalogShard::decode(&shard).map_err(err)?;
        let link = match opts.link.as_deref() {
            None => TuneConfig::default().link,
            Some(name) => name.parse::<Link>().map_err(err)?,
        };
        let cfg = TuneConfig { steps: opts.steps.unwrap_or(TuneConfig::default().steps).clamp(1, 1000), seed: u64::from(opts.seed.unwrap_or(0)), link, ..TuneConfig::default() };
        let t0 = js_sys::Date::now();
        let tuned: Tuned = match opts.backend.as_str() {
            "webgpu" => {
                let device = WgpuDevice::default();
                // The WebGPU runtime is set up once per worker (cubecl refuses a second setup).
                if !GPU_READY.get() {
                    init_setup_async::<WebGpu>(&device, Default::default()).await;
                    GPU_READY.set(true);
                }
                fine_tune::<Autodiff<Wgpu>>(shard.view(), &start, &positives, &cfg, &device).await
            }
            "cpu" => fine_tune::<Autodiff<NdArray>>(shard.view(), &start, &positives, &cfg, &Default::default()).await,
            other => return Err(err(format!("unknown backend {other:?} (webgpu or cpu)"))),
        }
        .map_err(err)?;
        let out = serde_json::json!({ "backend": opts.backend, "vector": tuned.vector, "losses": tuned.losses, "ms": js_sys::Date::now() - t0 });
        out.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).map_err(err)
    }

    use serde::Serialize;
}
