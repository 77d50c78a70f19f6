//! Catalog scoring benchmark: hearth int8 (1 thread, all threads), hearth exact f32, and a plain
//! read of the same bytes (the memory floor), side by side in one run, on Gaussian data.
//!
//! ```text
//! cargo bench -p hearth-core --no-default-features --bench scoring -- [--json] [--quick]
//!     [--n N]... [--d D]... [--queries Q] [--data FILE]
//! ```
//! `--data FILE` reads items and queries written by `bench/faiss_compare.py` (so FAISS and hearth
//! score the very same numbers): `n u32, d u32, n·d f32, q u32, q·d f32`, little-endian.

use std::hint::black_box;
use std::time::Instant;

use hearth_core::artifact::shard::CatalogShard;
use hearth_core::quant::{QuantizedVector, quantize};
use hearth_core::device::score::{self, Hit};

struct Args {
    json: bool,
    ns: Vec<usize>,
    ds: Vec<usize>,
    queries: usize,
    data: Option<String>,
    threads: usize,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        json: false,
        ns: vec![],
        ds: vec![],
        queries: 30,
        data: None,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--json" => a.json = true,
            "--quick" => {
                a.ns = vec![100_000];
                a.ds = vec![64];
                a.queries = 10;
            }
            "--n" => a.ns.push(value("--n")?.parse().map_err(|e| format!("--n: {e}"))?),
            "--d" => a.ds.push(value("--d")?.parse().map_err(|e| format!("--d: {e}"))?),
            "--queries" => a.queries = value("--queries")?.parse().map_err(|e| format!("--queries: {e}"))?,
            "--threads" => a.threads = value("--threads")?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--data" => a.data = Some(value("--data")?),
            "--bench" => {} // passed by `cargo bench`
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.ns.is_empty() {
        a.ns = vec![100_000, 1_000_000];
    }
    if a.ds.is_empty() {
        a.ds = vec![32, 64, 128];
    }
    Ok(a)
}

