//! Where sealed documents rest: a small [`Store`] trait with two generations (current and
//! previous), the in-memory [`MemStore`] (tests) and, natively, the atomic [`FileStore`]. A store
//! that cannot answer synchronously (the browser's IndexedDB) asks [`plan_save`] what to write:
//! the same rule over a snapshot of its two generations, so there is one rule, here.
//!
//! [`save_sealed`] and [`load_sealed`] put the vault on top: a new generation is sealed, staged
//! (the old one becomes the previous generation), read back and opened, and only then is the
//! previous one dropped. Loading opens the current generation and falls back to the previous
//! one when the current is damaged; a wrong key never falls back and is never written over.
//!
//! ```
//! use hearth_core::person::store::{MemStore, load_sealed, save_sealed};
//! use hearth_core::person::vault::Key;
//! let (mut store, key) = (MemStore::default(), Key::random().unwrap());
//! save_sealed(&mut store, &key, [1; 16], b"generation 1").unwrap();
//! save_sealed(&mut store, &key, [1; 16], b"generation 2").unwrap();
//! assert_eq!(load_sealed(&store, &key).unwrap().unwrap().plain, b"generation 2");
//! ```

use crate::person::vault::{self, DocId, Key, VaultError};

/// One of the two generations a store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The newest generation.
    Current,
    /// The one before it, kept until the current one is verified.
    Previous,
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The storage itself failed (disk, quota, permissions).
    #[error("storage failed: {0}")]
    Io(String),
    /// The vault refused the data (wrong key, tampered, truncated, not a sealed document).
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// A generation was written but did not read back identically; the previous one is kept.
    #[error("the written data did not read back; the previous generation is kept")]
    Verify,
}

/// Storage of one document in two generations.
pub trait Store {
    /// The bytes in `slot`, if any.
    fn read(&self, slot: Slot) -> Result<Option<Vec<u8>>, StoreError>;
    /// Atomically makes `bytes` the current generation and the old current the previous one
    /// (replacing the old previous). A crash at any point leaves the old state or the new one.
    fn stage(&mut self, bytes: &[u8]) -> Result<(), StoreError>;
    /// Drops the previous generation (the current one has been verified).
    fn commit(&mut self) -> Result<(), StoreError>;
}

/// An in-memory store, for tests.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    /// The current generation.
    pub current: Option<Vec<u8>>,
    /// The previous generation.
    pub previous: Option<Vec<u8>>,
}

impl Store for MemStore {
    fn read(&self, slot: Slot) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(match slot {
            Slot::Current => self.current.clone(),
            Slot::Previous => self.previous.clone(),
        })
    }

    fn stage(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.previous = self.current.replace(bytes.to_vec());
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        self.previous = None;
        Ok(())
    }
}

/// A document opened from a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// Its id.
    pub doc: DocId,
    /// Its contents.
    pub plain: Vec<u8>,
    /// The current generation was damaged and this is the previous one.
    pub recovered: bool,
}

/// Opens the stored document: the current generation, or the previous one if the current is
/// damaged (tampered, truncated, not a sealed document). `Ok(None)` when nothing is stored.
/// A wrong key is reported as such, without trying the previous generation.
pub fn load_sealed(store: &dyn Store, key: &Key) -> Result<Option<Loaded>, StoreError> {
    let current = store.read(Slot::Current)?;
    let damage = match current.as_deref().map(|c| vault::open(key, c)) {
        Some(Ok((doc, plain))) => return Ok(Some(Loaded { doc, plain, recovered: false })),
        Some(Err(VaultError::WrongKey)) => return Err(VaultError::WrongKey.into()),
        Some(Err(e)) => Some(e),
        None => None,
    };
    match store.read(Slot::Previous)? {
        Some(p) => match vault::open(key, &p) {
            Ok((doc, plain)) => Ok(Some(Loaded { doc, plain, recovered: true })),
            Err(e) => Err(damage.unwrap_or(e).into()),
        },
        None => damage.map_or(Ok(None), |e| Err(e.into())),
    }
}

