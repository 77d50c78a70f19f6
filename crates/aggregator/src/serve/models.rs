//! Published model versions in an object store (the `object_store` crate: a local directory by
//! default; any store it supports can stand behind the same calls). Files are content-addressed
//! (`files/<sha256>`); a version's index (`versions/<n>.json`) names them; the `latest` pointer
//! is written only after every file of the version was written, read back and verified, so a
//! reader following it never finds a missing or damaged file. `rollback` moves the pointer back.
//!
//! Only what devices use is published (manifest, global parameters, catalog, int8 shard): the
//! training users' personal vectors and ids never enter the store.

use std::collections::BTreeMap;
use std::sync::Arc;

use hearth_core::data::hex;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, PutPayload};
use serde::{Deserialize, Serialize};

/// Why a model-store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelStoreError {
    /// The object store failed.
    #[error("model store: {0}")]
    Store(#[from] object_store::Error),
    /// A file read back is not what was written, or an index is unreadable.
    #[error("model store: {0}")]
    Corrupt(String),
    /// No such version.
    #[error("model version {0} is not in the store")]
    NoVersion(u32),
}

/// A version's index: its files by name, each by SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionIndex {
    /// The model version.
    pub version: u32,
    /// File name → lowercase hex SHA-256.
    pub files: BTreeMap<String, String>,
}

/// The files of a model a device may fetch.
pub const DEVICE_FILES: [&str; 4] = ["manifest.json", "global.bin", "catalog.json", "items.shard"];

/// Published versions.
#[derive(Clone)]
pub struct ModelStore {
    store: Arc<dyn ObjectStore>,
}

/// The SHA-256 of `bytes` in lowercase hexadecimal.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(hearth_core::codec::sha256(bytes).as_ref())
}

