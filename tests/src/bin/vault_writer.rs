//! A device that keeps saving its sealed history, for the crash test (`tests/tests/crash.rs`),
//! which kills it at random moments.
//!
//! Usage: `vault_writer <dir>`. Opens `<dir>/history.vault` (or starts a new history), prints
//! `ready <events>`, then forever records one event, saves (sealed, two generations) and prints
//! `saved <events>` once the save has returned. Every 40 events it compacts, so the document is
//! rewritten as a new epoch from time to time.

use std::io::Write;

use hearth_core::person::history::{History, Kind};
use hearth_core::person::store::{FileStore, load_sealed, save_sealed};
use hearth_core::person::vault::Key;

fn total(h: &History) -> u64 {
    h.items().iter().map(|s| s.counts.iter().sum::<u64>()).sum()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: vault_writer <dir>")?;
    let key = Key::from_device_bytes([42; 32]);
    let mut store = FileStore::open(&dir, "history.vault")?;
    let mut history = match load_sealed(&store, &key)? {
        Some(l) => History::load(&l.plain, "writer")?,
        None => History::new("writer"),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {}", total(&history))?;
    out.flush()?;
    loop {
        let n = total(&history);
        // Context makes each generation a little larger than the last.
        history.record(&format!("film-{}", n % 97), Kind::Play, n as i64, Some((n % 24) as u8), &[("pad", &"x".repeat(64))])?;
        if n % 40 == 39 {
            history.compact(10)?;
        }
        save_sealed(&mut store, &key, [9; 16], &history.save())?;
        writeln!(out, "saved {}", n + 1)?;
        out.flush()?;
    }
}
