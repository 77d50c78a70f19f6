//! hearth-web: hearth in the browser. [`engine::Engine`] holds the logic and is tested natively;
//! this file binds it to JavaScript with wasm-bindgen (exports exist only on wasm32).
//!
//! The page loads the model's `manifest.json`, `global.bin`, `catalog.json` and `items.shard`
//! (never `personal.bin`: the training users' vectors), the person's sealed history from
//! IndexedDB, and calls [`Hearth`](engine::Engine)'s methods; errors reach JavaScript as `Error`s
//! with a stable `code` (see [`engine::WebError::code`]).
//!
//! ```
//! let summary = hearth_web::dataset_summary(b"user,item\nme,a\nme,b\n").unwrap();
//! assert!(summary.contains("\"items\":2"));
//! ```

pub mod engine;

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
mod js {
    use wasm_bindgen::prelude::*;

    use crate::engine::{Engine, ModelFiles, RecommendOptions, Secret, WebError};

    #[wasm_bindgen(typescript_custom_section)]
    const TS: &'static str = r#"
/** Options of `Hearth.recommend`. */
export interface RecommendOptions { k?: number; exclude?: string[]; diversity?: number; explore?: number; }
/** One recommendation. */
export interface Recommendation {
  id: string; title: string; matchPercent: number; score: number; reason: string;
  becauseOf: string | null; source: "personal" | "popular" | "both" | "explore";
}
/** One item of the person's history. */
export interface HistoryItem { id: string; title: string; last: number; counts: Record<string, number>; rating: number | null; }
/** A catalog search result. */
export interface Found { id: string; title: string; }
"#;

    fn js_err(e: WebError) -> JsValue {
        let err = js_sys::Error::new(&e.to_string());
        let _ = js_sys::Reflect::set(&err, &"code".into(), &e.code().into());
        err.into()
    }

    fn to_js<T: serde::Serialize>(v: &T) -> Result<JsValue, JsValue> {
        v.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).map_err(|e| js_err(WebError::BadInput(e.to_string())))
    }

    /// One person's hearth in the page.
    #[wasm_bindgen]
    pub struct Hearth {
        engine: Engine,
    }

    #[wasm_bindgen]
    impl Hearth {
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
                    k.try_into().map_err(|_| js_err(WebError::BadInput("a device key is 32 bytes".into())))?,
                ),
                (None, None) => return Err(js_err(WebError::BadInput("a passphrase or a device key is needed".into()))),
            };
            let files = ModelFiles { manifest, global, catalog, shard };
            Engine::open(&files, sealed.as_deref(), secret, device, u64::from(seed)).map(|engine| Hearth { engine }).map_err(js_err)
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
            let bad = |what: &str| js_err(WebError::BadInput(format!("{what} has the wrong length")));
            let secret = Secret::Derived {
                key: key.try_into().map_err(|_| bad("the derived key"))?,
                iterations,
                salt: salt.try_into().map_err(|_| bad("the salt"))?,
            };
            let files = ModelFiles { manifest, global, catalog, shard };
            Engine::open(&files, sealed.as_deref(), secret, device, u64::from(seed)).map(|engine| Hearth { engine }).map_err(js_err)
        }

        /// `{iterations, salt}` of a sealed history's passphrase key, or `null` for a device key.
        #[wasm_bindgen(js_name = kdfParams)]
        pub fn kdf_params(sealed: &[u8]) -> Result<JsValue, JsValue> {
            let bad = |e: hearth_core::vault::VaultError| js_err(WebError::Damaged(e.to_string()));
            match hearth_core::vault::kdf_params(sealed).map_err(bad)? {
                Some((iterations, salt)) => to_js(&serde_json::json!({"iterations": iterations, "salt": salt.to_vec()})),
                None => Ok(JsValue::NULL),
            }
        }

        /// Fresh `{iterations, salt}` for a new passphrase key (current OWASP iteration count).
        #[wasm_bindgen(js_name = newKdfParams)]
        pub fn new_kdf_params() -> Result<JsValue, JsValue> {
            let salt = hearth_core::vault::new_salt().map_err(|e| js_err(WebError::BadInput(e.to_string())))?;
            to_js(&serde_json::json!({"iterations": hearth_core::vault::PBKDF2_ITERATIONS, "salt": salt.to_vec()}))
        }

        /// Records an event; returns its id.
        pub fn record(&mut self, item: &str, kind: &str, value: Option<f64>, ts: f64, hour: Option<u8>) -> Result<String, JsValue> {
            self.engine.record(item, kind, value, ts as i64, hour).map_err(js_err)
        }

        /// Recommendations now.
        #[wasm_bindgen(unchecked_return_type = "Recommendation[]")]
        pub fn recommend(&self, #[wasm_bindgen(unchecked_param_type = "RecommendOptions | undefined")] opts: JsValue) -> Result<JsValue, JsValue> {
            let opts: RecommendOptions = if opts.is_undefined() || opts.is_null() {
                RecommendOptions::default()
            } else {
                serde_wasm_bindgen::from_value(opts).map_err(|e| js_err(WebError::BadInput(e.to_string())))?
            };
            to_js(&self.engine.recommend(&opts).map_err(js_err)?)
        }

        /// The history, most recent first.
        #[wasm_bindgen(unchecked_return_type = "HistoryItem[]")]
        pub fn history(&self) -> Result<JsValue, JsValue> {
            to_js(&self.engine.history())
        }

        /// Catalog search by title.
        #[wasm_bindgen(unchecked_return_type = "Found[]")]
        pub fn search(&self, query: &str, limit: usize) -> Result<JsValue, JsValue> {
            to_js(&self.engine.search(query, limit))
        }

        /// Forgets an item everywhere.
        pub fn forget(&mut self, item: &str, now: f64) -> Result<(), JsValue> {
            self.engine.forget(item, now as i64).map_err(js_err)
        }

        /// Deletes the whole history.
        pub fn wipe(&mut self, now: f64) -> Result<(), JsValue> {
            self.engine.wipe(now as i64).map_err(js_err)
        }

        /// The history sealed for storage.
        pub fn sealed(&mut self) -> Result<Vec<u8>, JsValue> {
            self.engine.sealed().map_err(js_err)
        }

        /// `{modelVersion, items, dim, scorer}`.
        pub fn capabilities(&self) -> Result<JsValue, JsValue> {
            let (v, n, d) = self.engine.model_info();
            let scorer = if cfg!(target_feature = "simd128") { "wasm-simd128" } else { "portable" };
            to_js(&serde_json::json!({"modelVersion": v, "items": n, "dim": d, "scorer": scorer}))
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
