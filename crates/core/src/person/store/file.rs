//! [`FileStore`]: the two-generation [`Store`] over atomic files, for native programs. It builds
//! on every target (on wasm32-unknown-unknown `std::fs` answers every call with an error), so no
//! `cfg` is needed; a browser keeps its generations in IndexedDB instead.

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
