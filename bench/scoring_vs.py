#!/usr/bin/env python3
"""hearth's scoring bench beside the same bench of another commit, in one run.

Builds `crates/core/benches/scoring.rs` of this checkout and of REV (exported with `git archive`
into the build cache, built into the same $CARGO_TARGET_DIR, so only hearth-core rebuilds), then
runs the two binaries in turn, ROUNDS times, the order flipping every round so neither always runs
first on this shared machine. Each run prints its per-configuration medians (`--json`); this
prints, per configuration, the median over rounds of each build's int8 1-thread time and its
memory floor (the same plain read in both builds: the control), their spread, and the ratios.

    python3 bench/scoring_vs.py REV [--rounds 5] [-- BENCH ARGS, default: --n 1000000 --d 64]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(os.path.expanduser("~"), ".cache/hearth/target"))


def export(rev):
    """The tree of `rev`, exported once under the build cache."""
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
    dest = os.path.join(os.path.dirname(TARGET), "baselines", sha[:12])
    if not os.path.isdir(dest):
        os.makedirs(dest + ".part", exist_ok=True)
        archive = subprocess.Popen(["git", "archive", sha], cwd=ROOT, stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", dest + ".part"], stdin=archive.stdout, check=True)
        if archive.wait() != 0:
            sys.exit(f"scoring_vs: git archive {rev} failed")
        os.rename(dest + ".part", dest)
    return sha[:12], dest


def build(tree):
    """The scoring bench binary of the workspace at `tree`."""
    out = subprocess.run(
        ["cargo", "bench", "--no-run", "--locked", "--message-format=json", "-p", "hearth-core", "--no-default-features", "--bench", "scoring"],
        cwd=tree, check=True, capture_output=True, text=True, env={**os.environ, "CARGO_TARGET_DIR": TARGET},
    ).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "scoring" and msg.get("executable"):
            return msg["executable"]
    sys.exit(f"scoring_vs: no scoring bench built in {tree}")


def run(binary, args):
    out = subprocess.run([binary, *args, "--json"], check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rev", help="the baseline commit")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", action="store_true", help="one JSON object per configuration")
    p.add_argument("--build-only", action="store_true", help="build both benches and stop")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    a = p.parse_args(argv[:cut])
    # After --: the bench's own arguments.
    bench_args = argv[cut + 1:] or ["--n", "1000000", "--d", "64"]
    sha, tree = export(a.rev)
    print(f"building this checkout's bench and {sha}'s ...", file=sys.stderr)
    builds = {"this": build(ROOT), "base": build(tree)}
    if a.build_only:
        print(f"this: {builds['this']}\nbase: {builds['base']}")
        return
    results = {"this": [], "base": []}
    for r in range(a.rounds):
        order = ["this", "base"] if r % 2 == 0 else ["base", "this"]
        for name in order:
            print(f"round {r + 1}/{a.rounds}: {name}", file=sys.stderr)
            results[name].append(run(builds[name], bench_args))
    rows = []
    for i, cfg in enumerate(results["this"][0]):
        col = lambda name, key: [run_[i][key] for run_ in results[name]]
        this, base = col("this", "hearth_int8_ms"), col("base", "hearth_int8_ms")
        this_floor, base_floor = col("this", "floor_ms"), col("base", "floor_ms")
        rows.append({
            "n": cfg["n"], "d": cfg["d"], "kernel": cfg["kernel"], "base_kernel": results["base"][0][i]["kernel"], "rounds": a.rounds, "baseline": sha,
            "this_ms": statistics.median(this), "this_range": [min(this), max(this)],
            "base_ms": statistics.median(base), "base_range": [min(base), max(base)],
            "this_floor_ms": statistics.median(this_floor), "base_floor_ms": statistics.median(base_floor),
            "this_over_base": statistics.median(this) / statistics.median(base),
            "per_round_ratios": [t / b for t, b in zip(this, base)],
        })
    if a.json:
        for row in rows:
            print(json.dumps(row))
        return
    print(f"int8 top-10, 1 thread, ms per query: this checkout vs {sha}, {a.rounds} rounds each, interleaved")
    print(f"{'n':>9} {'d':>4} {'kernel':>11} {'base kernel':>11} | {'this':>7} {'range':>13} | {'base':>7} {'range':>13} | {'this/base':>9} {'per round':>22} | {'floor this':>10} {'floor base':>10}")
    for r in rows:
        rng = lambda x: f"{x[0]:.3f}-{x[1]:.3f}"
        per = " ".join(f"{x:.2f}" for x in r["per_round_ratios"])
        print(f"{r['n']:>9} {r['d']:>4} {r['kernel']:>11} {r['base_kernel']:>11} | {r['this_ms']:>7.3f} {rng(r['this_range']):>13} | {r['base_ms']:>7.3f} {rng(r['base_range']):>13} | {r['this_over_base']:>9.3f} {per:>22} | {r['this_floor_ms']:>10.3f} {r['base_floor_ms']:>10.3f}")


if __name__ == "__main__":
    main()
