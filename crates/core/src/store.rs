//! Where sealed documents rest: a small [`Store`] trait with two generations (current and
//! previous), the in-memory [`MemStore`] (tests) and, natively, the atomic [`FileStore`]. The
//! browser's IndexedDB store implements the same trait in `hearth-web`.
//!
//! [`save_sealed`] and [`load_sealed`] put the vault on top: a new generation is sealed, staged
//! (the old one becomes the previous generation), read back and opened, and only then is the
//! previous one dropped. Loading opens the current generation and falls back to the previous
//! one when the current is damaged; a wrong key never falls back and is never written over.
//!
//! ```
//! use hearth_core::store::{MemStore, load_sealed, save_sealed};
//! use hearth_core::vault::Key;
//! let (mut store, key) = (MemStore::default(), Key::random().unwrap());
//! save_sealed(&mut store, &key, [1; 16], b"generation 1").unwrap();
//! save_sealed(&mut store, &key, [1; 16], b"generation 2").unwrap();
//! assert_eq!(load_sealed(&store, &key).unwrap().unwrap().plain, b"generation 2");
//! ```

use crate::vault::{self, DocId, Key, VaultError};

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

fn write_verified(store: &mut dyn Store, key: &Key, sealed: &[u8], plain: &[u8]) -> Result<(), StoreError> {
    store.stage(sealed)?;
    let back = store.read(Slot::Current)?.ok_or(StoreError::Verify)?;
    match vault::open(key, &back) {
        Ok((_, p)) if p == plain => store.commit(),
        _ => Err(StoreError::Verify),
    }
}

#[cfg(not(target_family = "wasm"))]
pub use file::FileStore;

#[cfg(not(target_family = "wasm"))]
mod file {
    use std::fs::{self, File, OpenOptions};
    use std::io::{ErrorKind, Write};
    use std::path::{Path, PathBuf};

    use super::{Slot, Store, StoreError};

    fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
        StoreError::Io(format!("{what} {}: {e}", path.display()))
    }

    /// A document in a directory: `<name>` (current), `<name>.prev` (previous) and `<name>.tmp`
    /// (being written). Staging writes and fsyncs the temporary file, hard-links the current
    /// file as the previous one, renames the temporary file over the current one and fsyncs the
    /// directory: a crash leaves either the old current file or the new one, never a mix.
    #[derive(Debug, Clone)]
    pub struct FileStore {
        dir: PathBuf,
        name: String,
    }

    impl FileStore {
        /// A store for `name` in `dir` (created if missing).
        pub fn open(dir: impl AsRef<Path>, name: &str) -> Result<FileStore, StoreError> {
            let dir = dir.as_ref().to_path_buf();
            if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
                return Err(StoreError::Io(format!("{name:?} is not a plain file name")));
            }
            fs::create_dir_all(&dir).map_err(|e| io("cannot create", &dir, e))?;
            Ok(FileStore { dir, name: name.to_owned() })
        }

        fn path(&self, suffix: &str) -> PathBuf {
            self.dir.join(format!("{}{suffix}", self.name))
        }

        fn sync_dir(&self) -> Result<(), StoreError> {
            File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| io("cannot sync", &self.dir, e))
        }

        fn remove(path: &Path) -> Result<(), StoreError> {
            match fs::remove_file(path) {
                Err(e) if e.kind() != ErrorKind::NotFound => Err(io("cannot remove", path, e)),
                _ => Ok(()),
            }
        }
    }

    impl Store for FileStore {
        fn read(&self, slot: Slot) -> Result<Option<Vec<u8>>, StoreError> {
            let path = self.path(match slot {
                Slot::Current => "",
                Slot::Previous => ".prev",
            });
            match fs::read(&path) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io("cannot read", &path, e)),
            }
        }

        fn stage(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
            let (cur, prev, tmp) = (self.path(""), self.path(".prev"), self.path(".tmp"));
            let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp).map_err(|e| io("cannot create", &tmp, e))?;
            f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| io("cannot write", &tmp, e))?;
            drop(f);
            if cur.exists() {
                Self::remove(&prev)?;
                if fs::hard_link(&cur, &prev).is_err() {
                    fs::copy(&cur, &prev).and_then(|_| File::open(&prev)?.sync_all()).map_err(|e| io("cannot keep", &prev, e))?;
                }
            }
            fs::rename(&tmp, &cur).map_err(|e| io("cannot replace", &cur, e))?;
            self.sync_dir()
        }

        fn commit(&mut self) -> Result<(), StoreError> {
            Self::remove(&self.path(".prev"))?;
            self.sync_dir()
        }
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

    #[test]
    fn generations_recovery_and_wrong_keys() {
        for (mut store, dir) in stores("gen") {
            let s = store.as_mut();
            let (key, other) = (Key::random().unwrap(), Key::random().unwrap());
            assert_eq!(load_sealed(s, &key).unwrap(), None);
            save_sealed(s, &key, [1; 16], b"one").unwrap();
            save_sealed(s, &key, [1; 16], b"two").unwrap();
            assert_eq!(s.read(Slot::Previous).unwrap(), None, "committed");
            // A wrong key neither opens nor overwrites.
            assert_eq!(load_sealed(s, &other), Err(StoreError::Vault(VaultError::WrongKey)));
            assert_eq!(save_sealed(s, &other, [1; 16], b"evil"), Err(StoreError::Vault(VaultError::WrongKey)));
            assert_eq!(load_sealed(s, &key).unwrap().unwrap().plain, b"two");
            // A staged generation that never verified: the damaged current falls back to the
            // previous one, and the next save keeps that good one as its previous generation.
            let good = s.read(Slot::Current).unwrap().unwrap();
            let mut bad = good.clone();
            let n = bad.len();
            bad[n - 1] ^= 1;
            s.stage(&bad).unwrap();
            let l = load_sealed(s, &key).unwrap().unwrap();
            assert_eq!((l.plain.as_slice(), l.recovered), (b"two".as_slice(), true));
            s.stage(&good[..good.len() - 3]).unwrap(); // truncated on top of the tampered one
            assert_eq!(load_sealed(s, &key), Err(StoreError::Vault(VaultError::Truncated)));
            // Rotation re-seals under the new key.
            s.stage(&good).unwrap();
            s.commit().unwrap();
            rotate_sealed(s, &key, &other).unwrap();
            assert_eq!(load_sealed(s, &other).unwrap().unwrap().plain, b"two");
            assert_eq!(load_sealed(s, &key), Err(StoreError::Vault(VaultError::WrongKey)));
            if let Some(d) = dir {
                let _ = std::fs::remove_dir_all(d);
            }
        }
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
}
