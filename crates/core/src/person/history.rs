//! A person's history as an automerge document, replicated across their devices.
//!
//! Layout of the document's root map (every key is written by one device only, so concurrent
//! edits never hide each other's objects):
//! - `"format"` = `"hearth-history"`, `"version"` = 1, `"epoch"` (number) and `"epoch_id"`
//!   (8 random bytes): written once when the document is made (see *Compaction*);
//! - `"e:<device>:<seq:016x>:<nonce:08x>"` → an event, one JSON text value `{item, kind,
//!   value?, ts, device, hour?, ctx?: {key: value}}` (immutable once written; one value instead
//!   of a map of fields makes recording about 7× cheaper in automerge);
//! - `"s:<device>:<item>"` → a summary, JSON text `{item, device, upto, first, last, counts[8],
//!   rating?: [value, ts]}`: every event of that device and item with `seq` ≤ `upto`, folded;
//! - `"f:<hash>:<device>:<seq:016x>"` → forget tombstone, the time of the forget (ms), filed under
//!   a hash of the item id (the id itself is gone once compacted): the item's events with `ts` ≤ the
//!   latest tombstone, and its summaries that fold any such event, are removed wherever they are
//!   seen, including copies that arrive later from a device that recorded them before the forget;
//! - `"w:<device>:<seq:016x>"` → wipe mark, the time of a wipe: a forget of every item;
//! - `"p:age_band"`, `"p:locale"` (the profile, used only on the device) and
//!   `"c:federated"`, `"c:privacy_budget"` (settings): last writer wins.
//! - `"t:personal"`: the person's fine-tuned embedding offset ([`Tuning`], JSON): last writer wins.
//! - `"l:<device>:<round>"` → one federated round's privacy spend, and `"r:<round>:<device>"` → a
//!   device's claim to contribute to a round (JSON, written once by that device; read and written
//!   by `hearth_core::privacy::ledger`). They outlive compaction and wipes: a budget spent stays
//!   spent.
//!
//! # Compaction
//!
//! automerge keeps every change, deleted values included, so [`History::compact`] starts a new
//! *epoch*: a fresh document holding only the live state, with old events folded into per-device,
//! per-item summaries (a prefix of that device's events of the item, by sequence number, so two
//! devices that fold concurrently agree: the summary with the larger `upto` folds a superset).
//! Forgotten events and the old change history are not in what is saved afterwards. A replica
//! still on an older epoch [adopts](History::adopt) the newer snapshot and carries over
//! whatever it has that the snapshot neither holds nor folds nor forgets (its offline edits);
//! [`crate::person::sync`] does this handshake. Concurrent compactions are ordered by `(epoch, epoch_id)`.
//!
//! ```
//! use hearth_core::person::history::{History, Kind};
//! let mut h = History::new("phone");
//! h.record("movie-1", Kind::Like, 1_000, None, &[]).unwrap();
//! h.record("movie-2", Kind::Rate(4.5), 2_000, Some(21), &[("screen", "tv")]).unwrap();
//! h.forget("movie-1", 3_000).unwrap();
//! let again = History::load(&h.save(), "laptop").unwrap();
//! assert_eq!(again.events().len(), 1);
//! assert_eq!(again.events()[0].item, "movie-2");
//! ```

use std::collections::{BTreeMap, HashMap};

use automerge::sync::{Message, State, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{AutoCommit, PatchAction, Prop, ReadDoc, ScalarValue, Value, ROOT};

/// Format name stored in the document.
pub const HISTORY_FORMAT: &str = "hearth-history";
/// Document layout version.
pub const HISTORY_VERSION: i64 = 1;
/// Longest item id, device name or context string accepted.
pub const MAX_STRING: usize = 512;
/// Kind names in [`Summary::counts`] / [`ItemSignal::counts`] order.
pub const KIND_NAMES: [&str; 8] = ["view", "play", "like", "dislike", "skip", "rate", "add", "remove"];

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// Looked at the item's page.
    View,
    /// Played it.
    Play,
    /// Liked it.
    Like,
    /// Disliked it.
    Dislike,
    /// Skipped it.
    Skip,
    /// Rated it (the value, e.g. 1–5).
    Rate(f64),
    /// Added it to a list.
    Add,
    /// Removed it from a list.
    Remove,
}

impl Kind {
    /// Position in [`KIND_NAMES`].
    pub fn index(self) -> usize {
        match self {
            Kind::View => 0,
            Kind::Play => 1,
            Kind::Like => 2,
            Kind::Dislike => 3,
            Kind::Skip => 4,
            Kind::Rate(_) => 5,
            Kind::Add => 6,
            Kind::Remove => 7,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Play => "play",
            Kind::Like => "like",
            Kind::Dislike => "dislike",
            Kind::Skip => "skip",
            Kind::Rate(_) => "rate",
            Kind::Add => "add",
            Kind::Remove => "remove",
        }
    }

    /// The kind named `name` ([`KIND_NAMES`]); `rate` needs its `value`. `None` for anything else.
    pub fn parse(name: &str, value: Option<f64>) -> Option<Kind> {
        Some(match name {
            "view" => Kind::View,
            "play" => Kind::Play,
            "like" => Kind::Like,
            "dislike" => Kind::Dislike,
            "skip" => Kind::Skip,
            "rate" => Kind::Rate(value?),
            "add" => Kind::Add,
            "remove" => Kind::Remove,
            _ => return None,
        })
    }
}

/// One recorded event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Its key in the document (unique across devices).
    pub id: String,
    /// The item.
    pub item: String,
    /// What happened.
    pub kind: Kind,
    /// When, in milliseconds since the Unix epoch (the caller's clock).
    pub ts: i64,
    /// The device that recorded it.
    pub device: String,
    /// Local hour of day (0–23), if known.
    pub hour: Option<u8>,
    /// Free-form context.
    pub context: BTreeMap<String, String>,
}

/// Which generation of the document a replica holds: compaction starts a new one. Ordered by
/// number, then id (so concurrent compactions agree on a winner).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch {
    /// 0 for an empty replica that has not received a document yet; 1 for a new history.
    pub number: u64,
    /// Random, chosen by the replica that started the epoch.
    pub id: [u8; 8],
}