/// Seals `plain` as document `doc` and stores it as the new current generation; the previous
/// one is dropped only after the new one reads back and opens to `plain`.
///
/// Refuses (with [`VaultError::WrongKey`]) when the stored document is sealed under another key,
/// so a wrong passphrase can never overwrite a person's history; use [`rotate_sealed`] to change
/// keys. When the current generation is damaged and the previous one opens, the previous one is
/// restored first, so the last good generation is kept until the new one verifies.
pub fn save_sealed(store: &mut dyn Store, key: &Key, doc: DocId, plain: &[u8]) -> Result<(), StoreError> {
    if let Some(current) = store.read(Slot::Current)? {
        match vault::open(key, &current) {
            Ok(_) => {}
            Err(VaultError::WrongKey) => return Err(VaultError::WrongKey.into()),
            Err(_) => {
                if let Some(previous) = store.read(Slot::Previous)?
                    && vault::open(key, &previous).is_ok()
                {
                    store.stage(&previous)?;
                }
            }
        }
    }
    write_verified(store, key, &vault::seal(key, doc, plain)?, plain)
}

/// Re-seals the stored document under `new` (key rotation), with the same two-generation care.
pub fn rotate_sealed(store: &mut dyn Store, old: &Key, new: &Key) -> Result<(), StoreError> {
    let Some(loaded) = load_sealed(store, old)? else { return Ok(()) };
    write_verified(store, new, &vault::seal(new, loaded.doc, &loaded.plain)?, &loaded.plain)
}

/// A snapshot of a store's two generations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Generations {
    /// The current generation.
    pub current: Option<Vec<u8>>,
    /// The previous generation.
    pub previous: Option<Vec<u8>>,
}

/// What an asynchronous store must write for [`save_sealed`] of `plain`, given what it holds
/// now: write both generations of the result in one atomic step, read the current one back,
/// and only then drop the previous one. The previous generation kept is the last one that
/// opens: a damaged current generation is never moved over a good previous one.
pub fn plan_save(stored: Generations, key: &Key, doc: DocId, plain: &[u8]) -> Result<Generations, StoreError> {
    /// Applies `save_sealed`'s stages to a snapshot; the commit (dropping the previous one) is
    /// the caller's, after its own read-back.
    struct Planned(Generations);
    impl Store for Planned {
        fn read(&self, slot: Slot) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(match slot {
                Slot::Current => self.0.current.clone(),
                Slot::Previous => self.0.previous.clone(),
            })
        }
        fn stage(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
            self.0.previous = self.0.current.replace(bytes.to_vec());
            Ok(())
        }
        fn commit(&mut self) -> Result<(), StoreError> {
            Ok(())
        }
    }
    let mut planned = Planned(stored);
    save_sealed(&mut planned, key, doc, plain)?;
    Ok(planned.0)
}

mod file;
pub use file::FileStore;

