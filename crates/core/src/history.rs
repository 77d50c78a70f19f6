//! A person's history as an automerge document, replicated across their devices.
//!
//! Layout of the document's root map (every key is written by one device only, so concurrent
//! edits never hide each other's objects):
//! - `"format"` = `"hearth-history"`, `"version"` = 1;
//! - `"e:<device>:<seq:016x>:<nonce:08x>"` → an event map `{item, kind, value?, ts, device,
//!   hour?, ctx: {key: value}}` (immutable once written);
//! - `"f:<item>:<device>:<seq:016x>"` → forget tombstone, the time of the forget (ms): the item's
//!   events with `ts` ≤ the latest tombstone are removed wherever they are seen, including events
//!   that arrive later by sync from a device that recorded them before the forget;
//! - `"p:age_band"`, `"p:locale"` (the profile, used only on the device) and
//!   `"c:federated"`, `"c:privacy_budget"` (settings): last writer wins.
//!
//! ```
//! use hearth_core::history::{History, Kind};
//! let mut h = History::new("phone");
//! h.record("movie-1", Kind::Like, 1_000, None, &[]).unwrap();
//! h.record("movie-2", Kind::Rate(4.5), 2_000, Some(21), &[("screen", "tv")]).unwrap();
//! h.forget("movie-1", 3_000).unwrap();
//! let again = History::load(&h.save(), "laptop").unwrap();
//! assert_eq!(again.events().len(), 1);
//! assert_eq!(again.events()[0].item, "movie-2");
//! ```

use std::collections::BTreeMap;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ReadDoc, ScalarValue, Value, ROOT};