/// Events of one item recorded on one device, folded by compaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The item.
    pub item: String,
    /// The device that recorded the events.
    pub device: String,
    /// Every event of this device and item with a sequence number ≤ `upto` is folded in.
    pub upto: u64,
    /// Time of the oldest folded event.
    pub first: i64,
    /// Time of the newest folded event.
    pub last: i64,
    /// Events per kind, in [`KIND_NAMES`] order.
    pub counts: [u64; 8],
    /// The newest rating folded in, and its time.
    pub rating: Option<(f64, i64)>,
}

impl Summary {
    fn fold(&mut self, e: &Event, seq: u64) {
        self.upto = self.upto.max(seq);
        self.first = self.first.min(e.ts);
        self.last = self.last.max(e.ts);
        self.counts[e.kind.index()] += 1;
        if let Kind::Rate(v) = e.kind
            && self.rating.is_none_or(|(_, t)| e.ts >= t)
        {
            self.rating = Some((v, e.ts));
        }
    }

    fn key(&self) -> String {
        format!("s:{}:{}", self.device, self.item)
    }
}

/// Everything the history holds about one item, live events and summaries together: what the
/// user tower and ranking read.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemSignal {
    /// The item.
    pub item: String,
    /// Events per kind, in [`KIND_NAMES`] order.
    pub counts: [u64; 8],
    /// Time of the first event.
    pub first: i64,
    /// Time of the latest event.
    pub last: i64,
    /// The latest rating.
    pub rating: Option<f64>,
}

impl ItemSignal {
    /// More engagement (view, play, like, rate, add) than rejection (dislike, skip, remove).
    pub fn is_positive(&self) -> bool {
        let c = &self.counts;
        c[0] + c[1] + c[2] + c[5] + c[6] > c[3] + c[4] + c[7]
    }
}

/// What forgets and wipes cover: an item's events with `ts` ≤ the time.
#[derive(Default)]
struct Forgets {
    by_hash: HashMap<String, i64>,
    wiped: Option<i64>,
}

impl Forgets {
    fn is_empty(&self) -> bool {
        self.by_hash.is_empty() && self.wiped.is_none()
    }

    fn covers(&self, item: &str, ts: i64) -> bool {
        self.wiped.is_some_and(|w| ts <= w) || (!self.by_hash.is_empty() && self.by_hash.get(&item_hash(item)).is_some_and(|&t| ts <= t))
    }
}

/// The name a forget tombstone files an item under: the item id is not kept.
fn item_hash(item: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, [b"hearth forget v1\0".as_slice(), item.as_bytes()].concat().as_slice());
    crate::data::hex(&d.as_ref()[..16])
}

fn seq_of_event_key(key: &str) -> Option<u64> {
    // "e:<device>:<seq>:<nonce>"
    let mut parts = key.rsplitn(3, ':');
    let (_nonce, seq) = (parts.next()?, parts.next()?);
    u64::from_str_radix(seq, 16).ok()
}

fn random_bytes<const N: usize>() -> Result<[u8; N], HistoryError> {
    crate::platform::random().map_err(|_| HistoryError::BadValue("the system random generator failed"))
}

/// The person's profile (used only on their devices).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    /// Age band, e.g. "25-34".
    pub age_band: Option<String>,
    /// Locale, e.g. "de-CH".
    pub locale: Option<String>,
}

/// The person's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Whether this person takes part in federated rounds.
    pub federated: bool,
    /// Their total privacy budget (ε) for federated rounds.
    pub privacy_budget: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { federated: false, privacy_budget: 8.0 }
    }
}

/// The person's fine-tuned embedding, as an offset added to the user tower's output (see
/// `hearth_core::model::tune`). Only meaningful for the model version it was trained against.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Tuning {
    /// The model version whose tower and catalog it was trained with.
    pub model_version: u32,
    /// How many positive items it was trained on.
    pub positives: u32,
    /// `tuned - tower output`, one value per embedding dimension.
    pub offset: Vec<f32>,
}

/// Why a history operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// The bytes are not an automerge document.
    #[error("not an automerge document: {0}")]
    Corrupt(String),
    /// An automerge document, but not a hearth history of a version this build reads.
    #[error("not a hearth history document of a supported version")]
    NotHistory,
    /// A string argument is empty or too long.
    #[error("{0} must be 1 to {MAX_STRING} bytes")]
    BadString(&'static str),
    /// A number argument is out of range.
    #[error("{0}")]
    BadValue(&'static str),
    /// automerge refused an operation.
    #[error("document operation failed: {0}")]
    Doc(String),
}

/// What [`History::compact`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// Events folded into summaries.
    pub folded: usize,
    /// Live events kept as they are.
    pub kept: usize,
    /// Summaries in the new document.
    pub summaries: usize,
    /// The new epoch.
    pub epoch: Epoch,
}

fn doc_err(e: automerge::AutomergeError) -> HistoryError {
    HistoryError::Doc(e.to_string())
}

fn check(s: &str, what: &'static str) -> Result<(), HistoryError> {
    if s.is_empty() || s.len() > MAX_STRING {
        return Err(HistoryError::BadString(what));
    }
    Ok(())
}

/// A parsed root entry of the document (the index reads never go back to automerge for).
#[derive(Debug, Clone)]
enum Entry {
    Event(Event),
    Summary(Summary),
    Forget(String, i64),
    Wipe(i64),
}

/// One replica of a person's history.
///
/// Reads come from an index of the parsed root entries, kept current from automerge's patches
/// (an automerge read costs microseconds each; a history of 10,000 events is read in about a
/// millisecond from the index instead of a tenth of a second from the document).
pub struct History {
    doc: AutoCommit,
    device: String,
    next_seq: u64,
    index: BTreeMap<String, Entry>,
}

fn keyed(summaries: Vec<Summary>) -> HashMap<(String, String), Summary> {
    summaries.into_iter().map(|s| ((s.device.clone(), s.item.clone()), s)).collect()
}