fn write_verified(store: &mut dyn Store, key: &Key, sealed: &[u8], plain: &[u8]) -> Result<(), StoreError> {
    store.stage(sealed)?;
    let back = store.read(Slot::Current)?.ok_or(StoreError::Verify)?;
    match vault::open(key, &back) {
        Ok((_, p)) if p == plain => store.commit(),
        _ => Err(StoreError::Verify),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stores(tag: &str) -> Vec<(Box<dyn Store>, Option<std::path::PathBuf>)> {
        let dir = std::env::temp_dir().join(format!("hearth-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        vec![(Box::new(MemStore::default()), None), (Box::new(FileStore::open(&dir, "history.vault").unwrap()), Some(dir))]
    }

    /// Runs `check` on a memory store and a file store that each hold two committed saves
    /// ("one", then "two") under `key`; `other` is a second key.
    fn with_two_saves(tag: &str, check: impl Fn(&mut dyn Store, &Key, &Key)) {
        for (mut store, dir) in stores(tag) {
            let s = store.as_mut();
            let (key, other) = (Key::random().unwrap(), Key::random().unwrap());
            assert_eq!(load_sealed(s, &key).unwrap(), None, "a new store holds nothing");
            save_sealed(s, &key, [1; 16], b"one").unwrap();
            save_sealed(s, &key, [1; 16], b"two").unwrap();
            check(s, &key, &other);
            if let Some(d) = dir {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }

    #[test]
    fn a_save_commits_and_drops_the_previous_generation() {
        with_two_saves("commit", |s, key, _| {
            assert_eq!(s.read(Slot::Previous).unwrap(), None, "committed");
            assert_eq!(load_sealed(s, key).unwrap().unwrap().plain, b"two");
        });
    }

    #[test]
    fn a_wrong_key_neither_opens_nor_overwrites() {
        with_two_saves("wrong", |s, key, other| {
            assert_eq!(load_sealed(s, other), Err(StoreError::Vault(VaultError::WrongKey)));
            assert_eq!(save_sealed(s, other, [1; 16], b"evil"), Err(StoreError::Vault(VaultError::WrongKey)));
            assert_eq!(load_sealed(s, key).unwrap().unwrap().plain, b"two");
        });
    }

    /// A staged generation that never verified: the damaged current falls back to the previous
    /// one; a truncated one staged over the tampered one is reported as truncated.
    #[test]
    fn a_damaged_current_generation_falls_back_to_the_previous_one() {
        with_two_saves("damaged", |s, key, _| {
            let good = s.read(Slot::Current).unwrap().unwrap();
            let mut bad = good.clone();
            let n = bad.len();
            bad[n - 1] ^= 1;
            s.stage(&bad).unwrap();
            let l = load_sealed(s, key).unwrap().unwrap();
            assert_eq!((l.plain.as_slice(), l.recovered), (b"two".as_slice(), true));
            s.stage(&good[..good.len() - 3]).unwrap();
            assert_eq!(load_sealed(s, key), Err(StoreError::Vault(VaultError::Truncated)));
        });
    }

    #[test]
    fn rotation_reseals_the_store_under_the_new_key() {
        with_two_saves("rotate", |s, key, other| {
            rotate_sealed(s, key, other).unwrap();
            assert_eq!(load_sealed(s, other).unwrap().unwrap().plain, b"two");
            assert_eq!(load_sealed(s, key), Err(StoreError::Vault(VaultError::WrongKey)));
        });
    }

    /// A disk that flips a bit in everything it writes.
    struct BitRot(MemStore);
    impl Store for BitRot {
        fn read(&self, slot: Slot) -> Result<Option<Vec<u8>>, StoreError> {
            self.0.read(slot)
        }
        fn stage(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
            let mut b = bytes.to_vec();
            b[70] ^= 4; // in the nonce: the tag no longer matches
            self.0.stage(&b)
        }
        fn commit(&mut self) -> Result<(), StoreError> {
            self.0.commit()
        }
    }

    #[test]
    fn a_write_that_does_not_verify_keeps_the_previous_generation() {
        let key = Key::random().unwrap();
        let mut s = MemStore::default();
        save_sealed(&mut s, &key, [2; 16], b"good").unwrap();
        let mut rot = BitRot(s);
        assert_eq!(save_sealed(&mut rot, &key, [2; 16], b"newer"), Err(StoreError::Verify));
        let l = load_sealed(&rot, &key).unwrap().unwrap();
        assert_eq!((l.plain.as_slice(), l.recovered), (b"good".as_slice(), true));
        // Saving again on a sound disk keeps the good generation as the previous one meanwhile.
        let mut s = rot.0;
        s.stage(b"HRTHVALT\x01damaged").unwrap();
        save_sealed(&mut s, &key, [2; 16], b"newest").unwrap();
        assert_eq!(load_sealed(&s, &key).unwrap().unwrap().plain, b"newest");
        assert!(FileStore::open(std::env::temp_dir(), "../escape").is_err());
    }

    #[test]
    fn a_plan_never_moves_a_damaged_current_generation_over_a_good_previous_one() {
        let key = Key::random().unwrap();
        let good = vault::seal(&key, [3; 16], b"good").unwrap();
        let mut damaged = good.clone();
        let n = damaged.len();
        damaged[n - 1] ^= 1;
        // Current damaged, previous good (the page just opened from it): the good one stays.
        let plan = plan_save(Generations { current: Some(damaged.clone()), previous: Some(good.clone()) }, &key, [3; 16], b"next").unwrap();
        assert_eq!(plan.previous, Some(good.clone()));
        assert_eq!(vault::open(&key, plan.current.as_ref().unwrap()).unwrap().1, b"next");
        // Current good: it becomes the previous generation.
        let plan = plan_save(Generations { current: Some(good.clone()), previous: None }, &key, [3; 16], b"next").unwrap();
        assert_eq!(plan.previous, Some(good.clone()));
        // Nothing stored yet.
        let plan = plan_save(Generations::default(), &key, [3; 16], b"first").unwrap();
        assert_eq!(plan.previous, None);
        // Another key's history is never planned over.
        let other = Key::random().unwrap();
        assert_eq!(plan_save(Generations { current: Some(good), previous: None }, &other, [3; 16], b"x"), Err(StoreError::Vault(VaultError::WrongKey)));
    }
}
