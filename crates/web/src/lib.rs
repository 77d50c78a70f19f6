//! hearth-web: hearth in the browser, bindings only. The logic is `hearth_core::device::session`
//! (tested natively there); this file binds it to JavaScript with wasm-bindgen (exports exist only
//! on wasm32) and adds what only a page has: the WebGPU device the tower and the scan run on.
//!
//! The page loads the model's `manifest.json`, `global.bin`, `catalog.json` and `items.shard`
//! (never `personal.bin`: the training users' vectors), the person's sealed history from
//! IndexedDB, and calls `Hearth`'s methods (a `Session`'s); errors reach JavaScript as `Error`s
//! with a stable `code` (`SessionError::code`, and `gpu` when WebGPU refuses the scorer).
//!
//! ```
//! let summary = hearth_web::dataset_summary(b"user,item\nme,a\nme,b\n").unwrap();
//! assert!(summary.contains("\"items\":2"));
//! ```

#[cfg(target_family = "wasm")]
use wasm_bindgen::prelude::wasm_bindgen;

/// hearth's version.
#[cfg_attr(target_family = "wasm", wasm_bindgen)]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}

/// Parses a CSV of interactions (`user,item[,rating][,timestamp]`) and returns a JSON summary
/// `{"users":…, "items":…, "interactions":…}`, or the parse error (naming the line).
#[cfg_attr(target_family = "wasm", wasm_bindgen(js_name = datasetSummary))]
pub fn dataset_summary(csv: &[u8]) -> Result<String, String> {
    let ds = hearth_core::data::Dataset::from_csv("input.csv", csv, None).map_err(|e| e.to_string())?;
    Ok(serde_json::json!({
        "users": ds.users.len(),
        "items": ds.items.len(),
        "interactions": ds.interactions.len(),
    })
    .to_string())
}

#[cfg(target_family = "wasm")]
pub use js::{Hearth, HearthModel};

#[cfg(target_family = "wasm")]
mod js {
    use std::cell::RefCell;
    use std::rc::Rc;

    use hearth_core::device::gpu::request_device;
    use hearth_core::device::score::gpu::{GpuScorer, Kernel, MAX_GPU_K};
    use hearth_core::device::tower::gpu::GpuTower;
    use wasm_bindgen::prelude::*;

    use hearth_core::device::session::{ModelFiles, Query, RecommendOptions, Secret, ServedModel, Session, SessionError};
    use hearth_core::person::store::Generations;

    #[wasm_bindgen(typescript_custom_section)]
    const TS: &'static str = r#"
/** Options of `Hearth.recommend`. */
export interface RecommendOptions { k?: number; exclude?: string[]; diversity?: number; explore?: number;
  /** ISO 3166-1 alpha-2; items whose rights do not allow it are left out. */ territory?: string;
  /** ms since 1970 (Date.now()); items outside their availability window are left out. */ now?: number;
  /** e.g. "stream", "download", "remix". */ usage?: string; /** default 0.6 */ minTrust?: number; }
/** One recommendation. */
export interface Recommendation {
  id: string; title: string; matchPercent: number; score: number; reason: string;
  becauseOf: string | null; source: "personal" | "popular" | "both" | "explore";
}
/** One item of the person's history. */
export interface HistoryItem { id: string; title: string; last: number; counts: Record<string, number>; rating: number | null; }
/** A catalog search result. */
export interface Found { id: string; title: string; }
/** What this page scores with. */
export interface Capabilities { modelVersion: number; items: number; dim: number; scorer: string; gpu: GpuInfo | null; tuned: TunedInfo | null; /** The model version of a fine-tuning made for another model, set aside when the history opened. */ droppedTuning: number | null; }
/** The stored fine-tuning: how many positives it learned from and the size of its offset. */
export interface TunedInfo { positives: number; norm: number; }
/** What the training worker fine-tunes. */
export interface TrainingInput { start: Float32Array; positives: Uint32Array; /** The link the model was trained with: pass it to `fineTune`. */ link: "exp" | "softplus"; }
/** What a save writes (core's two-generation rule): both in one transaction, then `previous` is dropped once `current` reads back. */
export interface SavePlan { current: Uint8Array; previous: Uint8Array | null; }
/** The WebGPU adapter the catalog scorer runs on. */
export interface GpuInfo { adapter: string; backend: string; kernel: "packed" | "unpacked"; }
"#;