fn folded(summaries: &HashMap<(String, String), Summary>, e: &Event) -> bool {
    // Summaries are few per device; the key lookup allocates, so check the cheap part first.
    !summaries.is_empty()
        && summaries
            .get(&(e.device.clone(), e.item.clone()))
            .is_some_and(|s| seq_of_event_key(&e.id).is_some_and(|seq| seq <= s.upto))
}

fn fresh_doc(epoch: Epoch) -> AutoCommit {
    let mut doc = AutoCommit::new();
    // Root scalars of a new document: written once, by the replica that makes it.
    let _ = doc.put(ROOT, "format", HISTORY_FORMAT);
    let _ = doc.put(ROOT, "version", HISTORY_VERSION);
    let _ = doc.put(ROOT, "epoch", epoch.number);
    let _ = doc.put(ROOT, "epoch_id", ScalarValue::Bytes(epoch.id.to_vec()));
    doc
}

/// An event as stored: one JSON text value (events are immutable, and one value per event is
/// about seven times cheaper for automerge than a map of fields).
#[derive(serde::Serialize, serde::Deserialize)]
struct EventRecord<'a> {
    item: std::borrow::Cow<'a, str>,
    kind: std::borrow::Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<f64>,
    ts: i64,
    device: std::borrow::Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hour: Option<u8>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    ctx: BTreeMap<String, String>,
}

/// A summary as stored: one JSON text value.
#[derive(serde::Serialize, serde::Deserialize)]
struct SummaryRecord {
    item: String,
    device: String,
    upto: u64,
    first: i64,
    last: i64,
    counts: [u64; 8],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rating: Option<(f64, i64)>,
}

fn json_err(e: serde_json::Error) -> HistoryError {
    HistoryError::Doc(e.to_string())
}

fn write_event(d: &mut AutoCommit, ev: &Event) -> Result<(), HistoryError> {
    let value = if let Kind::Rate(v) = ev.kind { Some(v) } else { None };
    let rec = EventRecord {
        item: ev.item.as_str().into(),
        kind: ev.kind.name().into(),
        value,
        ts: ev.ts,
        device: ev.device.as_str().into(),
        hour: ev.hour,
        ctx: ev.context.clone(),
    };
    d.put(ROOT, ev.id.as_str(), serde_json::to_string(&rec).map_err(json_err)?).map_err(doc_err)
}

fn parse_event(id: &str, text: &str) -> Option<Event> {
    let r: EventRecord = serde_json::from_str(text).ok()?;
    let ok = |s: &str| !s.is_empty() && s.len() <= MAX_STRING;
    if !ok(&r.item) || !ok(&r.device) || r.hour.is_some_and(|h| h > 23) || r.value.is_some_and(|v| !v.is_finite()) {
        return None;
    }
    Some(Event {
        id: id.to_owned(),
        kind: Kind::parse(&r.kind, r.value)?,
        item: r.item.into_owned(),
        ts: r.ts,
        device: r.device.into_owned(),
        hour: r.hour,
        context: r.ctx,
    })
}

fn write_summary(d: &mut AutoCommit, s: &Summary) -> Result<(), HistoryError> {
    let rec = SummaryRecord {
        item: s.item.clone(),
        device: s.device.clone(),
        upto: s.upto,
        first: s.first,
        last: s.last,
        counts: s.counts,
        rating: s.rating,
    };
    d.put(ROOT, s.key().as_str(), serde_json::to_string(&rec).map_err(json_err)?).map_err(doc_err)
}

fn parse_summary(text: &str) -> Option<Summary> {
    let r: SummaryRecord = serde_json::from_str(text).ok()?;
    if r.first > r.last || r.rating.is_some_and(|(v, _)| !v.is_finite()) {
        return None;
    }
    Some(Summary { item: r.item, device: r.device, upto: r.upto, first: r.first, last: r.last, counts: r.counts, rating: r.rating })
}

impl History {
    /// A new, empty history created on `device`.
    pub fn new(device: &str) -> History {
        let id = random_bytes().unwrap_or_default();
        History::with_doc(fresh_doc(Epoch { number: 1, id }), device)
    }

    /// An empty replica for a new device, to be filled by sync (no root values of its own).
    pub fn empty(device: &str) -> History {
        History::with_doc(AutoCommit::new(), device)
    }

    /// Loads a saved history on `device`.
    pub fn load(bytes: &[u8], device: &str) -> Result<History, HistoryError> {
        let doc = AutoCommit::load(bytes).map_err(|e| HistoryError::Corrupt(e.to_string()))?;
        let mut h = History::with_doc(doc, device);
        h.check_format()?;
        h.next_seq = h.max_seq_of(device).map_or(0, |s| s + 1);
        Ok(h)
    }

    fn with_doc(doc: AutoCommit, device: &str) -> History {
        let mut h = History { doc, device: device.to_owned(), next_seq: 0, index: BTreeMap::new() };
        // One pass over the root map; only keys with concurrent values are read again.
        let mut index = BTreeMap::new();
        let mut conflicted = vec![];
        for item in h.doc.map_range(ROOT, ..) {
            let key = item.key.to_string();
            let text = match &item.value {
                automerge::ValueRef::Scalar(automerge::ScalarValueRef::Str(t)) => Some(t.as_ref()),
                _ => None,
            };
            let entry = match (key.get(..2), text) {
                (Some("e:"), Some(t)) => parse_event(&key, t).map(Entry::Event),
                (Some("s:"), _) => {
                    conflicted.push(key.clone());
                    None
                }
                _ => None,
            };
            match entry {
                Some(e) => {
                    index.insert(key, e);
                }
                None if key.starts_with("f:") || key.starts_with("w:") => conflicted.push(key),
                None => {}
            }
        }
        h.index = index;
        h.reindex(conflicted);
        h.doc.update_diff_cursor();
        h
    }

