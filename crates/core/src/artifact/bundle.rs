//! A model directory as bytes: `manifest.json`, `global.bin`, `catalog.json` (what a device
//! needs, with `items.shard`), and the training-only `personal.bin` and `users.json` (the
//! training users' personal vectors and their tags: never served to a device, see [`SERVED`]).
//! Sans-IO: [`ModelBundle::to_files`] returns (name, bytes) pairs to write, and
//! [`ModelBundle::from_files`] takes a lookup that returns a file's bytes. Loading verifies the
//! format, version, architecture, checksums and every tensor's shape, and fails with a
//! [`BundleError`] that says which.

use serde::{Deserialize, Serialize};

use crate::artifact::{
    ArtifactError, DatasetInfo, ManifestMetrics, ModelDims, ModelManifest, MODEL_FORMAT_VERSION, TensorFile,
};
use crate::data::{self, Dataset, Item, User};
use crate::person::history::{History, ItemSignal, Profile};
use std::collections::HashMap;

/// The model architecture this build serves and loads.
pub const SERVED_ARCHITECTURE: &str = "two-tower-v1";

/// File names inside a model directory.
pub const MANIFEST: &str = "manifest.json";
/// Global parameters.
pub const GLOBAL: &str = "global.bin";
/// Personal parameters of the training users (training and evaluation only).
pub const PERSONAL: &str = "personal.bin";
/// The training users and their tags, by personal-table row (training and evaluation only).
pub const USERS: &str = "users.json";
/// Item and user vocabularies.
pub const CATALOG: &str = "catalog.json";
/// The int8 item embeddings ([`crate::artifact::shard::CatalogShard`]), written beside the model.
pub const SHARD: &str = "items.shard";
/// The files of a model directory a device may fetch and a server may serve: items, item tags,
/// popularity and the model, nothing about training users ([`PERSONAL`] and [`USERS`] are not
/// here).
pub const SERVED: [&str; 4] = [MANIFEST, GLOBAL, CATALOG, SHARD];

/// Why a model directory could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// A file is absent.
    #[error("model file {0} is missing")]
    MissingFile(String),
    /// The manifest is not valid JSON of the expected shape.
    #[error("manifest.json is not a hearth model manifest: {0}")]
    BadManifest(String),
    /// The directory was written by a newer layout or another tool.
    #[error("model format {found:?} version {version} is not supported (expected {expected:?} version {MODEL_FORMAT_VERSION})")]
    UnsupportedFormat {
        /// Format found.
        found: String,
        /// Its version.
        version: u32,
        /// Format expected.
        expected: &'static str,
    },
    /// The model is of another architecture than this build implements.
    #[error("model architecture {found:?} is not {expected:?}: this build cannot load it")]
    Architecture {
        /// Architecture in the manifest.
        found: String,
        /// Architecture this code implements.
        expected: &'static str,
    },
    /// A file's SHA-256 does not match the manifest.
    #[error("{0} does not match its checksum in manifest.json (corrupt or replaced)")]
    Checksum(String),
    /// A parameter file is malformed or has the wrong shapes.
    #[error("{file}: {source}")]
    Tensor {
        /// Which file.
        file: String,
        /// What is wrong.
        source: ArtifactError,
    },
    /// The catalog does not match the manifest's dimensions.
    #[error("catalog.json: {0}")]
    Catalog(String),
    /// The data given is not the data the model was trained on.
    #[error(
        "the data ({data_name}, fingerprint {data}) is not the dataset this model was trained on ({model_name}, fingerprint {model})"
    )]
    DatasetMismatch {
        /// Dataset name in the manifest.
        model_name: String,
        /// Fingerprint in the manifest.
        model: String,
        /// Name of the data given.
        data_name: String,
        /// Fingerprint of the data given.
        data: String,
    },
}

/// Items and tag names, as the model indexes them: what a device gets. Training users are not
/// here (see [`ModelBundle::users`]); a catalog written before they moved out still reads (its
/// `users` are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    /// Item tag names.
    pub item_tags: Vec<String>,
    /// User tag names.
    pub user_tags: Vec<String>,
    /// Items by model index.
    pub items: Vec<Item>,
    /// Interactions per item in the data the model was made from, by model index (the popular
    /// list new people see); empty in models written before it was recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub popularity: Vec<u32>,
}

