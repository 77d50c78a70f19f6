//! One person's hearth on one device: a served model (without burn: the plain-Rust user tower and
//! the int8 catalog), their sealed history, and the product's policy for turning one into the
//! other (event kinds, the shard-versus-manifest check, the candidate pool, ranking defaults,
//! compaction, the reason text). The browser binds it to JavaScript (`hearth-web`); the federated
//! client and the edge use the same rules.
//!
//! A recommendation is [`Session::query`] (what the tower reads, the offset, what is seen and how
//! many candidates), the person's vector ([`Session::user_vector`] here, or the GPU tower), the int8
//! scan and [`Session::refine`], then [`Session::rank`]; [`Session::recommend`] does it all on the CPU.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use crate::artifact::Link;
use crate::artifact::bundle::{BundleError, Catalog, ModelBundle, PersonInput, SERVED_ARCHITECTURE};
use crate::person::history::{History, HistoryError, ItemSignal, KIND_NAMES, Kind, Tuning};
use crate::artifact::shard::CatalogShard;
use crate::data::rights;
use crate::quant::CatalogView;
use crate::device::rank::{RankConfig, RankInput, Reason, Source, rank};
use crate::eval::Calibration;
use crate::device::score::{self, Hit};
use crate::device::tower::UserTower;
use crate::person::store::{self, Generations, StoreError};
use crate::person::vault::{self, DocId, Key, VaultError};
use serde::{Deserialize, Serialize};

/// Live events kept as they are when the history is compacted (older ones fold into summaries).
pub const KEEP_EVENTS: usize = 1000;

/// A history is compacted (down to [`KEEP_EVENTS`] live events) once it holds this many.
pub const COMPACT_AT: usize = 2 * KEEP_EVENTS;

/// Personal candidates ranking needs for a list of `k`: enough for diversity and fusion to choose
/// from (five per slot) and never fewer than 100.
pub fn candidate_pool(k: usize) -> usize {
    (5 * k).max(100)
}

/// The words a person sees for why an item is on their list; `liked` is the title of the history
/// item a [`Reason::Similar`] names.
pub fn reason_text(reason: &Reason, liked: Option<&str>) -> String {
    match (reason, liked) {
        (Reason::Similar { .. }, Some(title)) => format!("Because you liked {title}"),
        (Reason::Similar { .. }, None) => "Similar to what you liked".to_owned(),
        (Reason::Popular, _) => "Popular with everyone".to_owned(),
        (Reason::Explore, _) => "Something different to explore".to_owned(),
    }
}

/// Why an operation failed. `code()` is stable, for the page to choose its message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The model files are missing, damaged or do not fit together.
    #[error("the model is damaged or incomplete: {0}")]
    Model(String),
    /// The catalog shard is damaged.
    #[error("the catalog file is damaged: {0}")]
    Shard(String),
    /// The catalog shard belongs to another model version.
    #[error("the catalog is for model version {shard}, the model is version {model}")]
    ModelVersion {
        /// The shard's model version.
        shard: String,
        /// The manifest's model version.
        model: String,
    },
    /// The passphrase or device key does not open the stored history.
    #[error("wrong passphrase")]
    WrongKey,
    /// The stored history is damaged (tampered, truncated, or not a sealed history).
    #[error("the stored history is damaged: {0}")]
    Damaged(String),
    /// Bad input from the caller.
    #[error("{0}")]
    BadInput(String),
}

impl SessionError {
    /// A short stable code: `model`, `shard`, `model-version`, `wrong-key`, `damaged`, `bad-input`.
    pub fn code(&self) -> &'static str {
        match self {
            SessionError::Model(_) => "model",
            SessionError::Shard(_) => "shard",
            SessionError::ModelVersion { .. } => "model-version",
            SessionError::WrongKey => "wrong-key",
            SessionError::Damaged(_) => "damaged",
            SessionError::BadInput(_) => "bad-input",
        }
    }
}

impl From<BundleError> for SessionError {
    fn from(e: BundleError) -> Self {
        SessionError::Model(e.to_string())
    }
}

impl From<HistoryError> for SessionError {
    fn from(e: HistoryError) -> Self {
        match e {
            HistoryError::Corrupt(_) | HistoryError::NotHistory => SessionError::Damaged(e.to_string()),
            other => SessionError::BadInput(other.to_string()),
        }
    }
}

fn vault_err(e: VaultError) -> SessionError {
    match e {
        VaultError::WrongKey => SessionError::WrongKey,
        other => SessionError::Damaged(other.to_string()),
    }
}

/// The model's files, as fetched.
pub struct ModelFiles<'a> {
    /// `manifest.json`.
    pub manifest: &'a [u8],
    /// `global.bin`.
    pub global: &'a [u8],
    /// `catalog.json`.
    pub catalog: &'a [u8],
    /// `items.shard`.
    pub shard: &'a [u8],
}

/// How the history is keyed.
pub enum Secret<'a> {
    /// A passphrase (PBKDF2; the salt and iterations live in the sealed header).
    Passphrase(&'a str),
    /// A random device key kept by the platform.
    DeviceKey([u8; 32]),
    /// A passphrase already run through PBKDF2-HMAC-SHA256 by the platform (WebCrypto) with
    /// these parameters: [`vault::kdf_params`] of the sealed history, or [`vault::new_salt`] and
    /// [`vault::PBKDF2_ITERATIONS`] for a new one.
    Derived {
        /// The 32 derived bytes.
        key: [u8; 32],
        /// Iterations used.
        iterations: u32,
        /// Salt used.
        salt: [u8; 16],
    },
}

