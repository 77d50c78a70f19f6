//! Crash safety of the sealed, two-generation file store: a writer process
//! (`src/bin/vault_writer.rs`) saving its history over and over is killed (SIGKILL) at random
//! moments, 240 times. After every kill the vault must open, to the last generation the writer
//! reported as saved or to the one it was writing: never corrupt, never older.
//!
//! A killed process leaves the kernel's page cache intact, so this checks the write protocol
//! (temporary file, fsync, link of the previous generation, rename, directory fsync, verify,
//! commit) against interruption at any step, not against power loss.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use hearth_core::person::history::History;
use hearth_core::person::store::{FileStore, load_sealed};
use hearth_core::person::vault::Key;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[test]
fn killing_a_writer_never_corrupts_or_loses_the_vault() {
    let dir = std::env::temp_dir().join(format!("hearth-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let key = Key::from_device_bytes([42; 32]);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (mut acknowledged, mut recovered, mut mid_write) = (0u64, 0, 0);
    let kills = 240;
    for round in 0..kills {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vault_writer"))
            .arg(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the writer");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = rx.recv_timeout(Duration::from_secs(30)).expect("the writer starts");
        let start: u64 = ready.strip_prefix("ready ").and_then(|n| n.parse().ok()).expect("ready line");
        assert_eq!(start, acknowledged, "round {round}: the writer reopened an older generation");
        // Let it write for a random while (a few saves), then kill it mid-flight.
        std::thread::sleep(Duration::from_micros(rng.random_range(0..80_000)));
        child.kill().expect("kill");
        child.wait().expect("reap");
        reader.join().expect("reader");
        while let Ok(line) = rx.try_recv() {
            if let Some(n) = line.strip_prefix("saved ").and_then(|n| n.parse().ok()) {
                acknowledged = n;
            }
        }
        let store = FileStore::open(&dir, "history.vault").expect("store");
        let loaded = load_sealed(&store, &key)
            .unwrap_or_else(|e| panic!("round {round}: the vault does not open after a kill: {e}"))
            .expect("a generation is there");
        recovered += usize::from(loaded.recovered);
        let history = History::load(&loaded.plain, "checker").expect("the history loads");
        let n: u64 = history.items().iter().map(|s| s.counts.iter().sum::<u64>()).sum();
        assert!(
            n == acknowledged || n == acknowledged + 1,
            "round {round}: opened a history of {n} events, the writer had saved {acknowledged}"
        );
        if n == acknowledged + 1 {
            mid_write += 1; // killed after the rename, before it could report the save
            acknowledged = n;
        }
    }
    eprintln!(
        "{kills} kills: {acknowledged} events saved in all; {mid_write} kills landed between the rename and the report, {recovered} opens fell back to the previous generation"
    );
    assert!(acknowledged > kills as u64, "the writer saved too little to test anything ({acknowledged})");
    let _ = std::fs::remove_dir_all(&dir);
}