fn read_data(path: &str) -> Result<(usize, usize, Vec<f32>, Vec<f32>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let mut pos = 0;
    let u32_at = |pos: &mut usize| -> Result<usize, String> {
        let b = bytes.get(*pos..*pos + 4).ok_or(format!("{path}: truncated"))?;
        *pos += 4;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let n = u32_at(&mut pos)?;
    let d = u32_at(&mut pos)?;
    let floats = |pos: &mut usize, count: usize| -> Result<Vec<f32>, String> {
        let b = bytes.get(*pos..*pos + count * 4).ok_or(format!("{path}: truncated"))?;
        *pos += count * 4;
        Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    };
    let items = floats(&mut pos, n * d)?;
    let q = u32_at(&mut pos)?;
    let queries = floats(&mut pos, q * d)?;
    Ok((n, d, items, queries))
}

/// Median per-call times in milliseconds of several contenders, measured interleaved (round
/// `r` runs each contender once, in turn) so that a slow moment of the machine hits all of them
/// alike and their ratios stay fair. One warm-up round first.
fn time_interleaved<const C: usize>(reps: usize, f: &mut [&mut dyn FnMut(usize); C]) -> [f64; C] {
    let mut times = vec![Vec::with_capacity(reps); C];
    for r in 0..=reps {
        for (c, g) in f.iter_mut().enumerate() {
            let start = Instant::now();
            g(r);
            if r > 0 {
                times[c].push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    std::array::from_fn(|c| {
        let t = &mut times[c];
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    })
}

struct Row {
    n: usize,
    d: usize,
    threads: usize,
    kernel: &'static str,
    int8_1t: f64,
    avx2_1t: f64,
    int8_mt: f64,
    f32_1t: f64,
    floor: f64,
    floor_mt: f64,
    recall: f64,
}

fn run(n: usize, d: usize, items: &[f32], users: &[f32], a: &Args) -> Result<Row, String> {
    let ids: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    let shard = CatalogShard::from_f32("bench", ids, d, items).map_err(|e| e.to_string())?;
    let view = shard.view();
    let queries: Vec<QuantizedVector> =
        users.chunks_exact(d).map(|u| quantize(u).map_err(|e| e.to_string())).collect::<Result<_, _>>()?;
    let nq = queries.len();
    let k = 10;
    let parts = a.threads.max(1);
    let part = n.div_ceil(parts);
    let [floor, floor_mt, int8_1t, int8_mt, avx2_1t] = time_interleaved(
        a.queries,
        &mut [
            &mut |_| {
                black_box(score::memory_floor(black_box(view)));
            },
            &mut |_| {
                use rayon::prelude::*;
                let r: u32 = (0..parts)
                    .into_par_iter()
                    .map(|t| score::memory_floor(view.slice((t * part).min(n)..((t + 1) * part).min(n))))
                    .reduce(|| 0, |x, y| x | y);
                black_box(r);
            },
            &mut |i| {
                black_box(score::top_k(view, &queries[i % nq], k));
            },
            &mut |i| {
                black_box(score::top_k_threads(view, &queries[i % nq], k, a.threads));
            },
            // The AVX2 kernel side by side (the best kernel may be AVX-512 VNNI).
            &mut |i| {
                black_box(score::top_k_with(score::CpuKernel::Avx2, view, &queries[i % nq], k));
            },
        ],
    );
    let [f32_1t] = time_interleaved(
        a.queries.min(15),
        &mut [&mut |i| {
            black_box(score::exact_top_k(items, d, &users[(i % nq) * d..(i % nq + 1) * d], k));
        }],
    );
    let mut recall = 0.0;
    for (i, q) in queries.iter().enumerate() {
        let exact: Vec<Hit> = score::exact_top_k(items, d, &users[i * d..(i + 1) * d], k);
        recall += hearth_core::testkit::recall(&score::top_k(view, q, k), &exact);
    }
    Ok(Row { n, d, threads: a.threads, kernel: score::cpu_kernel(), int8_1t, avx2_1t, int8_mt, f32_1t, floor, floor_mt, recall: recall / nq as f64 })
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("scoring bench: {e}");
            std::process::exit(2);
        }
    };
    let mut rows = vec![];
    let mut configs = vec![];
    if let Some(path) = &a.data {
        match read_data(path) {
            Ok(c) => configs.push(c),
            Err(e) => {
                eprintln!("scoring bench: {e}");
                std::process::exit(1);
            }
        }
    }
    let generated = a.data.is_none();
    let plan: Vec<(usize, usize)> = if generated { a.ns.iter().flat_map(|&n| a.ds.iter().map(move |&d| (n, d))).collect() } else { vec![] };
    let total = configs.len() + plan.len();
    let mut do_row = |n: usize, d: usize, items: &[f32], users: &[f32]| {
        eprintln!("[{}/{total}] n={n} d={d} ...", rows.len() + 1);
        match run(n, d, items, users, &a) {
            Ok(r) => {
                if a.json {
                    println!(
                        "{{\"n\":{},\"d\":{},\"threads\":{},\"kernel\":\"{}\",\"hearth_int8_ms\":{:.4},\"avx2_ms\":{:.4},\"hearth_int8_mt_ms\":{:.4},\"hearth_f32_ms\":{:.4},\"floor_ms\":{:.4},\"floor_mt_ms\":{:.4},\"int8_over_floor\":{:.3},\"recall_at_10\":{:.4}}}",
                        r.n, r.d, r.threads, r.kernel, r.int8_1t, r.avx2_1t, r.int8_mt, r.f32_1t, r.floor, r.floor_mt, r.int8_1t / r.floor, r.recall
                    );
                }
                rows.push(r);
            }
            Err(e) => {
                eprintln!("scoring bench: {e}");
                std::process::exit(1);
            }
        }
    };
    for (n, d, items, users) in &configs {
        do_row(*n, *d, items, users);
    }
    for (n, d) in plan {
        let seed = (n * 1000 + d) as u64;
        let items = hearth_core::testkit::gaussian(seed, n * d);
        let users = hearth_core::testkit::gaussian(seed + 1, 32 * d);
        do_row(n, d, &items, &users);
    }
    if !a.json {
        println!(
            "{:>9} {:>4} {:>10} | {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} | {:>10} {:>9} {:>9} {:>8} {:>7} | {:>9}",
            "n", "d", "kernel", "floor 1t", "int8 1t", "avx2 1t", "f32 1t", "floor all", "int8 all", "int8/floor", "avx2/best", "all/floor", "f32/int8", "1t/all", "recall@10"
        );
        for r in &rows {
            println!(
                "{:>9} {:>4} {:>10} | {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>9.3} {:>8.3} | {:>10.2} {:>9.2} {:>9.2} {:>8.2} {:>7.2} | {:>9.4}",
                r.n, r.d, r.kernel, r.floor, r.int8_1t, r.avx2_1t, r.f32_1t, r.floor_mt, r.int8_mt,
                r.int8_1t / r.floor, r.avx2_1t / r.int8_1t, r.int8_mt / r.floor_mt, r.f32_1t / r.int8_1t, r.int8_1t / r.int8_mt, r.recall
            );
        }
        println!(
            "(ms per query, medians of interleaved runs, k = 10; 'all' = {} threads; floor = a plain read of the int8 rows and scales)",
            a.threads
        );
    }
}