    fn parse_entry(&self, key: &str) -> Option<Entry> {
        let scalar_ts = || self.scalar(key).and_then(|v| v.to_i64());
        match key.get(..2)? {
            "e:" => self.read_event(key).map(Entry::Event),
            "s:" => self.read_summary(key).map(Entry::Summary),
            "f:" => Some(Entry::Forget(key[2..].split(':').next()?.to_owned(), scalar_ts()?)),
            "w:" => scalar_ts().map(Entry::Wipe),
            _ => None,
        }
    }

    fn reindex(&mut self, keys: impl IntoIterator<Item = String>) {
        for k in keys {
            match self.parse_entry(&k) {
                Some(e) => self.index.insert(k, e),
                None => self.index.remove(&k),
            };
        }
    }

    /// Brings the index up to date with changes that came from elsewhere (sync, merge).
    fn refresh(&mut self) {
        let mut keys = std::collections::BTreeSet::new();
        for p in self.doc.diff_incremental() {
            if p.obj == ROOT {
                match p.action {
                    PatchAction::PutMap { key, .. } | PatchAction::DeleteMap { key } => keys.insert(key),
                    PatchAction::Conflict { prop: Prop::Map(key) } => keys.insert(key),
                    _ => false,
                };
            } else if let Some((_, Prop::Map(key))) = p.path.into_iter().next() {
                keys.insert(key);
            }
        }
        self.reindex(keys);
    }

    /// The next automerge sync message for a peer with sync state `state`, if any.
    pub fn generate_sync_message(&mut self, state: &mut State) -> Option<Message> {
        self.doc.sync().generate_sync_message(state)
    }

    /// Applies an automerge sync message from a peer, then removes what tombstones and
    /// summaries cover.
    pub fn receive_sync_message(&mut self, state: &mut State, msg: Message) -> Result<(), HistoryError> {
        let r = self.doc.sync().receive_sync_message(state, msg).map_err(|e| HistoryError::Doc(e.to_string()));
        self.refresh();
        r?;
        self.sweep()
    }

    /// Merges another replica of the same epoch into this one (both in memory).
    pub fn merge(&mut self, other: &mut History) -> Result<(), HistoryError> {
        let r = self.doc.merge(&mut other.doc).map(|_| ()).map_err(doc_err);
        self.refresh();
        r?;
        self.sweep()
    }

    /// The underlying automerge document (read only: every change goes through `History`).
    pub fn doc(&self) -> &AutoCommit {
        &self.doc
    }

    /// The document's epoch ([`Epoch::default`] for an empty replica).
    pub fn epoch(&self) -> Epoch {
        let number = self.scalar("epoch").and_then(|v| v.to_u64()).unwrap_or(0);
        let id = match self.scalar("epoch_id") {
            Some(ScalarValue::Bytes(b)) if b.len() == 8 => std::array::from_fn(|i| b[i]),
            _ => [0; 8],
        };
        Epoch { number, id }
    }

    /// Errors unless the document declares the hearth history format this build reads.
    pub fn check_format(&self) -> Result<(), HistoryError> {
        let format = self.scalar("format").and_then(|v| v.to_str().map(str::to_owned));
        let version = self.scalar("version").and_then(|v| v.to_i64());
        if format.as_deref() != Some(HISTORY_FORMAT) || version != Some(HISTORY_VERSION) {
            return Err(HistoryError::NotHistory);
        }
        Ok(())
    }

    fn scalar(&self, key: &str) -> Option<ScalarValue> {
        match self.doc.get(ROOT, key) {
            Ok(Some((Value::Scalar(s), _))) => Some(s.into_owned()),
            _ => None,
        }
    }

    /// The highest sequence number `device` has used: in its events, tombstones, wipe marks and
    /// the summaries of its events (so a reloaded device never reuses one, even after compaction).
    fn max_seq_of(&self, device: &str) -> Option<u64> {
        let (e, w) = (format!("e:{device}:"), format!("w:{device}:"));
        let f_suffix = format!(":{device}:");
        let mut max = self.summaries().into_iter().filter(|s| s.device == device).map(|s| s.upto).max();
        for k in self.doc.keys(ROOT) {
            let seq = if let Some(r) = k.strip_prefix(&e) {
                r.split(':').next()
            } else if let Some(r) = k.strip_prefix(&w) {
                Some(r)
            } else if k.starts_with("f:") {
                k.rsplit_once(':').filter(|(head, _)| head.ends_with(&f_suffix[..f_suffix.len() - 1])).map(|(_, s)| s)
            } else {
                None
            };
            if let Some(s) = seq.and_then(|s| u64::from_str_radix(s, 16).ok()) {
                max = max.max(Some(s));
            }
        }
        max
    }