/// Options of [`Session::recommend`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RecommendOptions {
    /// How many (default 10, at most 100).
    pub k: Option<usize>,
    /// Item ids never to recommend (rights, territory, "not interested").
    pub exclude: Vec<String>,
    /// MMR λ in [0, 1] (default 0.3).
    pub diversity: Option<f32>,
    /// Share of exploration slots in [0, 1] (default 0.1).
    pub explore: Option<f32>,
    /// The person's territory (ISO 3166-1 alpha-2, e.g. from the browser's locale): items whose
    /// rights do not allow it are not recommended; without one, items with territory rules are not.
    pub territory: Option<String>,
    /// Now, in ms since the Unix epoch (the caller's clock): items outside their availability
    /// window are not recommended; without it, items with a window are not.
    pub now: Option<f64>,
    /// The kind of use the list is for (`stream`, `download`, `remix`, …); unchecked when absent.
    pub usage: Option<String>,
    /// Items with a trust score below this are not recommended (default
    /// [`rights::DEFAULT_MIN_TRUST`]; items without a score are).
    pub min_trust: Option<f32>,
}

/// One recommendation, as the page shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Recommendation {
    /// Item id.
    pub id: String,
    /// Title.
    pub title: String,
    /// Calibrated "% match", 0–100.
    pub match_percent: u8,
    /// The person's raw score.
    pub score: f32,
    /// Why, in words.
    pub reason: String,
    /// The history item the reason names, if any.
    pub because_of: Option<String>,
    /// `personal`, `popular`, `both` or `explore`.
    pub source: &'static str,
}

/// One item of the person's history, as the page lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryItem {
    /// Item id.
    pub id: String,
    /// Title (the id when the catalog does not know it).
    pub title: String,
    /// Time of the latest event (ms).
    pub last: i64,
    /// Events per kind (only kinds that occurred).
    pub counts: HashMap<&'static str, u64>,
    /// The latest rating.
    pub rating: Option<f64>,
}

/// A catalog search result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Found {
    /// Item id.
    pub id: String,
    /// Title.
    pub title: String,
}

/// What the training worker needs: see [`Session::training_input`].
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingInput {
    /// The user tower's vector.
    pub start: Vec<f32>,
    /// Catalog indices of the positive items.
    pub positives: Vec<u32>,
    /// The link the model was trained with: fine-tuning must use the same.
    pub link: Link,
}

/// A recommendation in progress: see [`Session::query`].
#[derive(Debug, Clone)]
pub struct Query {
    k: usize,
    pool: usize,
    input: PersonInput,
    offset: Option<Vec<f32>>,
    seen: HashSet<u32>,
}

impl Query {
    /// What the user tower reads: the person's positive items and profile tags.
    pub fn input(&self) -> &PersonInput {
        &self.input
    }

    /// The person's fine-tuning offset (added to the tower's vector), when they have one.
    pub fn offset(&self) -> Option<&[f32]> {
        self.offset.as_deref()
    }

    /// How many int8 candidates the scan should return (before [`Session::refine`]).
    pub fn candidates(&self) -> usize {
        score::refine_candidates(self.pool)
    }
}

/// A model ready to serve: its verified files, the user tower and the int8 catalog. It does not
/// depend on the person's key, so a page loads it while the key is being derived, and keeps it
/// across unlock attempts.
pub struct ServedModel {
    catalog: Catalog,
    index: HashMap<String, u32>,
    lower_titles: Vec<String>,
    tower: UserTower,
    shard: CatalogShard,
    popular: Vec<u32>,
    calibration: Calibration,
    /// The manifest's verdict on the model (lean on popular lists when it is below 1).
    personal_trust: f32,
    model_version: u32,
    link: Link,
    /// Items with rights or a trust score: the only ones the catalog rules can exclude.
    restricted: Vec<u32>,
}

impl ServedModel {
    /// Verifies and loads the model's files: checksums, the shard's model version, and that the
    /// shard holds the catalog's items in order.
    pub fn load(files: &ModelFiles<'_>) -> Result<ServedModel, SessionError> {
        let mut read = |name: &str| -> Option<Vec<u8>> {
            match name {
                "manifest.json" => Some(files.manifest.to_vec()),
                "global.bin" => Some(files.global.to_vec()),
                "catalog.json" => Some(files.catalog.to_vec()),
                _ => None,
            }
        };
        let bundle = ModelBundle::from_files(SERVED_ARCHITECTURE, &mut read)?;
        let shard = CatalogShard::decode(files.shard).map_err(|e| SessionError::Shard(e.to_string()))?;
        let model = bundle.manifest.model_version.to_string();
        if shard.model_version() != model {
            return Err(SessionError::ModelVersion { shard: shard.model_version().to_owned(), model });
        }
        let ids_match = shard.len() == bundle.catalog.items.len()
            && shard.dim() == bundle.manifest.dims.dim
            && shard.ids().iter().zip(&bundle.catalog.items).all(|(a, b)| *a == b.id);
        if !ids_match {
            return Err(SessionError::Shard("it does not hold this model's catalog".into()));
        }
        bundle.check_shard(files.shard).map_err(|_| SessionError::Shard("it is not the catalog this model was published with (stale or replaced)".into()))?;
        let tower = UserTower::from_bundle(&bundle)?;
        let link = bundle.manifest.link().map_err(SessionError::Model)?;
        let catalog = bundle.catalog;
        let restricted = catalog.items.iter().enumerate().filter(|(_, it)| it.rights.is_some() || it.trust.is_some()).map(|(i, _)| i as u32).collect();
        Ok(ServedModel {
            index: catalog.items.iter().enumerate().map(|(i, it)| (it.id.clone(), i as u32)).collect(),
            lower_titles: catalog.items.iter().map(|it| it.title.to_lowercase()).collect(),
            popular: catalog.popular(),
            catalog,
            tower,
            shard,
            calibration: bundle.manifest.calibration.unwrap_or_default(),
            personal_trust: bundle.manifest.personal_trust(),
            model_version: bundle.manifest.model_version,
            link,
            restricted,
        })
    }