/// Format name stored in the document.
pub const HISTORY_FORMAT: &str = "hearth-history";
/// Document layout version.
pub const HISTORY_VERSION: i64 = 1;
/// Longest item id, device name or context string accepted.
pub const MAX_STRING: usize = 512;

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

    fn parse(name: &str, value: Option<f64>) -> Option<Kind> {
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

fn doc_err(e: automerge::AutomergeError) -> HistoryError {
    HistoryError::Doc(e.to_string())
}

fn check(s: &str, what: &'static str) -> Result<(), HistoryError> {
    if s.is_empty() || s.len() > MAX_STRING {
        return Err(HistoryError::BadString(what));
    }
    Ok(())
}

/// One replica of a person's history.
pub struct History {
    doc: AutoCommit,
    device: String,
    next_seq: u64,
}

impl History {
    /// A new, empty history created on `device`.
    pub fn new(device: &str) -> History {
        let mut doc = AutoCommit::new();
        // Root scalars: concurrent creators write equal values, so any winner is right.
        let _ = doc.put(ROOT, "format", HISTORY_FORMAT);
        let _ = doc.put(ROOT, "version", HISTORY_VERSION);
        History { doc, device: device.to_owned(), next_seq: 0 }
    }

    /// An empty replica for a new device, to be filled by sync (no root values of its own).
    pub fn empty(device: &str) -> History {
        History { doc: AutoCommit::new(), device: device.to_owned(), next_seq: 0 }
    }

    /// Loads a saved history on `device`.
    pub fn load(bytes: &[u8], device: &str) -> Result<History, HistoryError> {
        let doc = AutoCommit::load(bytes).map_err(|e| HistoryError::Corrupt(e.to_string()))?;
        let mut h = History { doc, device: device.to_owned(), next_seq: 0 };
        h.check_format()?;
        h.next_seq = h.max_seq_of(device).map_or(0, |s| s + 1);
        Ok(h)
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

    fn max_seq_of(&self, device: &str) -> Option<u64> {
        let prefix = format!("e:{device}:");
        self.doc
            .keys(ROOT)
            .filter_map(|k| k.strip_prefix(&prefix).and_then(|r| r.split(':').next()).and_then(|s| u64::from_str_radix(s, 16).ok()))
            .max()
    }

    /// Saves the whole document (automerge's compressed format, with its change history).
    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
    }

    /// The underlying automerge document (for sync).
    pub fn doc_mut(&mut self) -> &mut AutoCommit {
        &mut self.doc
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
        check(&self.device, "device name")?;
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
        let mut nonce = [0u8; 4];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| HistoryError::BadValue("the system random generator failed"))?;
        let id = format!("e:{}:{:016x}:{:08x}", self.device, self.next_seq, u32::from_le_bytes(nonce));
        let d = &mut self.doc;
        let e = d.put_object(ROOT, id.as_str(), ObjType::Map).map_err(doc_err)?;
        d.put(&e, "item", item).map_err(doc_err)?;
        d.put(&e, "kind", kind.name()).map_err(doc_err)?;
        if let Kind::Rate(v) = kind {
            d.put(&e, "value", v).map_err(doc_err)?;
        }
        d.put(&e, "ts", ts).map_err(doc_err)?;
        d.put(&e, "device", self.device.as_str()).map_err(doc_err)?;
        if let Some(h) = hour {
            d.put(&e, "hour", h as i64).map_err(doc_err)?;
        }
        let ctx = d.put_object(&e, "ctx", ObjType::Map).map_err(doc_err)?;
        for (k, v) in context {
            d.put(&ctx, *k, *v).map_err(doc_err)?;
        }
        self.next_seq += 1;
        Ok(id)
    }

    /// Latest forget time per item, from every tombstone.
    fn forgotten(&self) -> BTreeMap<String, i64> {
        let mut out: BTreeMap<String, i64> = BTreeMap::new();
        for k in self.doc.keys(ROOT).filter(|k| k.starts_with("f:")) {
            // "f:<item>:<device>:<seq>": the item may itself contain ':'.
            let mut parts = k[2..].rsplitn(3, ':');
            let (_seq, _dev, item) = (parts.next(), parts.next(), parts.next());
            let (Some(item), Some(ts)) = (item, self.scalar(&k).and_then(|v| v.to_i64())) else { continue };
            let e = out.entry(item.to_owned()).or_insert(i64::MIN);
            *e = (*e).max(ts);
        }
        out
    }

    fn read_event(&self, id: &str) -> Option<Event> {
        let (Value::Object(ObjType::Map), obj) = self.doc.get(ROOT, id).ok()?? else { return None };
        let get = |k: &str| match self.doc.get(&obj, k) {
            Ok(Some((Value::Scalar(s), _))) => Some(s.into_owned()),
            _ => None,
        };
        let item = get("item")?.to_str()?.to_owned();
        let value = get("value").and_then(|v| v.to_f64());
        let kind = Kind::parse(get("kind")?.to_str()?, value)?;
        let mut context = BTreeMap::new();
        if let Ok(Some((Value::Object(ObjType::Map), ctx))) = self.doc.get(&obj, "ctx") {
            for k in self.doc.keys(&ctx) {
                if let Ok(Some((Value::Scalar(s), _))) = self.doc.get(&ctx, k.as_str())
                    && let Some(v) = s.to_str()
                {
                    context.insert(k.clone(), v.to_owned());
                }
            }
        }
        Some(Event {
            id: id.to_owned(),
            item,
            kind,
            ts: get("ts")?.to_i64()?,
            device: get("device")?.to_str()?.to_owned(),
            hour: get("hour").and_then(|v| v.to_i64()).and_then(|h| u8::try_from(h).ok()).filter(|&h| h < 24),
            context,
        })
    }

    /// Every live event (forgotten ones excluded), oldest first (ties by id). Entries that do not
    /// parse as events (from a newer or damaged writer) are skipped.
    pub fn events(&self) -> Vec<Event> {
        let forgotten = self.forgotten();
        let mut out: Vec<Event> = self
            .doc
            .keys(ROOT)
            .filter(|k| k.starts_with("e:"))
            .filter_map(|k| self.read_event(&k))
            .filter(|e| forgotten.get(&e.item).is_none_or(|&t| e.ts > t))
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
    pub fn forget(&mut self, item: &str, now: i64) -> Result<(), HistoryError> {
        check(item, "item id")?;
        let key = format!("f:{item}:{}:{:016x}", self.device, self.next_seq);
        self.next_seq += 1;
        self.doc.put(ROOT, key.as_str(), now).map_err(doc_err)?;
        self.sweep()
    }

    /// Deletes every event a tombstone covers (call after receiving changes).
    pub fn sweep(&mut self) -> Result<(), HistoryError> {
        let forgotten = self.forgotten();
        if forgotten.is_empty() {
            return Ok(());
        }
        let doomed: Vec<String> = self
            .doc
            .keys(ROOT)
            .filter(|k| k.starts_with("e:"))
            .filter(|k| self.read_event(k).is_some_and(|e| forgotten.get(&e.item).is_some_and(|&t| e.ts <= t)))
            .collect();
        for k in doomed {
            self.doc.delete(ROOT, k.as_str()).map_err(doc_err)?;
        }
        Ok(())
    }

    /// Deletes every event, tombstone, profile and setting (the format marker stays).
    pub fn wipe(&mut self) -> Result<(), HistoryError> {
        let keys: Vec<String> = self.doc.keys(ROOT).filter(|k| k != "format" && k != "version").collect();
        for k in keys {
            self.doc.delete(ROOT, k.as_str()).map_err(doc_err)?;
        }
        Ok(())
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
    fn record_list_forget_wipe_and_reload() {
        let mut h = History::new("phone");
        h.record("a", Kind::Play, 10, Some(20), &[("screen", "tv")]).unwrap();
        h.record("b", Kind::Rate(4.0), 20, None, &[]).unwrap();
        h.record("a", Kind::Like, 30, None, &[]).unwrap();
        assert_eq!(h.events().len(), 3);
        assert_eq!(h.recent(1)[0].kind, Kind::Like);
        assert_eq!(h.events()[0].context.get("screen").map(String::as_str), Some("tv"));
        h.forget("a", 40).unwrap();
        assert_eq!(h.events().iter().map(|e| e.item.as_str()).collect::<Vec<_>>(), vec!["b"]);
        h.record("a", Kind::View, 50, None, &[]).unwrap(); // after the forget: kept
        h.set_profile(&Profile { age_band: Some("25-34".into()), locale: Some("de-CH".into()) }).unwrap();
        h.set_settings(&Settings { federated: true, privacy_budget: 2.0 }).unwrap();
        let mut back = History::load(&h.save(), "phone").unwrap();
        assert_eq!(back.events(), h.events());
        assert_eq!(back.profile().locale.as_deref(), Some("de-CH"));
        assert!(back.settings().federated);
        // The reloaded device continues its sequence instead of reusing ids.
        let id = back.record("c", Kind::Add, 60, None, &[]).unwrap();
        assert!(!h.events().iter().any(|e| e.id == id));
        back.wipe().unwrap();
        assert!(back.events().is_empty());
        assert_eq!(back.profile(), Profile::default());
        back.check_format().unwrap();
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
        a.doc_mut().merge(b.doc_mut()).unwrap();
        assert!(a.events().is_empty(), "hidden at once");
        a.sweep().unwrap();
        assert!(!a.doc_mut().keys(ROOT).any(|k| k.starts_with("e:")), "and deleted by the sweep");
    }
}