    /// Saves the whole document (automerge's compressed format, with its change history).
    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
    }


    /// This replica's device name.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Records one event; returns its id.
    pub fn record(
        &mut self,
        item: &str,
        kind: Kind,
        ts: i64,
        hour: Option<u8>,
        context: &[(&str, &str)],
    ) -> Result<String, HistoryError> {
        check(item, "item id")?;
        self.check_device()?;
        if let Kind::Rate(v) = kind
            && !v.is_finite()
        {
            return Err(HistoryError::BadValue("a rating must be a finite number"));
        }
        if hour.is_some_and(|h| h > 23) {
            return Err(HistoryError::BadValue("hour of day must be 0 to 23"));
        }
        for (k, v) in context {
            check(k, "context key")?;
            check(v, "context value")?;
        }
        let nonce: [u8; 4] = random_bytes()?;
        let id = format!("e:{}:{:016x}:{:08x}", self.device, self.next_seq, u32::from_le_bytes(nonce));
        let event = Event {
            id: id.clone(),
            item: item.to_owned(),
            kind,
            ts,
            device: self.device.clone(),
            hour,
            context: context.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        };
        write_event(&mut self.doc, &event)?;
        self.doc.update_diff_cursor();
        self.index.insert(id.clone(), Entry::Event(event));
        self.next_seq += 1;
        Ok(id)
    }

    fn check_device(&self) -> Result<(), HistoryError> {
        check(&self.device, "device name")?;
        if self.device.contains(':') {
            return Err(HistoryError::BadValue("a device name must not contain ':'"));
        }
        Ok(())
    }

    /// Latest forget time per item hash, from every tombstone, and the latest wipe.
    fn forgets(&self) -> Forgets {
        let mut out = Forgets::default();
        for e in self.index.values() {
            match e {
                Entry::Wipe(ts) => out.wiped = out.wiped.max(Some(*ts)),
                Entry::Forget(hash, ts) => {
                    let e = out.by_hash.entry(hash.clone()).or_insert(i64::MIN);
                    *e = (*e).max(*ts);
                }
                _ => {}
            }
        }
        out
    }

    /// The summary stored under `key`: where concurrent writers left several, the one folding the
    /// most (largest `upto`, then most events).
    fn read_summary(&self, key: &str) -> Option<Summary> {
        let all = self.doc.get_all(ROOT, key).ok()?;
        all.into_iter()
            .filter_map(|(v, _)| match v {
                Value::Scalar(s) => s.to_str().and_then(parse_summary),
                _ => None,
            })
            .max_by_key(|s| (s.upto, s.counts.iter().sum::<u64>()))
    }

    /// Every summary (one per device and item), ordered by key.
    pub fn summaries(&self) -> Vec<Summary> {
        self.live_summaries(&self.forgets())
    }

    fn live_summaries(&self, forgets: &Forgets) -> Vec<Summary> {
        self.index
            .values()
            .filter_map(|e| match e {
                Entry::Summary(s) if !forgets.covers(&s.item, s.first) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    fn summary_map(&self) -> HashMap<(String, String), Summary> {
        keyed(self.summaries())
    }

    fn read_event(&self, id: &str) -> Option<Event> {
        parse_event(id, self.scalar(id)?.to_str()?)
    }

    /// Every live event (forgotten ones excluded), oldest first (ties by id). Entries that do not
    /// parse as events (from a newer or damaged writer) are skipped.
    pub fn events(&self) -> Vec<Event> {
        let forgets = self.forgets();
        self.live_events(&forgets, keyed(self.live_summaries(&forgets)))
    }

    fn live_events(&self, forgets: &Forgets, summaries: HashMap<(String, String), Summary>) -> Vec<Event> {
        let mut out: Vec<Event> = self
            .index
            .values()
            .filter_map(|e| match e {
                Entry::Event(e) if !forgets.covers(&e.item, e.ts) && !folded(&summaries, e) => Some(e.clone()),
                _ => None,
            })
            .collect();
        out.sort_by(|a, b| a.ts.cmp(&b.ts).then_with(|| a.id.cmp(&b.id)));
        out
    }

    /// The `n` most recent live events, newest first.
    pub fn recent(&self, n: usize) -> Vec<Event> {
        let mut e = self.events();
        e.reverse();
        e.truncate(n);
        e
    }

    /// Forgets `item` everywhere: its events with `ts` ≤ `now` are deleted here, and the
    /// tombstone makes every replica delete them too, including copies that arrive later.
    ///
    /// The item's summaries that fold any such event go too (a summary cannot be split: when a
    /// forget reaches a device only after it folded later events of the item, those go with it).
    /// The deleted values stay in automerge's change history until [`History::compact`].
    pub fn forget(&mut self, item: &str, now: i64) -> Result<(), HistoryError> {
        check(item, "item id")?;
        self.check_device()?;
        let key = format!("f:{}:{}:{:016x}", item_hash(item), self.device, self.next_seq);
        self.next_seq += 1;
        self.doc.put(ROOT, key.as_str(), now).map_err(doc_err)?;
        self.doc.update_diff_cursor();
        self.index.insert(key, Entry::Forget(item_hash(item), now));
        self.sweep()
    }

    /// Deletes every event and summary a tombstone or wipe covers, and every event a summary
    /// folds (call after receiving changes).
    pub fn sweep(&mut self) -> Result<(), HistoryError> {
        let forgets = self.forgets();
        let summaries = keyed(self.live_summaries(&forgets));
        if forgets.is_empty() && summaries.is_empty() {
            return Ok(());
        }
        let doomed: Vec<String> = self
            .index
            .iter()
            .filter(|(_, e)| match e {
                Entry::Event(e) => forgets.covers(&e.item, e.ts) || folded(&summaries, e),
                Entry::Summary(s) => forgets.covers(&s.item, s.first),
                _ => false,
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in &doomed {
            self.doc.delete(ROOT, k.as_str()).map_err(doc_err)?;
            self.index.remove(k);
        }
        self.doc.update_diff_cursor();
        Ok(())
    }

    /// Deletes everything: events, summaries, profile and settings (other replicas delete their
    /// copies of events up to `now` when they learn of it), then compacts, so nothing of it
    /// remains in what is saved.
    pub fn wipe(&mut self, now: i64) -> Result<(), HistoryError> {
        self.check_device()?;
        let key = format!("w:{}:{:016x}", self.device, self.next_seq);
        self.next_seq += 1;
        self.doc.put(ROOT, key.as_str(), now).map_err(doc_err)?;
        self.index.insert(key, Entry::Wipe(now));
        for k in ["p:age_band", "p:locale", "c:federated", "c:privacy_budget", "t:personal"] {
            self.doc.delete(ROOT, k).map_err(doc_err)?;
        }
        self.sweep()?;
        self.compact(usize::MAX).map(|_| ())
    }

    /// Folds all but the `keep_recent` newest live events into per-device, per-item summaries
    /// and starts a new epoch: a fresh document with only the live state (no change history, no
    /// deleted values). Other replicas adopt it through sync.
    ///
    /// For each device and item, only a prefix of its events by sequence number is folded (the
    /// longest whose events are all among the old ones), which keeps concurrent compactions
    /// consistent.
    pub fn compact(&mut self, keep_recent: usize) -> Result<Compacted, HistoryError> {
        self.sweep()?;
        let events = self.events(); // oldest first
        let old = events.len().saturating_sub(keep_recent);
        let mut summaries = self.summary_map();
        // Per device and item: events by sequence, and whether each is old enough to fold.
        let mut runs: BTreeMap<(&str, &str), Vec<(u64, usize)>> = BTreeMap::new();
        for (i, e) in events.iter().enumerate() {
            let Some(seq) = seq_of_event_key(&e.id) else { continue };
            runs.entry((e.device.as_str(), e.item.as_str())).or_default().push((seq, i));
        }
        let mut fold = vec![false; events.len()];
        for ((device, item), mut run) in runs {
            run.sort_unstable();
            for &(seq, i) in run.iter().take_while(|&&(_, i)| i < old) {
                let s = summaries.entry((device.to_owned(), item.to_owned())).or_insert_with(|| Summary {
                    item: item.to_owned(),
                    device: device.to_owned(),
                    upto: seq,
                    first: i64::MAX,
                    last: i64::MIN,
                    counts: [0; 8],
                    rating: None,
                });
                s.fold(&events[i], seq);
                fold[i] = true;
            }
        }
        let mut number = self.epoch().number + 1;
        number = number.max(1);
        let epoch = Epoch { number, id: random_bytes()? };
        let mut doc = fresh_doc(epoch);
        for (e, _) in events.iter().zip(&fold).filter(|(_, f)| !**f) {
            write_event(&mut doc, e)?;
        }
        for s in summaries.values() {
            write_summary(&mut doc, s)?;
        }
        for k in self.doc.keys(ROOT) {
            if ["f:", "w:", "p:", "c:", "t:", "l:", "r:"].iter().any(|p| k.starts_with(p))
                && let Some(v) = self.scalar(&k)
            {
                doc.put(ROOT, k.as_str(), v).map_err(doc_err)?;
            }
        }
        let next_seq = self.next_seq;
        *self = History::with_doc(doc, &self.device);
        self.next_seq = next_seq;
        let folded = fold.iter().filter(|f| **f).count();
        Ok(Compacted { folded, kept: events.len() - folded, summaries: summaries.len(), epoch })
    }

    /// Replaces this replica's document by `snapshot` (a newer epoch's saved document from
    /// another replica), carrying over what only this replica has: events the snapshot neither
    /// holds, folds nor forgets, summaries that fold more than the snapshot's, tombstones and
    /// wipe marks, and profile or settings the snapshot lacks (unless it was wiped since).
    pub fn adopt(&mut self, snapshot: &[u8]) -> Result<(), HistoryError> {
        self.adopt_history(History::load(snapshot, &self.device)?)
    }

    /// [`History::adopt`] for a snapshot already loaded. Errors leave this replica unchanged.
    pub fn adopt_history(&mut self, mut s: History) -> Result<(), HistoryError> {
        s.device.clone_from(&self.device);
        let (sf, ss) = (s.forgets(), s.summary_map());
        let newly_wiped = s.doc.keys(ROOT).any(|k| k.starts_with("w:") && self.scalar(&k).is_none());
        for e in self.events() {
            let held = s.doc.get(ROOT, e.id.as_str()).ok().flatten().is_some();
            if !held && !sf.covers(&e.item, e.ts) && !folded(&ss, &e) {
                write_event(&mut s.doc, &e)?;
            }
        }
        for mine in self.summaries() {
            let theirs = ss.get(&(mine.device.clone(), mine.item.clone()));
            let carry = match theirs {
                Some(t) => mine.upto > t.upto,
                None => !sf.covers(&mine.item, mine.first),
            };
            if carry {
                write_summary(&mut s.doc, &mine)?;
            }
        }
        for k in self.doc.keys(ROOT) {
            let carry = if ["f:", "w:", "l:", "r:"].iter().any(|p| k.starts_with(p)) {
                true
            } else {
                ["p:", "c:", "t:"].iter().any(|p| k.starts_with(p)) && !newly_wiped
            };
            if carry && s.scalar(&k).is_none() && let Some(v) = self.scalar(&k) {
                s.doc.put(ROOT, k.as_str(), v).map_err(doc_err)?;
            }
        }
        s.next_seq = s.next_seq.max(self.next_seq);
        s.refresh();
        s.sweep()?;
        *self = s;
        Ok(())
    }

    /// Every item with its live events and summaries combined, oldest `last` first (ties by id).
    pub fn items(&self) -> Vec<ItemSignal> {
        let mut by_item: BTreeMap<String, ItemSignal> = BTreeMap::new();
        let mut rating_ts: HashMap<String, i64> = HashMap::new();
        let mut add = |item: &str, counts: &[u64; 8], first: i64, last: i64, rating: Option<(f64, i64)>| {
            let s = by_item.entry(item.to_owned()).or_insert_with(|| ItemSignal {
                item: item.to_owned(),
                counts: [0; 8],
                first,
                last,
                rating: None,
            });
            for (a, b) in s.counts.iter_mut().zip(counts) {
                *a += b;
            }
            s.first = s.first.min(first);
            s.last = s.last.max(last);
            if let Some((v, t)) = rating {
                let rt = rating_ts.entry(item.to_owned()).or_insert(i64::MIN);
                if t >= *rt {
                    *rt = t;
                    s.rating = Some(v);
                }
            }
        };
        let forgets = self.forgets();
        let summaries = self.live_summaries(&forgets);
        for s in &summaries {
            add(&s.item, &s.counts, s.first, s.last, s.rating);
        }
        for e in self.live_events(&forgets, keyed(summaries)) {
            let mut counts = [0; 8];
            counts[e.kind.index()] = 1;
            let rating = if let Kind::Rate(v) = e.kind { Some((v, e.ts)) } else { None };
            add(&e.item, &counts, e.ts, e.ts, rating);
        }
        let mut out: Vec<ItemSignal> = by_item.into_values().collect();
        out.sort_by(|a, b| a.last.cmp(&b.last).then_with(|| a.item.cmp(&b.item)));
        out
    }

    /// The profile.
    pub fn profile(&self) -> Profile {
        let s = |k| self.scalar(k).and_then(|v| v.to_str().map(str::to_owned));
        Profile { age_band: s("p:age_band"), locale: s("p:locale") }
    }

    /// Replaces the profile.
    pub fn set_profile(&mut self, p: &Profile) -> Result<(), HistoryError> {
        for (k, v) in [("p:age_band", &p.age_band), ("p:locale", &p.locale)] {
            match v {
                Some(v) => {
                    check(v, "profile value")?;
                    self.doc.put(ROOT, k, v.as_str()).map_err(doc_err)?
                }
                None => self.doc.delete(ROOT, k).map_err(doc_err)?,
            }
        }
        Ok(())
    }

    /// The settings (defaults where unset).
    pub fn settings(&self) -> Settings {
        let d = Settings::default();
        Settings {
            federated: match self.scalar("c:federated") {
                Some(ScalarValue::Boolean(b)) => b,
                _ => d.federated,
            },
            privacy_budget: self.scalar("c:privacy_budget").and_then(|v| v.to_f64()).unwrap_or(d.privacy_budget),
        }
    }

    /// The fine-tuned embedding offset, if one is stored (and readable).
    pub fn tuning(&self) -> Option<Tuning> {
        let text = self.scalar("t:personal")?;
        serde_json::from_str(text.to_str()?).ok()
    }

    /// Stores (or with `None` removes) the fine-tuned embedding offset.
    pub fn set_tuning(&mut self, t: Option<&Tuning>) -> Result<(), HistoryError> {
        match t {
            Some(t) => {
                if t.offset.is_empty() || t.offset.len() > crate::quant::MAX_DIM || !t.offset.iter().all(|v| v.is_finite()) {
                    return Err(HistoryError::BadValue("a tuning offset needs 1 to 4096 finite values"));
                }
                let json = serde_json::to_string(t).map_err(|e| HistoryError::Corrupt(e.to_string()))?;
                self.doc.put(ROOT, "t:personal", json.as_str()).map_err(doc_err)?;
            }
            None => self.doc.delete(ROOT, "t:personal").map_err(doc_err)?,
        }
        Ok(())
    }

    /// Writes a ledger record (`privacy::ledger`): `key` starts with `l:` or `r:`, `text` is at
    /// most 64 KiB. Each key is written by one device only, so concurrent records never hide each
    /// other.
    pub fn put_record(&mut self, key: &str, text: &str) -> Result<(), HistoryError> {
        if !(key.starts_with("l:") || key.starts_with("r:")) || key.len() > 2 * MAX_STRING || text.len() > 1 << 16 {
            return Err(HistoryError::BadValue("a ledger record has an l: or r: key and at most 64 KiB"));
        }
        self.doc.put(ROOT, key, text).map_err(doc_err)
    }

    /// Every ledger record whose key starts with `prefix` (`l:` or `r:` and more), as (key, text),
    /// in key order. Values that are not text are skipped.
    pub fn records(&self, prefix: &str) -> Vec<(String, String)> {
        if !(prefix.starts_with("l:") || prefix.starts_with("r:")) {
            return vec![];
        }
        self.doc
            .map_range(ROOT, prefix.to_owned()..)
            .take_while(|i| i.key.starts_with(prefix))
            .filter_map(|i| match &i.value {
                automerge::ValueRef::Scalar(automerge::ScalarValueRef::Str(t)) => Some((i.key.to_string(), t.to_string())),
                _ => None,
            })
            .collect()
    }

    /// Replaces the settings.
    pub fn set_settings(&mut self, s: &Settings) -> Result<(), HistoryError> {
        if !(s.privacy_budget.is_finite() && s.privacy_budget >= 0.0) {
            return Err(HistoryError::BadValue("the privacy budget must be a finite number >= 0"));
        }
        self.doc.put(ROOT, "c:federated", s.federated).map_err(doc_err)?;
        self.doc.put(ROOT, "c:privacy_budget", s.privacy_budget).map_err(doc_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuning_is_stored_kept_by_compaction_and_wiped() {
        let mut h = History::new("phone");
        h.record("a", Kind::Like, 10, None, &[]).unwrap();
        assert_eq!(h.tuning(), None);
        let t = Tuning { model_version: 1, positives: 1, offset: vec![0.5, -0.25] };
        h.set_tuning(Some(&t)).unwrap();
        assert_eq!(History::load(&h.save(), "phone").unwrap().tuning(), Some(t.clone()));
        h.compact(0).unwrap();
        assert_eq!(h.tuning(), Some(t.clone()));
        assert!(h.set_tuning(Some(&Tuning { offset: vec![f32::NAN], ..t.clone() })).is_err());
        assert!(h.set_tuning(Some(&Tuning { offset: vec![], ..t.clone() })).is_err());
        assert_eq!(h.tuning(), Some(t));
        h.wipe(100).unwrap();
        assert_eq!(h.tuning(), None);
    }

    /// A phone's history: a play (with a context), a rating, then a like of the first item.
    fn three_events() -> History {
        let mut h = History::new("phone");
        h.record("a", Kind::Play, 10, Some(20), &[("screen", "tv")]).unwrap();
        h.record("b", Kind::Rate(4.0), 20, None, &[]).unwrap();
        h.record("a", Kind::Like, 30, None, &[]).unwrap();
        h
    }

    #[test]
    fn recorded_events_are_listed_newest_last_with_their_context() {
        let h = three_events();
        assert_eq!(h.events().len(), 3);
        assert_eq!(h.recent(1)[0].kind, Kind::Like);
        assert_eq!(h.events()[0].context.get("screen").map(String::as_str), Some("tv"));
    }

    #[test]
    fn forget_removes_an_items_events_and_later_ones_are_kept() {
        let mut h = three_events();
        h.forget("a", 40).unwrap();
        assert_eq!(h.events().iter().map(|e| e.item.as_str()).collect::<Vec<_>>(), vec!["b"]);
        h.record("a", Kind::View, 50, None, &[]).unwrap();
        assert_eq!(h.events().iter().map(|e| e.item.as_str()).collect::<Vec<_>>(), vec!["b", "a"]);
    }

    #[test]
    fn a_reloaded_history_holds_the_same_events_profile_and_settings_and_continues_its_ids() {
        let mut h = three_events();
        h.set_profile(&Profile { age_band: Some("25-34".into()), locale: Some("de-CH".into()) }).unwrap();
        h.set_settings(&Settings { federated: true, privacy_budget: 2.0 }).unwrap();
        let mut back = History::load(&h.save(), "phone").unwrap();
        assert_eq!(back.events(), h.events());
        assert_eq!(back.profile().locale.as_deref(), Some("de-CH"));
        assert!(back.settings().federated);
        let id = back.record("c", Kind::Add, 60, None, &[]).unwrap();
        assert!(!h.events().iter().any(|e| e.id == id), "the reloaded device does not reuse an id");
    }

    #[test]
    fn wipe_leaves_no_event_item_or_profile() {
        let mut h = three_events();
        h.set_profile(&Profile { age_band: Some("25-34".into()), locale: None }).unwrap();
        h.wipe(70).unwrap();
        assert!(h.events().is_empty());
        assert!(h.items().is_empty());
        assert_eq!(h.profile(), Profile::default());
        h.check_format().unwrap();
    }

    #[test]
    fn bad_input_is_refused() {
        let mut h = History::new("phone");
        assert!(h.record("", Kind::Play, 1, None, &[]).is_err());
        assert!(h.record(&"x".repeat(600), Kind::Play, 1, None, &[]).is_err());
        assert!(h.record("a", Kind::Rate(f64::NAN), 1, None, &[]).is_err());
        assert!(h.record("a", Kind::Play, 1, Some(24), &[]).is_err());
        assert!(matches!(History::load(b"not automerge", "d"), Err(HistoryError::Corrupt(_))));
        let other = AutoCommit::new().save();
        assert!(matches!(History::load(&other, "d"), Err(HistoryError::NotHistory)));
        assert!(h.events().is_empty());
    }

    #[test]
    fn a_forget_removes_copies_that_arrive_later() {
        let mut a = History::new("a");
        let mut b = History::load(&a.save(), "b").unwrap();
        b.record("x", Kind::Play, 5, None, &[]).unwrap(); // offline on b
        a.forget("x", 10).unwrap(); // a forgets x, not knowing b's play
        a.merge(&mut b).unwrap();
        assert!(a.events().is_empty());
        assert!(!a.doc().keys(ROOT).any(|k| k.starts_with("e:")), "deleted by the sweep");
    }

    fn contains(hay: &[u8], needle: &str) -> bool {
        hay.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    #[test]
    fn compaction_folds_old_events_and_drops_forgotten_ones_from_the_saved_bytes() {
        let mut h = History::new("phone");
        for i in 0..300i64 {
            let kind = if i % 3 == 0 { Kind::Rate((i % 5) as f64) } else { Kind::Play };
            h.record(&format!("film-{}", i % 7), kind, 1000 + i, None, &[]).unwrap();
        }
        h.record("secret-film", Kind::Like, 2000, None, &[]).unwrap();
        h.forget("secret-film", 2001).unwrap();
        assert!(contains(&h.doc.save_nocompress(), "secret-film"), "automerge keeps deleted values until compaction");
        let before = h.items();
        let epoch = h.epoch();
        let c = h.compact(20).unwrap();
        assert_eq!((c.folded, c.kept, c.summaries), (280, 20, 7));
        assert!(c.epoch > epoch);
        assert_eq!(h.events().len(), 20);
        assert_eq!(h.items(), before, "counts, first/last and the latest rating survive folding");
        let saved = h.save();
        assert!(!contains(&h.doc.save_nocompress(), "secret-film"));
        // A reloaded device continues after every sequence number it ever used.
        let mut back = History::load(&saved, "phone").unwrap();
        assert_eq!(back.items(), before);
        let id = back.record("film-1", Kind::Play, 5000, None, &[]).unwrap();
        assert!(back.events().iter().any(|e| e.id == id), "a new event is not taken for a folded one");
        // Forgetting a folded item removes its summary.
        back.forget("film-1", 6000).unwrap();
        assert!(back.items().iter().all(|s| s.item != "film-1"));
        back.compact(0).unwrap();
        assert!(!contains(&back.doc.save_nocompress(), "film-1"));
        assert_eq!(back.items().len(), 6);
    }

    #[test]
    fn a_stale_replica_adopts_a_compacted_snapshot_and_keeps_its_offline_edits() {
        let mut a = History::new("a");
        for i in 0..50 {
            a.record(&format!("film-{}", i % 5), Kind::Play, i, None, &[]).unwrap();
        }
        let mut b = History::load(&a.save(), "b").unwrap();
        // Offline: b records and forgets; a records more, then compacts.
        b.record("film-1", Kind::Like, 100, None, &[]).unwrap();
        b.forget("film-2", 101).unwrap();
        b.set_profile(&Profile { age_band: Some("25-34".into()), locale: None }).unwrap();
        a.record("film-9", Kind::Add, 102, None, &[]).unwrap();
        a.compact(3).unwrap();
        assert!(a.epoch() > b.epoch());
        let snapshot = a.save();
        b.adopt(&snapshot).unwrap();
        assert_eq!(b.epoch(), a.epoch());
        let items: BTreeMap<String, u64> = b.items().into_iter().map(|s| (s.item, s.counts.iter().sum())).collect();
        assert_eq!(items.get("film-1"), Some(&11), "b's like is carried over");
        assert_eq!(items.get("film-2"), None, "b's forget applies to a's summary");
        assert_eq!(items.get("film-9"), Some(&1));
        assert_eq!(b.profile().age_band.as_deref(), Some("25-34"));
        // a and b are one document again: sync by merging changes.
        a.merge(&mut b).unwrap();
        assert_eq!(a.items(), b.items());
        // A wipe reaches replicas that adopt it.
        let mut c = History::load(&a.save(), "c").unwrap();
        c.record("film-3", Kind::View, 50, None, &[]).unwrap(); // before the wipe's time
        a.wipe(200).unwrap();
        c.adopt(&a.save()).unwrap();
        assert!(c.items().is_empty() && c.profile() == Profile::default());
    }
}