    /// The user tower the GPU tower is built from.
    pub fn tower(&self) -> &UserTower {
        &self.tower
    }

    /// The catalog as the GPU scorer uploads it.
    pub fn catalog_view(&self) -> CatalogView<'_> {
        self.shard.view()
    }
}

/// One person's hearth in a page.
pub struct Session {
    model: Rc<ServedModel>,
    history: History,
    key: Key,
    doc: DocId,
    seed: u64,
    dropped_tuning: Option<u32>,
}

impl Session {
    /// Opens the model and the person's history (`sealed`, as stored; `None` for a new person).
    /// `device` names this device in the history; `seed` seeds this session's exploration.
    pub fn open(files: &ModelFiles<'_>, sealed: Option<&[u8]>, secret: Secret<'_>, device: &str, seed: u64) -> Result<Session, SessionError> {
        Session::open_with(Rc::new(ServedModel::load(files)?), sealed, secret, device, seed)
    }

    /// Opens the person's history with a loaded model (see [`Session::open`]).
    pub fn open_with(model: Rc<ServedModel>, sealed: Option<&[u8]>, secret: Secret<'_>, device: &str, seed: u64) -> Result<Session, SessionError> {
        let key = match secret {
            Secret::Passphrase(p) => match sealed {
                Some(bytes) => Key::for_sealed(p, bytes),
                None if p.chars().count() < 8 => return Err(SessionError::BadInput("a passphrase needs at least 8 characters".into())),
                None => Key::from_passphrase(p),
            },
            Secret::DeviceKey(k) => Ok(Key::from_device_bytes(k)),
            Secret::Derived { key, iterations, salt } => Key::from_pbkdf2_output(key, iterations, salt),
        }
        .map_err(vault_err)?;
        let (doc, mut history) = match sealed {
            Some(bytes) => {
                let (doc, plain) = vault::open(&key, bytes).map_err(vault_err)?;
                (doc, History::load(&plain, device)?)
            }
            None => (vault::new_doc_id().map_err(vault_err)?, History::new(device)),
        };
        // An offset tuned against another model version's vectors means nothing for this one:
        // set it aside (the next save drops it) and say so; the worker tunes again.
        let dropped_tuning = match history.tuning() {
            Some(t) if t.model_version != model.model_version || t.offset.len() != model.shard.dim() => {
                history.set_tuning(None)?;
                Some(t.model_version)
            }
            _ => None,
        };
        Ok(Session { model, history, key, doc, seed, dropped_tuning })
    }

    /// The model version of a fine-tuning offset that was dropped when this session opened
    /// because it was made for another model (or shape); `None` if nothing was dropped.
    pub fn dropped_tuning(&self) -> Option<u32> {
        self.dropped_tuning
    }

    /// Records an event: `kind` is one of `view`, `play`, `like`, `dislike`, `skip`, `rate`
    /// (with `value`), `add`, `remove`. Returns the event id.
    pub fn record(&mut self, item: &str, kind: &str, value: Option<f64>, ts: i64, hour: Option<u8>) -> Result<String, SessionError> {
        if !self.model.index.contains_key(item) {
            return Err(SessionError::BadInput(format!("no item {item:?} in the catalog")));
        }
        let kind = match Kind::parse(kind, value) {
            Some(Kind::Rate(v)) if !(0.0..=5.0).contains(&v) => None,
            Some(k) => Some(k),
            None if kind == "rate" => None,
            None => return Err(SessionError::BadInput(format!("unknown event kind {kind:?}"))),
        }
        .ok_or_else(|| SessionError::BadInput("a rating needs a value from 0 to 5".into()))?;
        let id = self.history.record(item, kind, ts, hour, &[])?;
        if self.history.events().len() > COMPACT_AT {
            self.history.compact(KEEP_EVENTS)?;
        }
        Ok(id)
    }

    /// Recommendations for the person now, computed on the CPU (wasm SIMD in a browser).
    pub fn recommend(&self, opts: &RecommendOptions) -> Result<Vec<Recommendation>, SessionError> {
        let query = self.query(opts)?;
        let user = self.user_vector(&query);
        let personal = score::search(self.model.shard.view(), &user, query.pool, 1).map_err(|e| SessionError::Model(e.to_string()))?;
        self.rank(&query, &user, opts, &personal)
    }

