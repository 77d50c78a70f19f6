//! `hearth-aggregator publish-edge`: copies a published model version to the edge worker
//! (`crates/edge-worker`) in the order that keeps devices safe: every file under its SHA-256
//! first, then the version's index (the edge checks that it holds each file), then `latest`.
//! A step the edge refuses stops the copy with the edge's code; running it again is harmless
//! (files and indexes already there are answered `stored: false`).

use std::path::Path;

use crate::serve::api::ErrorBody;
use crate::serve::models::{DEVICE_FILES, ModelStore, ModelStoreError, VersionIndex, sha256_hex};

/// Why a publication to the edge failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EdgePublishError {
    /// The edge could not be reached or answered something unreadable.
    #[error("edge: {0}")]
    Http(#[from] reqwest::Error),
    /// The edge refused a step.
    #[error("the edge refused {step}: {status} {code}: {message}")]
    Refused {
        /// Which request (`PUT /v1/admin/…`).
        step: String,
        /// HTTP status.
        status: u16,
        /// The edge's stable code.
        code: String,
        /// The edge's message.
        message: String,
    },
    /// The model store failed.
    #[error(transparent)]
    Store(#[from] ModelStoreError),
    /// A model directory's file could not be read, or names another version.
    #[error("{0}")]
    Model(String),
}

/// What a publication did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EdgePublication {
    /// The version now `latest` at the edge.
    pub version: u32,
    /// Files the edge stored (the others it held already).
    pub files_stored: Vec<String>,
    /// Whether the index was new to the edge.
    pub index_stored: bool,
}

/// A version's files from the aggregator's model store (`version`, else its `latest`).
pub async fn from_store(store: &ModelStore, version: Option<u32>) -> Result<(u32, Vec<(String, Vec<u8>)>), EdgePublishError> {
    let version = match version {
        Some(v) => v,
        None => store.latest().await?.ok_or_else(|| EdgePublishError::Model("the model store has no latest version".into()))?,
    };
    let index = store.index(version).await?;
    let mut files = Vec::with_capacity(index.files.len());
    for name in index.files.keys() {
        let bytes = store.file(version, name).await?.ok_or_else(|| EdgePublishError::Model(format!("version {version}'s {name} is missing from the store")))?;
        files.push((name.clone(), bytes));
    }
    Ok((version, files))
}

/// The files a device fetches from a model directory, as its manifest's `model_version`.
pub fn from_model_dir(dir: &Path) -> Result<(u32, Vec<(String, Vec<u8>)>), EdgePublishError> {
    let read = |name: &str| std::fs::read(dir.join(name)).map_err(|e| EdgePublishError::Model(format!("cannot read {}: {e}", dir.join(name).display())));
    let manifest: hearth_core::artifact::ModelManifest =
        serde_json::from_slice(&read("manifest.json")?).map_err(|e| EdgePublishError::Model(format!("{}: {e}", dir.join("manifest.json").display())))?;
    let files = DEVICE_FILES.iter().map(|n| Ok(((*n).to_owned(), read(n)?))).collect::<Result<Vec<_>, EdgePublishError>>()?;
    Ok((manifest.model_version, files))
}

/// Publishes `files` as `version` at the edge at `base` with the publisher's bearer `token`, and
/// moves the edge's `latest` to it.
pub async fn publish(base: &str, token: &str, version: u32, files: &[(String, Vec<u8>)], mut progress: impl FnMut(&str)) -> Result<EdgePublication, EdgePublishError> {
    let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(300)).build()?;
    let base = base.trim_end_matches('/');
    let put = |path: String, body: Vec<u8>| {
        let (http, url) = (http.clone(), format!("{base}{path}"));
        async move {
            let res = http.put(&url).bearer_auth(token).body(body).send().await?;
            let status = res.status().as_u16();
            let bytes = res.bytes().await?;
            if !(200..300).contains(&status) {
                let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
                    Ok(b) => (b.error.code, b.error.message),
                    Err(_) => ("unreadable".into(), String::from_utf8_lossy(&bytes).chars().take(200).collect()),
                };
                return Err(EdgePublishError::Refused { step: format!("PUT {path}"), status, code, message });
            }
            Ok(serde_json::from_slice::<serde_json::Value>(&bytes).ok().and_then(|v| v.get("stored").and_then(serde_json::Value::as_bool)).unwrap_or(false))
        }
    };
    let mut index = VersionIndex { version, files: Default::default() };
    let mut files_stored = vec![];
    for (name, bytes) in files {
        let sha = sha256_hex(bytes);
        if put(format!("/v1/admin/files/{sha}"), bytes.clone()).await? {
            files_stored.push(name.clone());
        }
        progress(&format!("{name} ({} bytes, {sha})", bytes.len()));
        index.files.insert(name.clone(), sha);
    }
    let body = serde_json::to_vec(&index).map_err(|e| EdgePublishError::Model(e.to_string()))?;
    let index_stored = put(format!("/v1/admin/versions/{version}"), body).await?;
    progress(&format!("index of version {version}"));
    put("/v1/admin/latest".into(), serde_json::to_vec(&serde_json::json!({ "version": version })).unwrap_or_default()).await?;
    progress(&format!("latest -> {version}"));
    Ok(EdgePublication { version, files_stored, index_stored })
}
