#!/usr/bin/env python3
"""hearth int8 scoring against FAISS on the same data, side by side in one run.

For each (n, d): draws Gaussian items and queries (numpy, seeded), writes them to a file, runs
hearth's scoring bench on that file (`cargo bench -p hearth-core --bench scoring -- --data F`),
and times FAISS on the same arrays, one thread, one query at a time:
  - IndexScalarQuantizer(d, QT_8bit, METRIC_INNER_PRODUCT)  (FAISS SQ8, the int8 peer)
  - IndexFlatIP(d)                                            (exact f32)
Prints a table of per-query medians and hearth/FAISS ratios, or with --json one JSON object per
configuration.

    pip install faiss-cpu numpy        # bench/requirements.txt pins the versions measured
    python3 bench/faiss_compare.py [--json] [--n N ...] [--d D ...] [--queries Q]
"""

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time

try:
    import faiss
    import numpy as np
except ImportError as e:  # a clear message, not a traceback
    sys.exit(f"faiss_compare: {e.name} is not installed: pip install -r bench/requirements.txt")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_data(path, items, queries):
    n, d = items.shape
    with open(path, "wb") as f:
        f.write(struct.pack("<II", n, d))
        f.write(np.ascontiguousarray(items, dtype="<f4").tobytes())
        f.write(struct.pack("<I", queries.shape[0]))
        f.write(np.ascontiguousarray(queries, dtype="<f4").tobytes())


def hearth(path, queries):
    cmd = ["cargo", "bench", "-q", "-p", "hearth-core", "--no-default-features", "--bench", "scoring",
           "--", "--json", "--data", path, "--queries", str(queries)]
    out = subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if len(rows) != 1:
        sys.exit(f"faiss_compare: expected one result from the hearth bench, got {out!r}")
    return rows[0]


def time_faiss(index, queries, k, reps):
    index.search(queries[:1], k)  # warm-up
    times = []
    for i in range(reps):
        q = queries[i % len(queries)][None, :]
        t = time.perf_counter()
        index.search(q, k)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true")
    p.add_argument("--n", type=int, action="append")
    p.add_argument("--d", type=int, action="append")
    p.add_argument("--queries", type=int, default=30)
    a = p.parse_args()
    ns = a.n or [100_000, 1_000_000]
    ds = a.d or [32, 64, 128]
    faiss.omp_set_num_threads(1)
    # Build hearth's bench once, before any timing.
    subprocess.run(["cargo", "bench", "-q", "-p", "hearth-core", "--no-default-features", "--bench", "scoring",
                    "--no-run"], cwd=ROOT, check=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in ns:
            for d in ds:
                print(f"n={n} d={d} ...", file=sys.stderr)
                rng = np.random.default_rng(n * 1000 + d)
                items = rng.standard_normal((n, d), dtype=np.float32)
                queries = rng.standard_normal((32, d), dtype=np.float32)
                path = os.path.join(tmp, "data.bin")
                write_data(path, items, queries)
                h = hearth(path, a.queries)
                os.remove(path)
                sq8 = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
                sq8.train(items)
                sq8.add(items)
                sq8_ms = time_faiss(sq8, queries, 10, a.queries)
                del sq8
                flat = faiss.IndexFlatIP(d)
                flat.add(items)
                flat_ms = time_faiss(flat, queries, 10, min(a.queries, 15))
                del flat, items
                row = dict(h, faiss_sq8_ms=round(sq8_ms, 4), faiss_flat_ms=round(flat_ms, 4),
                           hearth_over_faiss_sq8=round(h["hearth_int8_ms"] / sq8_ms, 3),
                           faiss_sq8_over_hearth=round(sq8_ms / h["hearth_int8_ms"], 3),
                           hearth_f32_over_faiss_flat=round(h["hearth_f32_ms"] / flat_ms, 3))
                rows.append(row)
                if a.json:
                    print(json.dumps(row), flush=True)
    if not a.json:
        head = f"{'n':>9} {'d':>4} | {'floor':>8} {'hearth i8':>9} {'FAISS SQ8':>9} {'hearth f32':>10} {'FAISS flat':>10} | {'i8/floor':>8} {'SQ8/hearth':>10} {'f32/flat':>8}"
        print(head)
        print("-" * len(head))
        for r in rows:
            print(f"{r['n']:>9} {r['d']:>4} | {r['floor_ms']:>8.3f} {r['hearth_int8_ms']:>9.3f} {r['faiss_sq8_ms']:>9.3f} "
                  f"{r['hearth_f32_ms']:>10.3f} {r['faiss_flat_ms']:>10.3f} | {r['int8_over_floor']:>8.2f} "
                  f"{r['faiss_sq8_over_hearth']:>10.2f} {r['hearth_f32_over_faiss_flat']:>8.2f}")
        print(f"(ms per query, medians, 1 thread, k = 10; faiss {faiss.__version__})")


if __name__ == "__main__":
    main()