    /// The first step of a recommendation: what the user tower reads of the history now, the
    /// fine-tuning offset, what is excluded as seen, and how many personal candidates ranking
    /// needs. Then the person's vector ([`Session::user_vector`] on the CPU, or the GPU tower),
    /// the scan ([`Query::candidates`] int8 hits, [`Session::refine`]d with the vector), and
    /// [`Session::rank`].
    pub fn query(&self, opts: &RecommendOptions) -> Result<Query, SessionError> {
        let k = opts.k.unwrap_or(10);
        if k == 0 || k > 100 {
            return Err(SessionError::BadInput("k must be 1 to 100".into()));
        }
        let (items, input) = self.person_input();
        let seen = items.iter().filter_map(|s| self.model.index.get(&s.item).copied()).collect();
        Ok(Query { k, pool: candidate_pool(k), input, offset: self.offset(), seen })
    }

    /// The person's vector for `query`, from the user tower on the CPU (plus their offset).
    pub fn user_vector(&self, query: &Query) -> Vec<f32> {
        let mut user = self.model.tower.person_vector(&query.input);
        if let Some(offset) = &query.offset {
            user.iter_mut().zip(offset).for_each(|(u, o)| *u += o);
        }
        user
    }

    /// The model this history is served by.
    pub fn model(&self) -> &Rc<ServedModel> {
        &self.model
    }

    /// The history's item signals and what the user tower reads of them.
    fn person_input(&self) -> (Vec<ItemSignal>, PersonInput) {
        let items = self.history.items();
        let input = self.model.catalog.person_input_of(&items, &self.history.profile(), |id| self.model.index.get(id).copied());
        (items, input)
    }

    /// The stored fine-tuning offset, when it fits this model.
    fn offset(&self) -> Option<Vec<f32>> {
        self.history
            .tuning()
            .filter(|t| t.model_version == self.model.model_version && t.offset.len() == self.model.shard.dim())
            .map(|t| t.offset)
    }

    /// What the training worker fine-tunes: the user tower's vector for the history now (without
    /// any earlier tuning) and the positive items' catalog indices. `None` without positives.
    pub fn training_input(&self) -> Option<TrainingInput> {
        let (_, input) = self.person_input();
        if input.history.is_empty() {
            return None;
        }
        Some(TrainingInput { start: self.model.tower.person_vector(&input), positives: input.history, link: self.model.link })
    }

    /// Stores the worker's result: from now on `tuned - start` is added to the tower's vector.
    pub fn set_tuned(&mut self, start: &[f32], tuned: &[f32], positives: u32) -> Result<(), SessionError> {
        let d = self.model.shard.dim();
        if start.len() != d || tuned.len() != d {
            return Err(SessionError::BadInput(format!("a tuned vector has {d} values")));
        }
        if start.iter().chain(tuned).any(|v| !v.is_finite()) {
            return Err(SessionError::BadInput("a tuned vector holds a value that is not finite".into()));
        }
        let offset = tuned.iter().zip(start).map(|(t, s)| t - s).collect();
        let tuning = Tuning { model_version: self.model.model_version, positives, offset };
        Ok(self.history.set_tuning(Some(&tuning))?)
    }

    /// How many positives the stored tuning was trained on and its size (L2 norm of the offset).
    pub fn tuning(&self) -> Option<(u32, f32)> {
        let positives = self.history.tuning()?.positives;
        self.offset().map(|o| (positives, o.iter().map(|v| v * v).sum::<f32>().sqrt()))
    }

    /// Re-ranks a GPU scorer's int8 candidates with the unquantized vector `user`, exactly as
    /// the CPU path does: the same candidates and vector give the same personal list on every
    /// scorer.
    pub fn refine(&self, query: &Query, user: &[f32], candidates: &[Hit]) -> Vec<Hit> {
        score::refine(self.model.shard.view(), user, candidates, query.pool)
    }

    /// The second half: exclusions, fusion with popularity, diversity, exploration, "% match"
    /// and reasons over the personal list `personal` (best first).
    pub fn rank(&self, query: &Query, user: &[f32], opts: &RecommendOptions, personal: &[Hit]) -> Result<Vec<Recommendation>, SessionError> {
        if user.len() != self.model.shard.dim() {
            return Err(SessionError::BadInput(format!("a user vector has {} values", self.model.shard.dim())));
        }
        let view = self.model.shard.view();
        let mut excluded: HashSet<u32> = opts.exclude.iter().filter_map(|id| self.model.index.get(id).copied()).collect();
        excluded.extend(self.unavailable(opts)?);
        let defaults = RankConfig::default();
        let cfg = RankConfig {
            k: query.k,
            diversity: opts.diversity.unwrap_or(defaults.diversity),
            explore: opts.explore.unwrap_or(defaults.explore),
            seed: self.seed,
            personal_trust: self.model.personal_trust,
            ..defaults
        };
        let ranked = rank(
            &RankInput {
                view,
                user,
                personal,
                popular: &self.model.popular,
                history: &query.input.history,
                seen: &query.seen,
                excluded: &excluded,
                calibration: self.model.calibration,
            },
            &cfg,
        )
        .map_err(|e| SessionError::BadInput(e.to_string()))?;
        Ok(ranked
            .into_iter()
            .map(|r| {
                let item = &self.model.catalog.items[r.index as usize];
                let because_of = match r.reason {
                    Reason::Similar { item: h, .. } => Some(&self.model.catalog.items[h as usize]),
                    _ => None,
                };
                let reason = reason_text(&r.reason, because_of.map(|i| i.title.as_str()));
                Recommendation {
                    id: item.id.clone(),
                    title: item.title.clone(),
                    match_percent: (r.confidence * 100.0).round().clamp(0.0, 100.0) as u8,
                    score: r.score,
                    reason,
                    because_of: because_of.map(|i| i.id.clone()),
                    source: match r.source {
                        Source::Personal => "personal",
                        Source::Popular => "popular",
                        Source::Both => "both",
                        Source::Explore => "explore",
                    },
                }
            })
            .collect())
    }