impl ModelStore {
    /// A store in a local directory (created if missing).
    pub fn local(dir: &std::path::Path) -> Result<ModelStore, ModelStoreError> {
        std::fs::create_dir_all(dir).map_err(|e| ModelStoreError::Corrupt(format!("cannot create {}: {e}", dir.display())))?;
        Ok(ModelStore { store: Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir)?) })
    }

    /// A store over any object store.
    pub fn new(store: Arc<dyn ObjectStore>) -> ModelStore {
        ModelStore { store }
    }

    async fn read(&self, path: &StorePath) -> Result<Option<Vec<u8>>, ModelStoreError> {
        match self.store.get(path).await {
            Ok(r) => Ok(Some(r.bytes().await?.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Publishes `files` as `version`: files, read back and verified, then the index, then the
    /// pointer. Publishing the same version with the same files again changes nothing.
    pub async fn publish(&self, version: u32, files: &[(&str, Vec<u8>)]) -> Result<VersionIndex, ModelStoreError> {
        let mut index = VersionIndex { version, files: BTreeMap::new() };
        for (name, bytes) in files {
            let digest = sha256_hex(bytes);
            let path = StorePath::from(format!("files/{digest}"));
            if self.read(&path).await?.is_none_or(|b| sha256_hex(&b) != digest) {
                self.store.put(&path, PutPayload::from(bytes.clone())).await?;
            }
            let back = self.read(&path).await?.unwrap_or_default();
            if sha256_hex(&back) != digest {
                return Err(ModelStoreError::Corrupt(format!("{name} of version {version} reads back differently")));
            }
            index.files.insert((*name).to_owned(), digest);
        }
        let json = serde_json::to_vec(&index).map_err(|e| ModelStoreError::Corrupt(e.to_string()))?;
        self.store.put(&StorePath::from(format!("versions/{version}.json")), PutPayload::from(json)).await?;
        self.point_to(version).await?;
        Ok(index)
    }

    async fn point_to(&self, version: u32) -> Result<(), ModelStoreError> {
        let json = serde_json::to_vec(&serde_json::json!({ "version": version })).map_err(|e| ModelStoreError::Corrupt(e.to_string()))?;
        self.store.put(&StorePath::from("latest"), PutPayload::from(json)).await?;
        Ok(())
    }

    /// The index of `version`.
    pub async fn index(&self, version: u32) -> Result<VersionIndex, ModelStoreError> {
        let bytes = self.read(&StorePath::from(format!("versions/{version}.json"))).await?.ok_or(ModelStoreError::NoVersion(version))?;
        serde_json::from_slice(&bytes).map_err(|e| ModelStoreError::Corrupt(format!("the index of version {version}: {e}")))
    }

    /// The version `latest` points to (None: nothing published).
    pub async fn latest(&self) -> Result<Option<u32>, ModelStoreError> {
        let Some(bytes) = self.read(&StorePath::from("latest")).await? else { return Ok(None) };
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| ModelStoreError::Corrupt(format!("latest: {e}")))?;
        v.get("version").and_then(|v| v.as_u64()).and_then(|v| u32::try_from(v).ok()).map(Some).ok_or_else(|| ModelStoreError::Corrupt("latest names no version".into()))
    }

    /// The highest version ever published (0: none), whatever `latest` points to.
    pub async fn highest(&self) -> Result<u32, ModelStoreError> {
        use futures::TryStreamExt;
        let listed: Vec<object_store::ObjectMeta> = self.store.list(Some(&StorePath::from("versions"))).try_collect().await?;
        Ok(listed.iter().filter_map(|m| m.location.filename()?.strip_suffix(".json")?.parse::<u32>().ok()).max().unwrap_or(0))
    }

    /// A file of a version, verified against its index (None: the version has no such file).
    pub async fn file(&self, version: u32, name: &str) -> Result<Option<Vec<u8>>, ModelStoreError> {
        let index = self.index(version).await?;
        let Some(digest) = index.files.get(name) else { return Ok(None) };
        let bytes = self.read(&StorePath::from(format!("files/{digest}"))).await?.ok_or_else(|| ModelStoreError::Corrupt(format!("{name} of version {version} is missing")))?;
        if &sha256_hex(&bytes) != digest {
            return Err(ModelStoreError::Corrupt(format!("{name} of version {version} is damaged")));
        }
        Ok(Some(bytes))
    }

    /// Moves `latest` back to `version` after checking every one of its files.
    pub async fn rollback(&self, version: u32) -> Result<(), ModelStoreError> {
        let index = self.index(version).await?;
        for name in index.files.keys() {
            self.file(version, name).await?;
        }
        self.point_to(version).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pointer_moves_only_to_verified_versions_and_rolls_back() {
        let dir = std::env::temp_dir().join(format!("hearth-models-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = ModelStore::local(&dir).unwrap();
        assert_eq!(store.latest().await.unwrap(), None);
        store.publish(1, &[("global.bin", vec![1, 2, 3]), ("manifest.json", b"{}".to_vec())]).await.unwrap();
        store.publish(2, &[("global.bin", vec![4, 5]), ("manifest.json", b"{}".to_vec())]).await.unwrap();
        assert_eq!(store.latest().await.unwrap(), Some(2));
        assert_eq!(store.highest().await.unwrap(), 2);
        assert_eq!(store.file(1, "global.bin").await.unwrap(), Some(vec![1, 2, 3]));
        // The manifest is stored once: content addressing.
        assert_eq!(std::fs::read_dir(dir.join("files")).unwrap().count(), 3);
        store.rollback(1).await.unwrap();
        assert_eq!(store.latest().await.unwrap(), Some(1));
        assert!(matches!(store.rollback(9).await, Err(ModelStoreError::NoVersion(9))));
        // A damaged file is found when read and refused by a rollback.
        let digest = store.index(2).await.unwrap().files["global.bin"].clone();
        std::fs::write(dir.join("files").join(&digest), [9, 9]).unwrap();
        assert!(matches!(store.file(2, "global.bin").await, Err(ModelStoreError::Corrupt(_))));
        assert!(store.rollback(2).await.is_err());
        assert_eq!(store.latest().await.unwrap(), Some(1));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