    fn coded(message: &str, code: &str) -> JsValue {
        let err = js_sys::Error::new(message);
        let _ = js_sys::Reflect::set(&err, &"code".into(), &code.into());
        err.into()
    }

    fn js_err(e: SessionError) -> JsValue {
        coded(&e.to_string(), e.code())
    }

    fn to_js<T: serde::Serialize>(v: &T) -> Result<JsValue, JsValue> {
        v.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).map_err(|e| js_err(SessionError::BadInput(e.to_string())))
    }

    /// The user tower and the catalog resident on the page's WebGPU device.
    struct Gpu {
        tower: GpuTower,
        scorer: GpuScorer,
        info: serde_json::Value,
    }

    /// One person's hearth in the page. Scoring runs on the CPU (wasm SIMD) until
    /// [`Hearth::enable_gpu`] has put the catalog on a WebGPU device; then on the GPU, with the
    /// same results (the GPU's int8 hits equal the CPU's, and re-ranking is shared).
    #[wasm_bindgen]
    pub struct Hearth {
        engine: Rc<RefCell<Session>>,
        gpu: Rc<RefCell<Option<Rc<Gpu>>>>,
        /// The page timed both scorers and the CPU was faster: `recommend` stays on it.
        use_cpu: Rc<std::cell::Cell<bool>>,
    }

    impl Hearth {
        fn new(engine: Session) -> Hearth {
            Hearth { engine: Rc::new(RefCell::new(engine)), gpu: Rc::default(), use_cpu: Rc::default() }
        }
    }

    fn derived_secret(key: Vec<u8>, iterations: u32, salt: Vec<u8>) -> Result<Secret<'static>, JsValue> {
        let bad = |what: &str| js_err(SessionError::BadInput(format!("{what} has the wrong length")));
        Ok(Secret::Derived { key: key.try_into().map_err(|_| bad("the derived key"))?, iterations, salt: salt.try_into().map_err(|_| bad("the salt"))? })
    }

    fn parse_opts(opts: JsValue) -> Result<RecommendOptions, JsValue> {
        if opts.is_undefined() || opts.is_null() {
            Ok(RecommendOptions::default())
        } else {
            serde_wasm_bindgen::from_value(opts).map_err(|e| js_err(SessionError::BadInput(e.to_string())))
        }
    }

    /// The GPU half of a recommendation: the user tower and the int8 scan on the device (one
    /// submission, one read-back), then the CPU's re-rank with the tower's vector and ranking.
    /// `None` when the device failed (the caller falls back to the CPU).
    async fn recommend_on(gpu: &Gpu, engine: &RefCell<Session>, query: &Query, opts: &RecommendOptions) -> Option<Result<JsValue, JsValue>> {
        let (out, hits) = gpu.scorer.top_k_for(&gpu.tower, query.input(), query.offset(), query.candidates()).await.ok()?;
        let engine = engine.borrow();
        let personal = engine.refine(query, &out.user, &hits);
        Some(engine.rank(query, &out.user, opts, &personal).map_err(js_err).and_then(|r| to_js(&r)))
    }

    /// A model loaded and verified, ready for [`Hearth::open_derived_with`]. It does not depend on
    /// the person's key: a page loads it while WebCrypto derives the key, and keeps it across
    /// unlock attempts.
    #[wasm_bindgen]
    pub struct HearthModel {
        model: Rc<ServedModel>,
    }

    #[wasm_bindgen]
    impl HearthModel {
        /// Verifies and loads the model's files (errors: code `model`, `shard`, `model-version`).
        pub fn load(manifest: &[u8], global: &[u8], catalog: &[u8], shard: &[u8]) -> Result<HearthModel, JsValue> {
            let files = ModelFiles { manifest, global, catalog, shard };
            ServedModel::load(&files).map(|m| HearthModel { model: Rc::new(m) }).map_err(js_err)
        }
    }

    #[wasm_bindgen]
    impl Hearth {
        /// Opens the person's sealed history (`undefined` for a new person) with a loaded model and
        /// a passphrase key the page derived with WebCrypto (see [`Hearth::open_derived`]).
        #[allow(clippy::too_many_arguments)]
        #[wasm_bindgen(js_name = openDerivedWith)]
        pub fn open_derived_with(
            model: &HearthModel,
            sealed: Option<Vec<u8>>,
            key: Vec<u8>,
            iterations: u32,
            salt: Vec<u8>,
            device: &str,
            seed: u32,
        ) -> Result<Hearth, JsValue> {
            let secret = derived_secret(key, iterations, salt)?;
            Session::open_with(model.model.clone(), sealed.as_deref(), secret, device, u64::from(seed)).map(Hearth::new).map_err(js_err)
        }

        /// Opens the model and the person's sealed history (`undefined` for a new person), keyed
        /// by a passphrase or a 32-byte device key.
        #[allow(clippy::too_many_arguments)]
        pub fn open(
            manifest: &[u8],
            global: &[u8],
            catalog: &[u8],
            shard: &[u8],
            sealed: Option<Vec<u8>>,
            passphrase: Option<String>,
            device_key: Option<Vec<u8>>,
            device: &str,
            seed: u32,
        ) -> Result<Hearth, JsValue> {
            let secret = match (&passphrase, device_key) {
                (Some(p), _) => Secret::Passphrase(p),
                (None, Some(k)) => Secret::DeviceKey(
                    k.try_into().map_err(|_| js_err(SessionError::BadInput("a device key is 32 bytes".into())))?,
                ),
                (None, None) => return Err(js_err(SessionError::BadInput("a passphrase or a device key is needed".into()))),
            };
            let files = ModelFiles { manifest, global, catalog, shard };
            Session::open(&files, sealed.as_deref(), secret, device, u64::from(seed)).map(Hearth::new).map_err(js_err)
        }

        /// Opens with a passphrase key the page derived itself with WebCrypto's
        /// PBKDF2-HMAC-SHA256 (`iterations`, `salt`: from [`Hearth::kdf_params`] of the sealed
        /// history, or [`Hearth::new_kdf_params`] for a new one).
        #[allow(clippy::too_many_arguments)]
        #[wasm_bindgen(js_name = openDerived)]
        pub fn open_derived(
            manifest: &[u8],
            global: &[u8],
            catalog: &[u8],
            shard: &[u8],
            sealed: Option<Vec<u8>>,
            key: Vec<u8>,
            iterations: u32,
            salt: Vec<u8>,
            device: &str,
            seed: u32,
        ) -> Result<Hearth, JsValue> {
            let model = HearthModel::load(manifest, global, catalog, shard)?;
            Hearth::open_derived_with(&model, sealed, key, iterations, salt, device, seed)
        }

        /// `{iterations, salt}` of a sealed history's passphrase key, or `null` for a device key.
        #[wasm_bindgen(js_name = kdfParams)]
        pub fn kdf_params(sealed: &[u8]) -> Result<JsValue, JsValue> {
            let bad = |e: hearth_core::person::vault::VaultError| js_err(SessionError::Damaged(e.to_string()));
            match hearth_core::person::vault::kdf_params(sealed).map_err(bad)? {
                Some((iterations, salt)) => to_js(&serde_json::json!({"iterations": iterations, "salt": salt.to_vec()})),
                None => Ok(JsValue::NULL),
            }
        }

        /// Fresh `{iterations, salt}` for a new passphrase key (current OWASP iteration count).
        #[wasm_bindgen(js_name = newKdfParams)]
        pub fn new_kdf_params() -> Result<JsValue, JsValue> {
            let salt = hearth_core::person::vault::new_salt().map_err(|e| js_err(SessionError::BadInput(e.to_string())))?;
            to_js(&serde_json::json!({"iterations": hearth_core::person::vault::PBKDF2_ITERATIONS, "salt": salt.to_vec()}))
        }

        /// Records an event; returns its id.
        pub fn record(&mut self, item: &str, kind: &str, value: Option<f64>, ts: f64, hour: Option<u8>) -> Result<String, JsValue> {
            self.engine.borrow_mut().record(item, kind, value, ts as i64, hour).map_err(js_err)
        }

        /// Puts the user tower and the catalog on the browser's WebGPU device (the adapter's own
        /// limits, the packed int8 dot product when the adapter has it). Resolves to the adapter's
        /// description; rejects (code `gpu`) when there is no WebGPU adapter, and recommendations
        /// stay on the CPU.
        #[wasm_bindgen(js_name = enableGpu, unchecked_return_type = "Promise<GpuInfo>")]
        pub fn enable_gpu(&self) -> js_sys::Promise {
            let (engine, slot) = (self.engine.clone(), self.gpu.clone());
            wasm_bindgen_futures::future_to_promise(async move {
                let gpu_err = |e: hearth_core::device::gpu::GpuError| coded(&format!("WebGPU is not available: {e}"), "gpu");
                let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
                    backends: wgpu::Backends::BROWSER_WEBGPU,
                    ..wgpu::InstanceDescriptor::new_without_display_handle()
                });
                let kernel = Kernel::best_for(&instance);
                let (device, queue, info) = request_device(&instance).await.map_err(gpu_err)?;
                // The model is shared, not borrowed from the engine: no borrow of it lives across an await.
                let model = engine.borrow().model().clone();
                let scorer = GpuScorer::new(&device, &queue, model.catalog_view(), kernel).await.map_err(gpu_err)?;
                let tower = GpuTower::new(&device, &queue, model.tower()).await.map_err(gpu_err)?;
                let info = serde_json::json!({
                    "adapter": if info.name.is_empty() { format!("{} {}", info.driver, info.driver_info).trim().to_owned() } else { info.name.clone() },
                    "backend": info.backend.to_str(),
                    "kernel": match kernel { Kernel::Packed => "packed", Kernel::Unpacked => "unpacked" },
                });
                let out = to_js(&info)?;
                *slot.borrow_mut() = Some(Rc::new(Gpu { tower, scorer, info }));
                Ok(out)
            })
        }

        /// Recommendations now: on the GPU once [`Hearth::enable_gpu`] succeeded and unless the
        /// page chose the CPU ([`Hearth::use_scorer`]; the lists are the same, only the speed
        /// differs), falling back to the CPU for good if the device fails; on the CPU otherwise.
        #[wasm_bindgen(unchecked_return_type = "Promise<Recommendation[]>")]
        pub fn recommend(&self, #[wasm_bindgen(unchecked_param_type = "RecommendOptions | undefined")] opts: JsValue) -> js_sys::Promise {
            let gpu = self.gpu.borrow().clone().filter(|_| !self.use_cpu.get());
            self.recommend_with(gpu, opts)
        }

        /// Recommendations scored on the WebGPU device whichever scorer is chosen (to time or
        /// compare it); rejects (code `gpu`) before [`Hearth::enable_gpu`] succeeded.
        #[wasm_bindgen(js_name = recommendGpu, unchecked_return_type = "Promise<Recommendation[]>")]
        pub fn recommend_gpu(&self, #[wasm_bindgen(unchecked_param_type = "RecommendOptions | undefined")] opts: JsValue) -> js_sys::Promise {
            match self.gpu.borrow().clone() {
                Some(gpu) => self.recommend_with(Some(gpu), opts),
                None => js_sys::Promise::reject(&coded("WebGPU is not enabled", "gpu")),
            }
        }

        /// Chooses the scorer `recommend` uses: `"webgpu"` (needs [`Hearth::enable_gpu`]) or
        /// `"cpu"`.
        #[wasm_bindgen(js_name = useScorer)]
        pub fn use_scorer(&self, scorer: &str) -> Result<(), JsValue> {
            match scorer {
                "cpu" => self.use_cpu.set(true),
                "webgpu" if self.gpu.borrow().is_some() => self.use_cpu.set(false),
                "webgpu" => return Err(coded("WebGPU is not enabled", "gpu")),
                other => return Err(js_err(SessionError::BadInput(format!("unknown scorer {other:?} (webgpu or cpu)")))),
            }
            Ok(())
        }

        /// Recommendations now, computed on the CPU whatever the GPU state (synchronous).
        #[wasm_bindgen(js_name = recommendCpu, unchecked_return_type = "Recommendation[]")]
        pub fn recommend_cpu(&self, #[wasm_bindgen(unchecked_param_type = "RecommendOptions | undefined")] opts: JsValue) -> Result<JsValue, JsValue> {
            self.cpu_recommend(&parse_opts(opts)?)
        }

        /// The history, most recent first.
        #[wasm_bindgen(unchecked_return_type = "HistoryItem[]")]
        pub fn history(&self) -> Result<JsValue, JsValue> {
            to_js(&self.engine.borrow().history())
        }

        /// Catalog search by title.
        #[wasm_bindgen(unchecked_return_type = "Found[]")]
        pub fn search(&self, query: &str, limit: usize) -> Result<JsValue, JsValue> {
            to_js(&self.engine.borrow().search(query, limit))
        }

        /// Forgets an item everywhere.
        pub fn forget(&mut self, item: &str, now: f64) -> Result<(), JsValue> {
            self.engine.borrow_mut().forget(item, now as i64).map_err(js_err)
        }

        /// Deletes the whole history.
        pub fn wipe(&mut self, now: f64) -> Result<(), JsValue> {
            self.engine.borrow_mut().wipe(now as i64).map_err(js_err)
        }

        /// The history sealed for storage.
        pub fn sealed(&mut self) -> Result<Vec<u8>, JsValue> {
            self.engine.borrow_mut().sealed().map_err(js_err)
        }

        /// What to store for a save, decided by core's two-generation rule over what IndexedDB
        /// holds now: `{current, previous}` (`previous` may be null). Write both in one
        /// transaction, read `current` back, then drop `previous`.
        #[wasm_bindgen(js_name = savePlan, unchecked_return_type = "SavePlan")]
        pub fn save_plan(&self, current: Option<Vec<u8>>, previous: Option<Vec<u8>>) -> Result<JsValue, JsValue> {
            let plan = self.engine.borrow_mut().save_plan(Generations { current, previous }).map_err(js_err)?;
            let out = js_sys::Object::new();
            let bytes = |b: Option<Vec<u8>>| b.map_or(JsValue::NULL, |b| js_sys::Uint8Array::from(&b[..]).into());
            let _ = js_sys::Reflect::set(&out, &"current".into(), &bytes(plan.current));
            let _ = js_sys::Reflect::set(&out, &"previous".into(), &bytes(plan.previous));
            Ok(out.into())
        }

        /// `{modelVersion, items, dim, scorer, gpu, tuned, droppedTuning}`: `scorer` is `webgpu`
        /// once the catalog is on the GPU, else the CPU kernel (`wasm-simd128`); `droppedTuning`
        /// the model version of a fine-tuning offset set aside at open (made for another model).
        #[wasm_bindgen(unchecked_return_type = "Capabilities")]
        pub fn capabilities(&self) -> Result<JsValue, JsValue> {
            let (v, n, d) = self.engine.borrow().model_info();
            let gpu = self.gpu.borrow().as_ref().map(|g| g.info.clone());
            let cpu = if cfg!(target_feature = "simd128") { "wasm-simd128" } else { "portable" };
            let scorer = if gpu.is_some() && !self.use_cpu.get() { "webgpu" } else { cpu };
            let tuned = self.engine.borrow().tuning().map(|(p, norm)| serde_json::json!({"positives": p, "norm": norm}));
            let dropped = self.engine.borrow().dropped_tuning();
            to_js(&serde_json::json!({"modelVersion": v, "items": n, "dim": d, "scorer": scorer, "gpu": gpu, "tuned": tuned, "droppedTuning": dropped}))
        }

        /// `{start, positives}` for the training worker (the tower's vector for the history now
        /// and the positive items' catalog indices), or `null` without positives.
        #[wasm_bindgen(js_name = trainingInput, unchecked_return_type = "TrainingInput | null")]
        pub fn training_input(&self) -> JsValue {
            match self.engine.borrow().training_input() {
                Some(t) => {
                    let out = js_sys::Object::new();
                    let _ = js_sys::Reflect::set(&out, &"start".into(), &js_sys::Float32Array::from(&t.start[..]));
                    let _ = js_sys::Reflect::set(&out, &"positives".into(), &js_sys::Uint32Array::from(&t.positives[..]));
                    let _ = js_sys::Reflect::set(&out, &"link".into(), &t.link.name().into());
                    out.into()
                }
                None => JsValue::NULL,
            }
        }

        /// Stores the worker's tuned vector (trained from `start` on `positives` items); from now
        /// on recommendations use it. Saved with the history.
        #[wasm_bindgen(js_name = setTuned)]
        pub fn set_tuned(&mut self, start: &[f32], tuned: &[f32], positives: u32) -> Result<(), JsValue> {
            self.engine.borrow_mut().set_tuned(start, tuned, positives).map_err(js_err)
        }
    }

    impl Hearth {
        fn recommend_with(&self, gpu: Option<Rc<Gpu>>, opts: JsValue) -> js_sys::Promise {
            let prepared = parse_opts(opts).and_then(|opts| {
                let query = self.engine.borrow().query(&opts).map_err(js_err)?;
                Ok((opts, query))
            });
            let (opts, query) = match prepared {
                Ok(p) => p,
                Err(e) => return js_sys::Promise::reject(&e),
            };
            // Lists longer than the GPU selects (k above about 50) are scored on the CPU.
            let Some(gpu) = gpu.filter(|_| query.candidates() <= MAX_GPU_K) else {
                return match self.cpu_recommend(&opts) {
                    Ok(v) => js_sys::Promise::resolve(&v),
                    Err(e) => js_sys::Promise::reject(&e),
                };
            };
            let (engine, slot) = (self.engine.clone(), self.gpu.clone());
            wasm_bindgen_futures::future_to_promise(async move {
                if let Some(done) = recommend_on(&gpu, &engine, &query, &opts).await {
                    return done;
                }
                slot.borrow_mut().take();
                let engine = engine.borrow();
                to_js(&engine.recommend(&opts).map_err(js_err)?)
            })
        }

        fn cpu_recommend(&self, opts: &RecommendOptions) -> Result<JsValue, JsValue> {
            to_js(&self.engine.borrow().recommend(opts).map_err(js_err)?)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn summary_and_errors() {
        assert_eq!(
            super::dataset_summary(b"u,a\nu,b\nv,a\n").unwrap(),
            r#"{"interactions":3,"items":2,"users":2}"#
        );
        assert_eq!(super::dataset_summary(b"u,a,x\n").unwrap_err(), "input.csv:1: rating \"x\" is not a number");
    }
}