    /// Catalog items the catalog's rules keep off this list: not available in the caller's
    /// territory, at the caller's time, for the caller's usage, or trusted below the minimum.
    fn unavailable(&self, opts: &RecommendOptions) -> Result<Vec<u32>, SessionError> {
        let min_trust = opts.min_trust.unwrap_or(rights::DEFAULT_MIN_TRUST);
        if !(0.0..=1.0).contains(&min_trust) {
            return Err(SessionError::BadInput("minTrust must be from 0 to 1".into()));
        }
        // An unknown time passes no window (i64::MIN is before every `from`).
        let now = match opts.now {
            Some(t) if t.is_finite() => t as i64,
            Some(_) => return Err(SessionError::BadInput("now must be a time in ms".into())),
            None => i64::MIN,
        };
        let (territory, usage) = (opts.territory.as_deref(), opts.usage.as_deref());
        Ok(self
            .model
            .restricted
            .iter()
            .copied()
            .filter(|&i| {
                let item = &self.model.catalog.items[i as usize];
                let window_unknown = opts.now.is_none() && item.rights.as_ref().is_some_and(|r| r.from.is_some() || r.until.is_some());
                let allowed = item.rights.as_ref().is_none_or(|r| r.allows(territory, now, usage)) && !window_unknown;
                !allowed || item.trust.is_some_and(|t| t < min_trust)
            })
            .collect())
    }

    /// The person's history, most recent first.
    pub fn history(&self) -> Vec<HistoryItem> {
        let mut items = self.history.items();
        items.reverse();
        items
            .into_iter()
            .map(|s| HistoryItem {
                title: self.model.index.get(&s.item).map_or_else(|| s.item.clone(), |&i| self.model.catalog.items[i as usize].title.clone()),
                counts: KIND_NAMES.iter().zip(s.counts).filter(|(_, c)| *c > 0).map(|(k, c)| (*k, c)).collect(),
                id: s.item,
                last: s.last,
                rating: s.rating,
            })
            .collect()
    }

    /// Forgets an item everywhere (this device now, the others when they sync) and compacts, so
    /// what is saved next no longer holds it.
    pub fn forget(&mut self, item: &str, now: i64) -> Result<(), SessionError> {
        self.history.forget(item, now)?;
        self.history.compact(KEEP_EVENTS)?;
        Ok(())
    }

    /// Deletes the whole history (profile and settings too).
    pub fn wipe(&mut self, now: i64) -> Result<(), SessionError> {
        Ok(self.history.wipe(now)?)
    }

    /// Catalog titles containing `query` (case-insensitive), titles starting with it first.
    pub fn search(&self, query: &str, limit: usize) -> Vec<Found> {
        let q = query.trim().to_lowercase();
        if q.is_empty() {
            return vec![];
        }
        let mut hits: Vec<(bool, usize)> =
            self.model.lower_titles.iter().enumerate().filter(|(_, t)| t.contains(&q)).map(|(i, t)| (!t.starts_with(&q), i)).collect();
        hits.sort_unstable();
        hits.into_iter()
            .take(limit)
            .map(|(_, i)| Found { id: self.model.catalog.items[i].id.clone(), title: self.model.catalog.items[i].title.clone() })
            .collect()
    }

    /// The history sealed for storage (AES-256-GCM under the person's key).
    pub fn sealed(&mut self) -> Result<Vec<u8>, SessionError> {
        vault::seal(&self.key, self.doc, &self.history.save()).map_err(vault_err)
    }

    /// What to store now, by [`store::plan_save`]'s rule over the generations `stored` holds:
    /// the new sealed history as the current generation, and the last one that opens as the
    /// previous (never a damaged one over a good one). The caller writes both atomically, reads
    /// the current one back, then drops the previous one.
    pub fn save_plan(&mut self, stored: Generations) -> Result<Generations, SessionError> {
        store::plan_save(stored, &self.key, self.doc, &self.history.save()).map_err(|e| match e {
            StoreError::Vault(v) => vault_err(v),
            other => SessionError::Damaged(other.to_string()),
        })
    }

