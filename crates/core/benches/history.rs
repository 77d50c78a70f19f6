//! History, vault and sync benchmark, each next to its baseline in the same run:
//! recording events; save + seal vs save alone; open + unseal + load vs load alone; one new event
//! synced between two replicas of a 10,000-event history (bytes on the wire vs the whole saved
//! document, and time); the saved size as 100,000 events accumulate, compacted vs not.
//!
//! ```text
//! cargo bench -p hearth-core --no-default-features --bench history -- [--quick] [--json]
//! ```

use std::time::Instant;

use hearth_core::person::history::{History, Kind};
use hearth_core::person::sync::{Group, Replica};
use hearth_core::person::vault::{self, Key};

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Event `i` of a synthetic person: 1,000 items, a mix of kinds, some context.
fn record(h: &mut History, i: u64) {
    let kind = match i % 10 {
        0 => Kind::Rate((i % 5) as f64 + 1.0),
        1 => Kind::Like,
        2 => Kind::Skip,
        _ => Kind::Play,
    };
    let ctx: &[(&str, &str)] = if i.is_multiple_of(4) { &[("screen", "tv")] } else { &[] };
    h.record(&format!("film-{}", (i * 7919) % 1000), kind, 1_700_000_000_000 + i as i64 * 60_000, Some((i % 24) as u8), ctx)
        .expect("record");
}

/// Runs the sync protocol between two replicas until both are quiet: (envelopes, bytes).
fn sync(a: (&mut History, &mut Replica), b: (&mut History, &mut Replica)) -> (usize, usize) {
    let (ha, ra) = a;
    let (hb, rb) = b;
    let (mut n, mut bytes) = (0, 0);
    loop {
        let mut quiet = true;
        if let Some(m) = ra.outgoing(ha, rb.id()).expect("outgoing") {
            (n, bytes, quiet) = (n + 1, bytes + m.len(), false);
            rb.incoming(hb, &m).expect("incoming");
        }
        if let Some(m) = rb.outgoing(hb, ra.id()).expect("outgoing") {
            (n, bytes, quiet) = (n + 1, bytes + m.len(), false);
            ra.incoming(ha, &m).expect("incoming");
        }
        if quiet {
            return (n, bytes);
        }
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let json = std::env::args().any(|a| a == "--json");
    let (events, total, reps) = if quick { (2_000u64, 20_000u64, 3) } else { (10_000, 100_000, 7) };
    let mut rows: Vec<(String, String, String, String)> = vec![];
    let mut row = |what: &str, hearth: String, base: String, ratio: String| rows.push((what.into(), hearth, base, ratio));

    // Record.
    let t = Instant::now();
    let mut h = History::new("phone");
    for i in 0..events {
        record(&mut h, i);
    }
    let rec = ms(t);
    row(&format!("record {events} events"), format!("{rec:.0} ms ({:.1} µs/event)", rec * 1e3 / events as f64), "-".into(), "-".into());

    // Save + seal vs save.
    let key = Key::random().expect("key");
    let save = median((0..reps).map(|_| {
        let t = Instant::now();
        std::hint::black_box(h.save());
        ms(t)
    }).collect());
    let mut sealed = vec![];
    let seal = median((0..reps).map(|_| {
        let t = Instant::now();
        sealed = vault::seal(&key, [1; 16], &h.save()).expect("seal");
        ms(t)
    }).collect());
    row("save + seal", format!("{seal:.1} ms, {} KiB", sealed.len() / 1024), format!("save alone {save:.1} ms"), format!("{:.2}×", seal / save));

    // Open + unseal + load vs load.
    let plain = h.save();
    let load = median((0..reps).map(|_| {
        let t = Instant::now();
        std::hint::black_box(History::load(&plain, "phone").expect("load"));
        ms(t)
    }).collect());
    let open = median((0..reps).map(|_| {
        let t = Instant::now();
        let (_, p) = vault::open(&key, &sealed).expect("open");
        std::hint::black_box(History::load(&p, "phone").expect("load"));
        ms(t)
    }).collect());
    row("open + unseal + load", format!("{open:.1} ms"), format!("load alone {load:.1} ms"), format!("{:.2}×", open / load));
    let t = Instant::now();
    let pass = Key::from_passphrase("correct horse battery staple").expect("kdf");
    let kdf = ms(t);
    std::hint::black_box(pass);
    row("passphrase key (PBKDF2, 600k)", format!("{kdf:.0} ms"), "-".into(), "-".into());

    // Sync one new event between two replicas that already agree.
    let group = Group::generate().expect("group");
    let (mut ra, mut rb) = (Replica::new(group.clone()).expect("replica"), Replica::new(group).expect("replica"));
    let mut b = History::empty("laptop");
    let (first_n, first_bytes) = sync((&mut h, &mut ra), (&mut b, &mut rb));
    let mut times = vec![];
    let mut wire = vec![];
    for i in 0..reps as u64 {
        record(&mut h, events + i);
        let t = Instant::now();
        let (n, bytes) = sync((&mut h, &mut ra), (&mut b, &mut rb));
        times.push(ms(t));
        wire.push((n, bytes));
    }
    assert_eq!(b.events().len(), h.events().len(), "the replicas agree");
    let (n, bytes) = wire[wire.len() / 2];
    let doc = h.save().len();
    row(
        &format!("sync one new event ({events}-event history)"),
        format!("{:.2} ms, {n} envelopes, {bytes} B", median(times)),
        format!("whole document {} KiB", doc / 1024),
        format!("{:.4}×", bytes as f64 / doc as f64),
    );
    row(
        "first sync to a new device (snapshot)",
        format!("{first_n} envelopes, {} KiB", first_bytes / 1024),
        format!("whole document {} KiB", doc / 1024),
        format!("{:.2}×", first_bytes as f64 / doc as f64),
    );

    // Size as events accumulate: compacted (every 1,000 new events, keeping the newest 500) vs not.
    let (mut c, mut raw) = (History::new("phone"), History::new("phone"));
    let t = Instant::now();
    let mut points = vec![];
    for i in 0..total {
        record(&mut c, i);
        record(&mut raw, i);
        if i % 1000 == 999 {
            c.compact(500).expect("compact");
        }
        if (i + 1) % (total / 5) == 0 {
            let (cs, rs) = (c.save().len(), raw.save().len());
            eprintln!("  {} events: compacted {} KiB, uncompacted {} KiB", i + 1, cs / 1024, rs / 1024);
            points.push((i + 1, cs, rs));
        }
    }
    eprintln!("  ({:.0} s for both documents)", t.elapsed().as_secs_f64());
    for (n, cs, rs) in &points {
        row(&format!("saved size after {n} events"), format!("compacted {} KiB", cs / 1024), format!("uncompacted {} KiB", rs / 1024), format!("{:.3}×", *cs as f64 / *rs as f64));
    }

    if json {
        let v: Vec<_> = rows.iter().map(|(w, a, b, r)| serde_json::json!({"what": w, "hearth": a, "baseline": b, "ratio": r})).collect();
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return;
    }
    println!("| what | hearth | baseline | ratio |\n|---|---|---|---|");
    for (w, a, b, r) in rows {
        println!("| {w} | {a} | {b} | {r} |");
    }
}
