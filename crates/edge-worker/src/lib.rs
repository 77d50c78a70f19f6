//! hearth-edge: hearth's CDN edge worker (workers-rs), a thin layer that routes requests to
//! hearth-core. For now it answers `GET /health`; model and catalog shards, cached non-personal
//! results, the sync relay and update intake come with later work.
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
mod worker_glue {
    use worker::{Context, Env, Request, Response, Result, Router, event};

    #[event(fetch)]
    async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
        Router::new()
            .get("/health", |_, _| Response::from_json(&super::health()))
            .run(req, env)
            .await
    }
}