    /// The model version and catalog size.
    pub fn model_info(&self) -> (u32, usize, usize) {
        (self.model.model_version, self.model.shard.len(), self.model.shard.dim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_dir() -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/ml100k")
    }

    struct Files {
        manifest: Vec<u8>,
        global: Vec<u8>,
        catalog: Vec<u8>,
        shard: Vec<u8>,
    }

    fn files() -> Files {
        let read = |n: &str| std::fs::read(model_dir().join(n)).unwrap();
        Files { manifest: read("manifest.json"), global: read("global.bin"), catalog: read("catalog.json"), shard: read("items.shard") }
    }

    fn open(f: &Files, sealed: Option<&[u8]>, secret: Secret<'_>) -> Result<Session, SessionError> {
        Session::open(&ModelFiles { manifest: &f.manifest, global: &f.global, catalog: &f.catalog, shard: &f.shard }, sealed, secret, "phone", 7)
    }

    const PICKS: [&str; 5] =
        ["Star Wars (1977)", "Empire Strikes Back, The (1980)", "Return of the Jedi (1983)", "Raiders of the Lost Ark (1981)", "Terminator, The (1984)"];

    /// A session whose person rated the five [`PICKS`] 5 stars, and its default list.
    fn rated(f: &Files) -> (Session, Vec<Recommendation>) {
        let mut e = open(f, None, Secret::DeviceKey([1; 32])).unwrap();
        for (t, title) in PICKS.iter().enumerate() {
            let id = e.search(title, 1)[0].id.clone();
            e.record(&id, "rate", Some(5.0), 1_000 + t as i64, Some(20)).unwrap();
        }
        let recs = e.recommend(&RecommendOptions::default()).unwrap();
        (e, recs)
    }

    #[test]
    fn a_new_person_gets_ten_popular_films() {
        let f = files();
        let e = open(&f, None, Secret::DeviceKey([1; 32])).unwrap();
        let cold = e.recommend(&RecommendOptions::default()).unwrap();
        assert_eq!(cold.len(), 10);
        assert!(cold.iter().filter(|r| r.source != "explore").all(|r| r.reason == "Popular with everyone"));
        assert_eq!(e.search("star wars", 5)[0].title, "Star Wars (1977)");
    }

    #[test]
    fn five_rated_films_give_ten_others_most_with_a_reason() {
        let f = files();
        let (e, recs) = rated(&f);
        assert_eq!(e.history().len(), 5);
        assert_eq!(recs.len(), 10);
        assert!(recs.iter().all(|r| !PICKS.contains(&r.title.as_str())), "rated films are not recommended");
        let because = recs.iter().filter(|r| r.because_of.is_some()).count();
        assert!(because >= 8, "{recs:#?}");
        assert!(recs.iter().all(|r| r.match_percent <= 100));
        assert!(recs[0].match_percent > 50, "{recs:#?}");
    }

    #[test]
    fn reopened_from_its_sealed_bytes_the_history_and_the_list_are_the_same_and_another_key_is_refused() {
        let f = files();
        let (mut e, recs) = rated(&f);
        let sealed = e.sealed().unwrap();
        assert!(!sealed.windows(9).any(|w| w == b"Star Wars"), "sealed bytes hold no title");
        let again = open(&f, Some(&sealed), Secret::DeviceKey([1; 32])).unwrap();
        assert_eq!(again.history(), e.history());
        assert_eq!(again.recommend(&RecommendOptions::default()).unwrap(), recs, "same seed, same list");
        assert_eq!(open(&f, Some(&sealed), Secret::DeviceKey([2; 32])).err(), Some(SessionError::WrongKey));
    }

    #[test]
    fn an_excluded_film_leaves_the_list_and_forget_and_wipe_empty_the_history() {
        let f = files();
        let (mut e, recs) = rated(&f);
        let first = recs[0].id.clone();
        let without = e.recommend(&RecommendOptions { exclude: vec![first.clone()], ..Default::default() }).unwrap();
        assert!(without.iter().all(|r| r.id != first));
        let gone = e.history()[0].id.clone();
        e.forget(&gone, 10_000).unwrap();
        assert_eq!(e.history().len(), 4);
        e.wipe(20_000).unwrap();
        assert!(e.history().is_empty());
    }

    /// A session whose person liked three films, with its training input, list options (no
    /// exploration) and untuned list.
    fn liked(f: &Files) -> (Session, TrainingInput, RecommendOptions, Vec<Recommendation>) {
        let mut e = open(f, None, Secret::DeviceKey([4; 32])).unwrap();
        assert_eq!(e.training_input(), None);
        for item in ["50", "172", "181"] {
            e.record(item, "like", None, 1, None).unwrap();
        }
        let input = e.training_input().unwrap();
        let opts = RecommendOptions { explore: Some(0.0), ..Default::default() };
        let plain = e.recommend(&opts).unwrap();
        (e, input, opts, plain)
    }

    /// Tuned towards one unseen film's vector.
    fn tuned_towards_film_400(e: &Session, start: &[f32]) -> Vec<f32> {
        let target = e.model().catalog_view().dequantize(400).into_iter().map(|v| v * 5.0);
        start.iter().zip(target).map(|(a, b)| a + b).collect()
    }

    /// The worker's result moves the vector recommendations are scored with and survives sealing.
    #[test]
    fn a_tuned_vector_is_what_is_scored_and_it_survives_sealing() {
        let f = files();
        let (mut e, input, opts, plain) = liked(&f);
        assert_eq!(input.link, Link::Softplus, "fine-tuning uses the link the committed model was trained with");
        assert_eq!(input.positives.len(), 3);
        assert_eq!(e.user_vector(&e.query(&opts).unwrap()), input.start);
        let tuned = tuned_towards_film_400(&e, &input.start);
        e.set_tuned(&input.start, &tuned, 3).unwrap();
        assert_eq!(e.tuning().map(|t| t.0), Some(3));
        let moved = e.recommend(&opts).unwrap();
        assert_ne!(moved, plain);
        let now = e.user_vector(&e.query(&opts).unwrap());
        assert!(now.iter().zip(&tuned).all(|(a, b)| (a - b).abs() < 1e-4), "the tuned vector is what is scored");
        let again = open(&f, Some(&e.sealed().unwrap()), Secret::DeviceKey([4; 32])).unwrap();
        assert_eq!(again.recommend(&opts).unwrap(), moved);
        assert_eq!(again.dropped_tuning(), None);
    }

    #[test]
    fn a_tuning_of_the_wrong_width_or_with_a_nan_is_refused_and_changes_nothing() {
        let f = files();
        let (mut e, input, opts, _) = liked(&f);
        let tuned = tuned_towards_film_400(&e, &input.start);
        e.set_tuned(&input.start, &tuned, 3).unwrap();
        let moved = e.recommend(&opts).unwrap();
        assert_eq!(e.set_tuned(&input.start[1..], &tuned, 3).err().map(|e| e.code()), Some("bad-input"));
        let mut nan = tuned.clone();
        nan[5] = f32::NAN;
        assert_eq!(e.set_tuned(&input.start, &nan, 3).err().map(|e| e.code()), Some("bad-input"));
        assert_eq!(e.recommend(&opts).unwrap(), moved, "a refused tuning changes nothing");
    }

    /// An offset made for another model version (the model was republished since): ignored while
    /// this session runs, dropped and reported when the history is next opened.
    #[test]
    fn a_tuning_for_another_model_version_is_ignored_then_dropped_and_reported_at_the_next_open() {
        let f = files();
        let (mut e, _, opts, plain) = liked(&f);
        e.history.set_tuning(Some(&Tuning { model_version: 99, positives: 3, offset: vec![1.0; 64] })).unwrap();
        assert_eq!(e.tuning(), None);
        assert_eq!(e.recommend(&opts).unwrap(), plain);
        let mut reopened = open(&f, Some(&e.sealed().unwrap()), Secret::DeviceKey([4; 32])).unwrap();
        assert_eq!(reopened.dropped_tuning(), Some(99));
        assert_eq!(reopened.tuning(), None);
        assert_eq!(reopened.recommend(&opts).unwrap(), plain);
        let saved = reopened.sealed().unwrap();
        let (_, plain_doc) = vault::open(&Key::from_device_bytes([4; 32]), &saved).unwrap();
        assert_eq!(History::load(&plain_doc, "x").unwrap().tuning(), None, "the next save no longer holds it");
        assert_eq!(open(&f, Some(&saved), Secret::DeviceKey([4; 32])).unwrap().dropped_tuning(), None);
    }

    #[test]
    fn a_damaged_stale_or_other_version_shard_is_refused() {
        let mut bad = files();
        let n = bad.shard.len();
        bad.shard[n / 2] ^= 1;
        assert_eq!(open(&bad, None, Secret::DeviceKey([1; 32])).err().map(|e| e.code()), Some("shard"));
        let mut other = files();
        let mut shard = CatalogShard::decode(&other.shard).unwrap();
        let v = shard.view();
        shard = CatalogShard::from_parts("2", shard.ids().to_vec(), shard.dim(), v.scales().to_vec(), v.rows().to_vec()).unwrap();
        other.shard = shard.encode();
        assert_eq!(open(&other, None, Secret::DeviceKey([1; 32])).err().map(|e| e.code()), Some("model-version"));
        // A shard of the same version and items but other vectors (a stale training's): its
        // digest is not the manifest's.
        let mut stale = files();
        let shard = CatalogShard::decode(&stale.shard).unwrap();
        let v = shard.view();
        let mut rows = v.rows().to_vec();
        rows[0] = if rows[0] == 0 { 1 } else { 0 };
        stale.shard = CatalogShard::from_parts(shard.model_version(), shard.ids().to_vec(), shard.dim(), v.scales().to_vec(), rows).unwrap().encode();
        let err = open(&stale, None, Secret::DeviceKey([1; 32])).err().unwrap();
        assert_eq!(err.code(), "shard", "{err}");
        assert!(err.to_string().contains("stale or replaced"), "{err}");
    }

    #[test]
    fn damaged_parameters_and_an_unknown_link_are_refused() {
        let mut broken = files();
        broken.global[100] ^= 1;
        assert_eq!(open(&broken, None, Secret::DeviceKey([1; 32])).err().map(|e| e.code()), Some("model"));
        // A link this build does not know: fine-tuning could not match training, so the model is refused.
        let mut unknown = files();
        let mut m: serde_json::Value = serde_json::from_slice(&unknown.manifest).unwrap();
        m["hyper"]["link"] = "cubic".into();
        unknown.manifest = serde_json::to_vec(&m).unwrap();
        let err = open(&unknown, None, Secret::DeviceKey([1; 32])).err().unwrap();
        assert_eq!(err.code(), "model", "{err}");
        assert!(err.to_string().contains("unknown link"), "{err}");
        // Models trained before links record none: the plain softmax.
        m["hyper"].as_object_mut().unwrap().remove("link");
        unknown.manifest = serde_json::to_vec(&m).unwrap();
        let mut old = open(&unknown, None, Secret::DeviceKey([1; 32])).unwrap();
        old.record("1", "like", None, 1, None).unwrap();
        assert_eq!(old.training_input().unwrap().link, Link::Exp);
    }

    #[test]
    fn wrong_passphrases_damaged_histories_and_bad_input_are_typed_errors() {
        let f = files();
        let mut e = open(&f, None, Secret::Passphrase("correct horse battery")).unwrap();
        e.record("1", "like", None, 1, None).unwrap();
        let sealed = e.sealed().unwrap();
        assert_eq!(open(&f, Some(&sealed), Secret::Passphrase("wrong horse battery")).err(), Some(SessionError::WrongKey));
        assert_eq!(open(&f, Some(&sealed[..sealed.len() - 5]), Secret::Passphrase("correct horse battery")).err().map(|e| e.code()), Some("damaged"));
        assert_eq!(open(&f, None, Secret::Passphrase("short")).err().map(|e| e.code()), Some("bad-input"));
        assert_eq!(e.record("no-such-item", "like", None, 2, None).err().map(|e| e.code()), Some("bad-input"));
        assert_eq!(e.record("1", "rate", Some(9.0), 2, None).err().map(|e| e.code()), Some("bad-input"));
        assert_eq!(e.record("1", "teleport", None, 2, None).err().map(|e| e.code()), Some("bad-input"));
        assert_eq!(e.recommend(&RecommendOptions { k: Some(0), ..Default::default() }).err().map(|e| e.code()), Some("bad-input"));
        assert_eq!(e.history().len(), 1, "nothing was lost");
    }

    /// A hand-made catalog: the committed model's, with rights and trust on the films the person
    /// would be shown. Territory, time and usage come from the caller.
    #[test]
    fn catalog_rights_and_trust_keep_items_off_the_list() {
        let mut f = files();
        let picks = ["50", "172", "181", "174", "210"];
        let list = |f: &Files, opts: &RecommendOptions| -> Vec<String> {
            let mut e = open(f, None, Secret::DeviceKey([5; 32])).unwrap();
            for (t, id) in picks.iter().enumerate() {
                e.record(id, "rate", Some(5.0), t as i64, None).unwrap();
            }
            e.recommend(&RecommendOptions { k: Some(20), explore: Some(0.0), ..opts.clone() }).unwrap().into_iter().map(|r| r.id).collect()
        };
        let plain = list(&f, &RecommendOptions::default());
        let (a, b, c, d, e) = (&plain[0], &plain[1], &plain[2], &plain[3], &plain[4]);
        let mut catalog: serde_json::Value = serde_json::from_slice(&f.catalog).unwrap();
        for item in catalog["items"].as_array_mut().unwrap() {
            let id = item["id"].as_str().unwrap().to_owned();
            let rule = |cell: &str| serde_json::to_value(crate::data::rights::Rights::parse(cell).unwrap()).unwrap();
            if id == *a {
                item["rights"] = rule("territories=CH,LI");
            } else if id == *b {
                item["rights"] = rule("exclude=CH");
            } else if id == *c {
                item["rights"] = rule("until=2020-01-01");
            } else if id == *d {
                item["trust"] = 0.3.into();
            } else if id == *e {
                item["trust"] = 0.9.into();
                item["rights"] = rule("usage=download");
            }
        }
        f.catalog = serde_json::to_vec(&catalog).unwrap();
        let mut manifest: serde_json::Value = serde_json::from_slice(&f.manifest).unwrap();
        manifest["files"]["catalog.json"] = crate::data::hex(crate::artifact::sha256(&f.catalog).as_ref()).into();
        f.manifest = serde_json::to_vec(&manifest).unwrap();

        let now = Some(1_767_225_600_000.0); // 2026-01-01
        let ch = RecommendOptions { territory: Some("CH".into()), now, usage: Some("stream".into()), ..Default::default() };
        let got = list(&f, &ch);
        assert!(got.contains(a), "allowed in CH");
        for (id, why) in [(b, "excluded in CH"), (c, "its window ended"), (d, "trust 0.3 < 0.6"), (e, "download only")] {
            assert!(!got.contains(id), "{why}: {got:?}");
        }
        let us = list(&f, &RecommendOptions { territory: Some("us".into()), ..ch.clone() });
        assert!(!us.contains(a) && us.contains(b), "{us:?}");
        let lenient = list(&f, &RecommendOptions { min_trust: Some(0.2), usage: None, ..ch.clone() });
        assert!(lenient.contains(d) && lenient.contains(e), "{lenient:?}");
        let unknown = list(&f, &RecommendOptions::default());
        for id in [a, b, c] {
            assert!(!unknown.contains(id), "without territory and time, rules are honoured conservatively: {unknown:?}");
        }
        assert_eq!(
            open(&f, None, Secret::DeviceKey([5; 32])).unwrap().recommend(&RecommendOptions { min_trust: Some(2.0), ..Default::default() }).err().map(|e| e.code()),
            Some("bad-input")
        );
        // MovieLens items carry no rules: the caller's territory and time change nothing.
        assert_eq!(list(&files(), &ch), plain);
    }
}
