//! hearth-edge: hearth's CDN edge worker (workers-rs), a thin layer that routes requests to
//! hearth-core. It answers `GET /health`, serves model versions (`GET|HEAD
//! /v1/models/{version}/{file}`: immutable, content-addressed files from R2 behind the Cache API,
//! with entity tags, 304 and byte ranges; `GET /v1/models/latest` from KV) and takes publications
//! from the aggregator's model store (`PUT /v1/admin/…` with a bearer token: files, then the
//! version's index, then `latest`), and relays a person's sealed sync envelopes between their
//! devices (`POST|GET /v1/sync/{group}`, WebSocket `/v1/sync/{group}/live`: a Durable Object per
//! group, `relay`'s rules), and takes devices' federated-round traffic to the aggregator
//! (`POST /v1/rounds/{n}/messages` checked and rate-limited per device, `POST /v1/devices`,
//! `GET /v1/rounds/…`; `intake`'s rules). Non-personal lists come with later work.
//!
//! `http`, `models`, `relay` and `intake` hold the rules (native, tested here); `worker_glue` and
//! `relay_object` bind them to the Workers runtime.
//!
//! Build: `cargo build -p hearth-edge --target wasm32-unknown-unknown`, then `wasm-bindgen
//! --target web`; `crates/edge-worker/entry.mjs` instantiates the module for workerd. The test
//! `crates/edge-worker/tests/health.test.mjs` runs it in workerd through Miniflare.
//!
//! ```
//! // What the worker answers on `GET /health` (its routes are tested in workerd, not here).
//! let body = serde_json::to_string(&hearth_edge::health()).unwrap();
//! assert!(body.starts_with(r#"{"status":"ok","service":"hearth-edge","version":"#));
//! ```

use serde::Serialize;

pub mod http;
pub mod intake;
pub mod models;
pub mod relay;

/// What `GET /health` answers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Health {
    /// Always `"ok"` when the worker runs.
    pub status: &'static str,
    /// This service's name.
    pub service: &'static str,
    /// Crate version.
    pub version: &'static str,
    /// Architecture of the models this build serves.
    pub architecture: &'static str,
}

/// The health document.
pub fn health() -> Health {
    Health {
        status: "ok",
        service: "hearth-edge",
        version: env!("CARGO_PKG_VERSION"),
        architecture: hearth_core::artifact::bundle::SERVED_ARCHITECTURE,
    }
}

#[cfg(target_family = "wasm")]
mod relay_object;
#[cfg(target_family = "wasm")]
mod worker_glue;