impl Catalog {
    /// The catalog of a dataset.
    pub fn of(ds: &Dataset) -> Catalog {
        Catalog {
            item_tags: ds.item_tags.clone(),
            user_tags: ds.user_tags.clone(),
            items: ds.items.clone(),
            popularity: ds.item_counts(&ds.interactions),
        }
    }

    /// The user tower's input for the person whose history this is. Items the catalog does not
    /// hold (another catalog's, or retired ones) are left out.
    pub fn person_input(&self, history: &History) -> PersonInput {
        let index: HashMap<&str, u32> = self.items.iter().enumerate().map(|(i, it)| (it.id.as_str(), i as u32)).collect();
        self.person_input_of(&history.items(), &history.profile(), |id| index.get(id).copied())
    }

    /// [`Catalog::person_input`] from a history already read (`History::items`, oldest first)
    /// and a way to find catalog indices (callers that keep an id index pass it here).
    pub fn person_input_of(&self, items: &[ItemSignal], profile: &Profile, index: impl Fn(&str) -> Option<u32>) -> PersonInput {
        let history_idx = items.iter().filter(|s| s.is_positive()).filter_map(|s| index(&s.item)).collect();
        let tags = profile
            .age_band
            .as_ref()
            .and_then(|band| self.user_tags.iter().position(|t| *t == format!("age:{band}")))
            .map(|t| vec![t as u32])
            .unwrap_or_default();
        PersonInput { history: history_idx, tags }
    }

    /// Model indices by popularity, most popular first (ties by index); the catalog order when
    /// no popularity is recorded.
    pub fn popular(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.items.len() as u32).collect();
        let count = |i: u32| self.popularity.get(i as usize).copied().unwrap_or(0);
        order.sort_by(|&a, &b| count(b).cmp(&count(a)).then(a.cmp(&b)));
        order
    }
}

/// What the user tower reads about one person, from their history and profile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PersonInput {
    /// Catalog indices of the items they engaged with (more engagement than rejection, see
    /// [`crate::person::history::ItemSignal::is_positive`]), ordered by their latest interaction, oldest first.
    pub history: Vec<u32>,
    /// User tag indices from their profile (the age band, as `age:<band>`, when the model
    /// knows it).
    pub tags: Vec<u32>,
}

/// Everything in a model directory, decoded and verified.
#[derive(Debug, Clone)]
pub struct ModelBundle {
    /// The manifest.
    pub manifest: ModelManifest,
    /// Global parameters.
    pub global: TensorFile,
    /// Personal parameters of the training users, if read (never on a device).
    pub personal: Option<TensorFile>,
    /// The training users (id and tags) by personal-table row, if read (`users.json`; never
    /// on a device).
    pub users: Vec<User>,
    /// Items and vocabularies.
    pub catalog: Catalog,
    /// The encoded int8 catalog shard (`items.shard`), if read or attached: written with the
    /// other files, so the manifest holds its SHA-256 and a stale shard is refused.
    pub shard: Option<Vec<u8>>,
}

/// `users.json`: the training users by personal-table row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TrainingUsers {
    users: Vec<User>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    data::hex(crate::artifact::sha256(bytes).as_ref())
}

impl ModelBundle {
    /// The user tower's input for the person whose history this is (see [`Catalog::person_input`]).
    pub fn person_input(&self, history: &History) -> PersonInput {
        self.catalog.person_input(history)
    }

    /// Assembles a bundle; checksums are filled in by [`ModelBundle::to_files`].
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        architecture: &str,
        model_version: u32,
        dims: ModelDims,
        dataset: DatasetInfo,
        hyper: serde_json::Value,
        metrics: Option<ManifestMetrics>,
        global: TensorFile,
        personal: Option<TensorFile>,
        users: Vec<User>,
        catalog: Catalog,
    ) -> ModelBundle {
        ModelBundle {
            manifest: ModelManifest {
                format: "hearth-model".into(),
                format_version: MODEL_FORMAT_VERSION,
                model_version,
                architecture: architecture.into(),
                dims,
                dataset,
                hyper,
                metrics,
                files: Default::default(),
                calibration: None,
                selection: None,
            },
            global,
            personal,
            users,
            catalog,
            shard: None,
        }
    }

    /// The files to write, manifest last (so a reader never sees a manifest without its files).
    pub fn to_files(&self) -> Vec<(&'static str, Vec<u8>)> {
        let mut files: Vec<(&'static str, Vec<u8>)> = vec![(GLOBAL, self.global.encode())];
        if let Some(p) = &self.personal {
            files.push((PERSONAL, p.encode()));
        }
        if !self.users.is_empty() {
            files.push((USERS, serde_json::to_vec(&TrainingUsers { users: self.users.clone() }).unwrap_or_default()));
        }
        let catalog = serde_json::to_vec(&self.catalog).unwrap_or_default();
        files.push((CATALOG, catalog));
        if let Some(shard) = &self.shard {
            files.push((SHARD, shard.clone()));
        }
        let mut manifest = self.manifest.clone();
        manifest.files = files.iter().map(|(n, b)| (n.to_string(), sha256_hex(b))).collect();
        let mut m = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        m.push(b'\n');
        files.push((MANIFEST, m));
        files
    }

    /// Reads and verifies a bundle. `read(name)` returns a file's bytes or `None` if absent.
    pub fn from_files(
        expected_architecture: &'static str,
        read: &mut dyn FnMut(&str) -> Option<Vec<u8>>,
    ) -> Result<ModelBundle, BundleError> {
        let raw = read(MANIFEST).ok_or_else(|| BundleError::MissingFile(MANIFEST.into()))?;
        let value: serde_json::Value =
            serde_json::from_slice(&raw).map_err(|e| BundleError::BadManifest(e.to_string()))?;
        let format = value.get("format").and_then(|v| v.as_str()).unwrap_or("").to_owned();
        let version = value.get("format_version").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        if format != "hearth-model" || version != MODEL_FORMAT_VERSION {
            return Err(BundleError::UnsupportedFormat { found: format, version, expected: "hearth-model" });
        }
        let arch = value.get("architecture").and_then(|v| v.as_str()).unwrap_or("").to_owned();
        if arch != expected_architecture {
            return Err(BundleError::Architecture { found: arch, expected: expected_architecture });
        }
        let manifest: ModelManifest =
            serde_json::from_value(value).map_err(|e| BundleError::BadManifest(e.to_string()))?;
        manifest.link().map_err(BundleError::BadManifest)?;

        let mut load = |name: &str, optional: bool| -> Result<Option<Vec<u8>>, BundleError> {
            let Some(want) = manifest.files.get(name) else { return Ok(None) };
            let Some(bytes) = read(name) else {
                return if optional { Ok(None) } else { Err(BundleError::MissingFile(name.into())) };
            };
            if &sha256_hex(&bytes) != want {
                return Err(BundleError::Checksum(name.into()));
            }
            Ok(Some(bytes))
        };
        // `load` checked each file's SHA-256 against the manifest, so its own trailer is not hashed again.
        let tensor = |name: &str, bytes: Vec<u8>| {
            TensorFile::decode_digest_verified(&bytes).map_err(|source| BundleError::Tensor { file: name.into(), source })
        };
        let global = tensor(GLOBAL, load(GLOBAL, false)?.ok_or_else(|| BundleError::MissingFile(GLOBAL.into()))?)?;
        // Personal vectors are the training users' own: a device never needs them, so a reader
        // may leave them out (the global model and catalog are required).
        let personal = load(PERSONAL, true)?.map(|b| tensor(PERSONAL, b)).transpose()?;
        let catalog_bytes = load(CATALOG, false)?.ok_or_else(|| BundleError::MissingFile(CATALOG.into()))?;
        let catalog: Catalog =
            serde_json::from_slice(&catalog_bytes).map_err(|e| BundleError::Catalog(e.to_string()))?;
        // The shard's own format is checked by its reader (`CatalogShard::decode`); here, that it
        // is the one the manifest names.
        let shard = load(SHARD, true)?;
        let users = match load(USERS, true)? {
            Some(b) => serde_json::from_slice::<TrainingUsers>(&b).map_err(|e| BundleError::Catalog(format!("{USERS}: {e}")))?.users,
            None => Vec::new(),
        };

        let d = &manifest.dims;
        if d.items == 0 || d.dim == 0 || d.hidden == 0 || d.history == 0 {
            return Err(BundleError::BadManifest("items, dim, hidden and history must all be at least 1".into()));
        }
        if catalog.items.len() != d.items || catalog.item_tags.len() != d.item_tags || catalog.user_tags.len() != d.user_tags {
            return Err(BundleError::Catalog(format!(
                "{} items / {} item tags / {} user tags, but the manifest says {} / {} / {}",
                catalog.items.len(),
                catalog.item_tags.len(),
                catalog.user_tags.len(),
                d.items,
                d.item_tags,
                d.user_tags
            )));
        }
        if (personal.is_some() || !users.is_empty()) && users.len() != d.users {
            return Err(BundleError::Catalog(format!("{USERS}: {} users, but the manifest says {}", users.len(), d.users)));
        }
        let bad_item_tag = catalog.items.iter().flat_map(|i| &i.tags).any(|&t| t as usize >= d.item_tags);
        let bad_user_tag = users.iter().flat_map(|u| &u.tags).any(|&t| t as usize >= d.user_tags);
        if bad_item_tag || bad_user_tag {
            return Err(BundleError::Catalog("a tag index is out of range".into()));
        }
        Ok(ModelBundle { manifest, global, personal, users, catalog, shard })
    }

    /// Fails unless `shard` (a device's copy of `items.shard`) is the shard this manifest names:
    /// a stale shard of an earlier training, or a replaced one, is refused. Manifests written
    /// before the shard had a digest accept any (the shard's version and ids are checked apart).
    pub fn check_shard(&self, shard: &[u8]) -> Result<(), BundleError> {
        match self.manifest.files.get(SHARD) {
            Some(want) if &sha256_hex(shard) != want => Err(BundleError::Checksum(SHARD.into())),
            _ => Ok(()),
        }
    }

    /// Fails unless `ds` is the dataset the model was trained on.
    pub fn check_dataset(&self, ds: &Dataset) -> Result<(), BundleError> {
        let fp = ds.fingerprint();
        if fp != self.manifest.dataset.fingerprint {
            return Err(BundleError::DatasetMismatch {
                model_name: self.manifest.dataset.name.clone(),
                model: self.manifest.dataset.fingerprint.clone(),
                data_name: ds.name.clone(),
                data: fp,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn bundle() -> ModelBundle {
        let mut g = TensorFile::default();
        g.insert("x", vec![1], vec![1.0]);
        let ds = Dataset::from_csv("t.csv", b"u,a\nu,b\n", None).unwrap();
        let dims = ModelDims { items: 2, item_tags: 0, user_tags: 0, users: 1, dim: 1, hidden: 1, history: 1 };
        let info = DatasetInfo {
            name: "t".into(),
            fingerprint: ds.fingerprint(),
            users: 1,
            items: 2,
            interactions: 2,
            split: "leave-one-out".into(),
        };
        ModelBundle::new("arch-a", 1, dims, info, serde_json::json!({}), None, g, None, ds.users.clone(), Catalog::of(&ds))
    }

    fn files(b: &ModelBundle) -> BTreeMap<String, Vec<u8>> {
        b.to_files().into_iter().map(|(n, b)| (n.to_string(), b)).collect()
    }

    fn load(f: &BTreeMap<String, Vec<u8>>, arch: &'static str) -> Result<ModelBundle, BundleError> {
        ModelBundle::from_files(arch, &mut |n| f.get(n).cloned())
    }

    #[test]
    fn roundtrip_and_refusals() {
        let f = files(&bundle());
        let b = load(&f, "arch-a").unwrap();
        assert_eq!(b.global, bundle().global);

        let e = load(&f, "arch-b").unwrap_err();
        assert_eq!(e.to_string(), "model architecture \"arch-a\" is not \"arch-b\": this build cannot load it");

        let mut g = f.clone();
        g.get_mut(GLOBAL).unwrap()[10] ^= 1;
        assert!(matches!(load(&g, "arch-a"), Err(BundleError::Checksum(n)) if n == GLOBAL));

        let mut g = f.clone();
        g.remove(CATALOG);
        assert!(matches!(load(&g, "arch-a"), Err(BundleError::MissingFile(n)) if n == CATALOG));

        let mut g = f.clone();
        g.insert(MANIFEST.into(), b"{\"format\": \"something-else\"}".to_vec());
        assert!(matches!(load(&g, "arch-a"), Err(BundleError::UnsupportedFormat { .. })));

        let mut g = f.clone();
        g.insert(MANIFEST.into(), b"not json".to_vec());
        assert!(matches!(load(&g, "arch-a"), Err(BundleError::BadManifest(_))));
    }

    #[test]
    fn training_users_live_outside_what_a_device_gets() {
        let f = files(&bundle());
        let b = load(&f, "arch-a").unwrap();
        assert_eq!(b.users.len(), 1);
        assert_eq!(b.users[0].id, "u");
        // The catalog a device reads names no training user.
        let catalog: serde_json::Value = serde_json::from_slice(&f[CATALOG]).unwrap();
        let mut keys: Vec<&str> = catalog.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["item_tags", "items", "popularity", "user_tags"]);
        assert!(f.contains_key(USERS) && !SERVED.contains(&USERS) && !SERVED.contains(&PERSONAL));
        // A device reads only the served files: it gets no users, and that is not an error.
        let device = load(&f.iter().filter(|(n, _)| SERVED.contains(&n.as_str())).map(|(n, b)| (n.clone(), b.clone())).collect(), "arch-a").unwrap();
        assert!(device.users.is_empty() && device.personal.is_none());
        // users.json is checked like every file: its digest, and its count against the manifest.
        let mut g = f.clone();
        g.get_mut(USERS).unwrap()[3] ^= 1;
        assert!(matches!(load(&g, "arch-a"), Err(BundleError::Checksum(n)) if n == USERS));
        let mut two = bundle();
        two.users.push(two.users[0].clone());
        assert!(matches!(load(&files(&two), "arch-a"), Err(BundleError::Catalog(m)) if m.contains("2 users, but the manifest says 1")));
        // A shard travels with its digest: the same bytes pass, others are refused.
        let mut with_shard = bundle();
        with_shard.shard = Some(b"shard v1".to_vec());
        let f2 = files(&with_shard);
        let b2 = load(&f2, "arch-a").unwrap();
        assert_eq!(b2.shard.as_deref(), Some(&b"shard v1"[..]));
        b2.check_shard(b"shard v1").unwrap();
        assert!(matches!(b2.check_shard(b"shard v0"), Err(BundleError::Checksum(n)) if n == SHARD));
        let mut g = f2.clone();
        g.insert(SHARD.into(), b"shard v0".to_vec());
        assert!(matches!(load(&g, "arch-a"), Err(BundleError::Checksum(n)) if n == SHARD));
        // Without a recorded digest (older manifests) any shard passes this check.
        b.check_shard(b"anything").unwrap();
        // A catalog written when it still held the users reads, without them.
        let mut old = catalog.clone();
        old["users"] = serde_json::json!([{"id": "u", "tags": []}]);
        let old: Catalog = serde_json::from_value(old).unwrap();
        assert_eq!(old, b.catalog);
    }

    #[test]
    fn an_items_csvs_rights_and_trust_travel_in_the_served_catalog() {
        let items = b"item,title,tags,rights,trust\na,Alpha,,territories=CH;usage=stream,0.9\nb,Beta,,,\n";
        let ds = Dataset::from_csv("t.csv", b"u,a\nu,b\n", Some(("items.csv", items))).unwrap();
        let mut b = bundle();
        b.catalog = Catalog::of(&ds);
        let f = files(&b);
        // In the bytes a device fetches...
        let served: serde_json::Value = serde_json::from_slice(&f[CATALOG]).unwrap();
        assert_eq!(served["items"][0]["rights"], serde_json::json!({"territories": ["CH"], "usage": ["stream"]}));
        assert_eq!(served["items"][0]["trust"], 0.9);
        assert!(served["items"][1].get("rights").is_none() && served["items"][1].get("trust").is_none());
        // ...and as the device reads them back.
        let back = load(&f, "arch-a").unwrap().catalog;
        let alpha = &back.items[0];
        assert!(alpha.rights.as_ref().unwrap().allows(Some("CH"), 0, Some("stream")));
        assert!(!alpha.rights.as_ref().unwrap().allows(Some("DE"), 0, Some("stream")));
        assert_eq!((alpha.trust, back.items[1].trust), (Some(0.9), None));
        assert_eq!(back, b.catalog);
    }

    #[test]
    fn dataset_mismatch_is_named() {
        let b = bundle();
        let other = Dataset::from_csv("o.csv", b"u,a\nu,c\n", None).unwrap();
        let e = b.check_dataset(&other).unwrap_err();
        assert!(e.to_string().starts_with("the data (o, fingerprint"), "{e}");
        let same = Dataset::from_csv("t.csv", b"u,a\nu,b\n", None).unwrap();
        b.check_dataset(&same).unwrap();
    }
}
