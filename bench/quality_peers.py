#!/usr/bin/env python3
"""hearth's model quality beside tuned peers, on hearth's own split and candidates.

For each dataset: writes hearth's split (`hearth-aggregator split`: items, train, validation and
test held-out items, 99 sampled candidates per held-out user), trains the hearth model when its
directory has no manifest.json, takes hearth's and most-popular's numbers from
`hearth-aggregator eval --json` on that test split, and scores two peers on the same files:
  - ALS, `implicit` on the CPU (confidence = 1 + alpha * value, value = 1 or log1p(rating)),
    coordinate search over factors, regularization, alpha/value and iterations (<= 30 fits)
  - EASE (Steck, WWW 2019): B = I - P diag(1/diag(P)), P = (X'X + lambda I)^-1, diag(B) = 0,
    scores = X B on binary X, lambda on a log grid 1..5000 (skipped above 20,000 items)
Every peer is tuned by full-ranking NDCG@10 on the validation split (fit on train.tsv), then
refit once on train.tsv + valid.tsv and scored on the test split. Metrics are hearth's: HR@10
and NDCG@10 of the held-out item's 0-based rank among its sampled candidates ("sampled") and
among every item the user has no training interaction with ("full"), ties broken at random
(seeded), NaN ranking last; means over users. Prints one table per dataset, or with --json one
JSON object per dataset.

Datasets: ml100k ($HEARTH_ML100K or ../shared/data/movielens-100k, model models/ml100k, never
retrained), long-tail and wide-catalog (`hearth-aggregator synth`, under
${CARGO_TARGET_DIR:-~/.cache/hearth/target}/quality/NAME/{data,model,split}); or a custom one
with --name/--data/--items/--model. The binary is $HEARTH_AGG, by default
${CARGO_TARGET_DIR:-~/.cache/hearth/target}/debug/hearth-aggregator.

    python3 -m venv ~/.cache/hearth/venv-quality
    ~/.cache/hearth/venv-quality/bin/pip install -r bench/quality_requirements.txt
    cargo build -p hearth-aggregator
    ~/.cache/hearth/venv-quality/bin/python bench/quality_peers.py [--json] [--only NAME ...]
    ~/.cache/hearth/venv-quality/bin/python bench/quality_peers.py --name N --data D [--items I] [--model M]
    # peers only, on split files already written (no hearth binary needed):
    ~/.cache/hearth/venv-quality/bin/python bench/quality_peers.py --name N --split DIR --no-hearth
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections import defaultdict, deque

try:
    import numpy as np
    import scipy
    import scipy.sparse as sp
    import threadpoolctl
    import implicit
    try:
        from implicit.cpu.als import AlternatingLeastSquares
    except ImportError:
        from implicit.als import AlternatingLeastSquares
except ImportError as e:  # a clear message, not a traceback
    sys.exit(f"quality_peers: {e.name} is not installed: pip install -r bench/quality_requirements.txt")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 10
EASE_MAX_ITEMS = 20_000
EASE_F64_MAX = 6_000  # float64 eigendecompositions up to this size, float32 above (half the memory and time)
ALS_MAX_FITS = 30
THREADS = os.cpu_count() or 1


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def target_dir():
    t = os.environ.get("CARGO_TARGET_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "hearth", "target")
    return t if os.path.isabs(t) else os.path.join(ROOT, t)


def hearth_agg():
    return os.environ.get("HEARTH_AGG") or os.path.join(target_dir(), "debug", "hearth-aggregator")


def builtin_datasets():
    q = os.path.join(target_dir(), "quality")
    ml = os.environ.get("HEARTH_ML100K") or os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "movielens-100k"))
    out = [dict(name="ml100k", data=ml, items=None, model=os.path.join(ROOT, "models", "ml100k"),
                split=os.path.join(q, "ml100k", "split"), synth=None, retrain=False)]
    for shape, has_items in [("long-tail", False), ("wide-catalog", True)]:
        d = os.path.join(q, shape, "data")
        out.append(dict(name=shape, data=os.path.join(d, "interactions.csv"),
                        items=os.path.join(d, "items.csv") if has_items else None,
                        model=os.path.join(q, shape, "model"), split=os.path.join(q, shape, "split"),
                        synth=(shape, d), retrain=True))
    return out


# ---------------------------------------------------------------- hearth's side


def run_agg(args, what):
    cmd = [hearth_agg()] + args
    log(f"$ {' '.join(cmd)}")
    try:
        p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    except FileNotFoundError:
        sys.exit(f"quality_peers: {cmd[0]} not found: cargo build -p hearth-aggregator, or set HEARTH_AGG")
    if p.returncode != 0:
        sys.exit(f"quality_peers: {what} failed (exit {p.returncode}): {' '.join(cmd)}")
    return p.stdout


def data_args(ds):
    return ["--data", ds["data"]] + (["--items", ds["items"]] if ds["items"] else [])


def hearth_side(ds):
    """Writes the synthetic data, the split and (if needed) the model; returns hearth's eval JSON."""
    if not os.path.isfile(hearth_agg()):
        sys.exit(f"quality_peers: {hearth_agg()} not found: cargo build -p hearth-aggregator, or set HEARTH_AGG")
    if ds["synth"] and not os.path.exists(ds["data"]):
        shape, d = ds["synth"]
        os.makedirs(d, exist_ok=True)
        run_agg(["synth", "--shape", shape, "--out", d], f"synth --shape {shape}")
    if not os.path.exists(ds["data"]):
        sys.exit(f"quality_peers: {ds['name']}: data {ds['data']} not found")
    os.makedirs(ds["split"], exist_ok=True)
    run_agg(["split"] + data_args(ds) + ["--out", ds["split"]], f"{ds['name']}: split")
    if not os.path.exists(os.path.join(ds["model"], "manifest.json")):
        if not ds["retrain"]:
            sys.exit(f"quality_peers: {ds['name']}: {ds['model']}/manifest.json not found (this model is "
                     "committed, not retrained here)")
        t = time.perf_counter()
        run_agg(["train"] + data_args(ds) + ["--out", ds["model"]], f"{ds['name']}: train")
        ds["train_s"] = time.perf_counter() - t
        log(f"{ds['name']}: trained {ds['model']} in {ds['train_s']:.1f} s")
    out = run_agg(["eval", "--model", ds["model"]] + data_args(ds) +
                  ["--test", os.path.join(ds["split"], "test.tsv"),
                   "--candidates", os.path.join(ds["split"], "candidates.tsv"), "--json"], f"{ds['name']}: eval")
    rows = [line for line in out.splitlines() if line.startswith("{")]
    if not rows:
        sys.exit(f"quality_peers: {ds['name']}: no JSON from hearth eval: {out!r}")
    return json.loads(rows[-1])


# ---------------------------------------------------------------- split files


def read_tsv(path):
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\r\n").split("\t") for line in f if line.strip()]
    except FileNotFoundError:
        sys.exit(f"quality_peers: {path} not found (written by hearth-aggregator split)")


def parse_rating(fields):
    try:
        r = float(fields[2]) if len(fields) > 2 and fields[2] != "" else math.nan
    except ValueError:
        r = math.nan
    return r


class Split:
    """hearth's split files, interned: users in train.tsv order, items in items.tsv order."""

    def __init__(self, d):
        self.items = {}
        for f in read_tsv(os.path.join(d, "items.tsv")):
            self.items.setdefault(f[0], len(self.items))
        self.n_items = len(self.items)
        self.users = {}
        tu, ti, tr = [], [], []
        for f in read_tsv(os.path.join(d, "train.tsv")):
            tu.append(self.users.setdefault(f[0], len(self.users)))
            ti.append(self.item(f[1], "train.tsv"))
            tr.append(parse_rating(f))
        self.n_users = len(self.users)
        tr = np.array(tr)
        self.has_ratings = bool(np.isfinite(tr).any()) and np.nanmin(tr) != np.nanmax(tr)
        fill = float(np.nanmedian(tr)) if np.isfinite(tr).any() else 1.0
        self.train = (np.array(tu, dtype=np.int64), np.array(ti, dtype=np.int64), np.where(np.isfinite(tr), tr, fill))
        self.valid = self.heldout(d, "valid.tsv", "valid_candidates.tsv", fill)
        self.test = self.heldout(d, "test.tsv", "candidates.tsv", fill)

    def item(self, ext, where):
        j = self.items.get(ext)
        if j is None:
            sys.exit(f"quality_peers: {where}: item {ext!r} is not in items.tsv")
        return j

    def heldout(self, d, name, cand_name, fill):
        cands = defaultdict(deque)
        for f in read_tsv(os.path.join(d, cand_name)):
            cands[f[0]].append([self.item(x, cand_name) for x in f[1:]])
        users, items, ratings, cand = [], [], [], []
        skipped = 0
        for f in read_tsv(os.path.join(d, name)):
            u = self.users.get(f[0])
            if u is None:
                skipped += 1
                continue
            if not cands[f[0]]:
                sys.exit(f"quality_peers: {name}: user {f[0]!r} has no line in {cand_name}")
            j = self.item(f[1], name)
            users.append(u)
            items.append(j)
            r = parse_rating(f)
            ratings.append(fill if math.isnan(r) else r)
            cand.append([c for c in cands[f[0]].popleft() if c != j])
        if skipped:
            log(f"quality_peers: {name}: {skipped} users not in train.tsv skipped (no history to score from)")
        width = max((len(c) for c in cand), default=0)
        pad = np.full((len(cand), max(width, 1)), -1, dtype=np.int64)
        for r, c in enumerate(cand):
            pad[r, :len(c)] = c
        return dict(users=np.array(users, dtype=np.int64), items=np.array(items, dtype=np.int64),
                    ratings=np.array(ratings), cands=pad)

    def matrix(self, with_valid, value="1", alpha=None):
        """Users x items CSR: binary (alpha None), or confidences 1 + alpha * sum of values."""
        u, i, r = self.train
        if with_valid:
            u = np.concatenate([u, self.valid["users"]])
            i = np.concatenate([i, self.valid["items"]])
            r = np.concatenate([r, self.valid["ratings"]])
        v = np.log1p(np.maximum(r, 0.0)) if value == "log1p" else np.ones(len(u))
        m = sp.csr_matrix((v, (u, i)), shape=(self.n_users, self.n_items))
        m.sum_duplicates()
        if alpha is None:
            m.data[:] = 1.0
        else:
            m.data = 1.0 + alpha * m.data
        return m


# ---------------------------------------------------------------- metrics


def evaluate(score_rows, held, seen, n_items, seed, batch=1024, coverage=False):
    """hearth's HR@K / NDCG@K under both protocols. score_rows(user_indices) -> dense scores;
    seen: CSR of the interactions full ranking excludes (the target itself never is)."""
    rng = np.random.default_rng(seed)
    users, targets, cands = held["users"], held["items"], held["cands"]
    n = len(users)
    acc = np.zeros(4)
    recommended = np.zeros(n_items, dtype=bool)
    for lo in range(0, n, batch):
        hi = min(n, lo + batch)
        rows = np.arange(hi - lo)
        s = np.asarray(score_rows(users[lo:hi]))
        s = np.where(np.isnan(s), -np.inf, s)
        t = s[rows, targets[lo:hi]][:, None]
        # sampled: among the candidates (target already removed, -1 = padding)
        c = cands[lo:hi]
        valid = c >= 0
        o = np.take_along_axis(s, np.maximum(c, 0), axis=1)
        above = ((o > t) & valid).sum(1)
        tied = ((o == t) & valid).sum(1)
        acc[0:2] += hits(above, tied, rng)
        # full: every item without a training interaction, the target excepted
        excl = seen[users[lo:hi]].toarray() > 0
        excl[rows, targets[lo:hi]] = True  # not among its own competitors
        above = ((s > t) & ~excl).sum(1)
        tied = ((s == t) & ~excl).sum(1)
        acc[2:4] += hits(above, tied, rng)
        if coverage:
            excl[rows, targets[lo:hi]] = False
            m = np.where(excl, -np.inf, s)
            top = np.argpartition(-m, K - 1, axis=1)[:, :K] if n_items > K else np.tile(np.arange(n_items), (len(rows), 1))
            ok = ~np.take_along_axis(excl, top, axis=1)
            recommended[top[ok]] = True
    acc /= max(n, 1)
    out = {"sampled": {"hr@10": acc[0], "ndcg@10": acc[1]}, "full": {"hr@10": acc[2], "ndcg@10": acc[3]}}
    if coverage:
        out["coverage@10"] = recommended.sum() / max(n_items, 1)
    return out


def hits(above, tied, rng):
    rank = above.copy()
    t = tied > 0
    if t.any():
        rank[t] += rng.integers(0, tied[t] + 1)
    hit = rank < K
    return np.array([hit.sum(), np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0).sum()])


# ---------------------------------------------------------------- peers


def most_popular(split, seed):
    x = split.matrix(with_valid=True)
    counts = np.bincount(np.concatenate([split.train[1], split.valid["items"]]), minlength=split.n_items)
    counts = counts.astype(np.float32)
    return evaluate(lambda u: np.broadcast_to(counts, (len(u), split.n_items)), split.test, x, split.n_items, seed,
                    coverage=True)


def als_fit(split, cfg, with_valid, seed):
    c = split.matrix(with_valid, value=cfg["value"], alpha=cfg["alpha"]).astype(np.float32)
    with threadpoolctl.threadpool_limits(1, "blas"):  # implicit threads itself; OpenBLAS' pool only fights it
        m = AlternatingLeastSquares(factors=cfg["factors"], regularization=cfg["reg"], alpha=1.0,
                                    iterations=cfg["it"], random_state=seed, num_threads=THREADS)
        m.fit(c, show_progress=False)
    uf, itf = np.asarray(m.user_factors), np.asarray(m.item_factors)
    return lambda u: uf[u] @ itf.T


def als_desc(cfg):
    v = "" if cfg["value"] == "1" else " value=log1p(r)"
    return f"factors={cfg['factors']} reg={cfg['reg']:g} alpha={cfg['alpha']:g}{v} it={cfg['it']}"


def tune_als(split, seed, quick):
    """Coordinate search from factors=64 reg=0.1 alpha=10 it=15: each axis in turn over its whole
    grid, then a second pass over the neighbours of the choices, at most ALS_MAX_FITS fits."""
    seen_v = split.matrix(with_valid=False)
    values = ["1", "log1p"] if split.has_ratings else ["1"]
    grids = {
        "alpha": [1, 3, 10, 30, 100] if not quick else [3, 30],
        "factors": [16, 32, 64, 128, 256] if not quick else [32, 128],
        "reg": [0.01, 0.1, 1, 10, 100, 1000] if not quick else [0.1, 10],
        "it": [10, 15, 30] if not quick else [15],
    }
    best = dict(factors=64, reg=0.1, alpha=10, value="1", it=15)
    tried = {}
    t0 = time.perf_counter()

    def trial(cfg):
        key = tuple(sorted(cfg.items()))
        if key not in tried:
            if len(tried) >= ALS_MAX_FITS:
                return -1.0
            t = time.perf_counter()
            m = evaluate(als_fit(split, cfg, False, seed), split.valid, seen_v, split.n_items, seed)
            tried[key] = m["full"]["ndcg@10"]
            log(f"  ALS {len(tried):2}: {als_desc(cfg):<48} valid full NDCG@10 {tried[key]:.4f} "
                f"({time.perf_counter() - t:.1f} s)")
        return tried[key]

    def near(axis):
        g = sorted(set(grids[axis]) | {best[axis]})
        i = g.index(best[axis])
        return g[max(0, i - 1):i + 2]

    score = trial(best)
    for second in (False, True):
        for axis in ("alpha", "factors", "reg", "it"):
            grid = near(axis) if second else grids[axis]
            for g in grid:
                for v in (values if axis == "alpha" else [best["value"]]):
                    cfg = dict(best, **{axis: g, "value": v})
                    s = trial(cfg)
                    if s > score:
                        best, score = cfg, s
    fit_s = time.perf_counter() - t0
    t = time.perf_counter()
    res = evaluate(als_fit(split, best, True, seed), split.test, split.matrix(with_valid=True), split.n_items, seed,
                   coverage=True)
    res.update(chosen=dict(best), chosen_text=als_desc(best), valid_ndcg=score, fits=len(tried),
               seconds=round(fit_s + time.perf_counter() - t, 1))
    return res


def eigh(a):
    # One BLAS thread: LAPACK's symmetric eigensolver gains little from threads on a few cores, and
    # measured 10x slower with two OpenBLAS threads while another process held the 2-core machine.
    with threadpoolctl.threadpool_limits(1, "blas"):
        return np.linalg.eigh(a)


class EaseSpectrum:
    """EASE for every lambda from one eigendecomposition of the smaller Gram matrix.

    With X (users x items, binary) and r = min(users, items):
      items <= users: X'X = Q diag(s) Q', so P = Q diag(1/(s+l)) Q', diag(P) = (Q*Q) 1/(s+l),
                      X_e P = (X_e Q) diag(1/(s+l)) Q'
      users < items:  XX' = V diag(s) V', W = V'X, so (Woodbury) X_e P = V_e diag(1/(s+l)) W,
                      diag(P) = (1 - (W*W)' 1/(s+l)) / l
    Scores X_e B = X_e - (X_e P) diag(1/diag(P)); diag(B) = 0 by construction.
    """

    def __init__(self, x, rows):
        self.x = x
        self.pos = {int(u): k for k, u in enumerate(rows)}
        u, n = x.shape
        dt = np.float64 if min(u, n) <= EASE_F64_MAX else np.float32
        xd = x.astype(dt)
        self.primal = n <= u
        if self.primal:
            s, q = eigh((xd.T @ xd).toarray())
            self.left = np.asarray(xd[rows] @ q)  # X_e Q
            self.right = q.T
            self.sq = q * q  # diag(P) = sq @ w
        else:
            s, v = eigh((xd @ xd.T).toarray())
            self.left = v[rows]
            self.right = np.ascontiguousarray(np.asarray(xd.T @ v).T)  # W = V'X
            self.sq = (self.right * self.right).T  # n x r
        self.s = np.maximum(s, 0.0)

    def scorer(self, lam):
        w = (1.0 / (self.s + lam)).astype(self.left.dtype)
        d = self.sq @ w
        if not self.primal:
            d = (1.0 - d) / lam
        inv_d = 1.0 / d

        def score(users):
            k = np.fromiter((self.pos[int(u)] for u in users), dtype=np.int64, count=len(users))
            xp = (self.left[k] * w) @ self.right
            return self.x[users].toarray() - xp * inv_d
        return score


def tune_ease(split, seed, quick):
    if split.n_items > EASE_MAX_ITEMS:
        msg = f"skipped: {split.n_items} items > {EASE_MAX_ITEMS} (EASE inverts an items x items matrix)"
        log(f"  EASE {msg}")
        return {"skipped": msg}
    log(f"  EASE: {split.n_items} items, {split.n_users} users: one eigendecomposition of a "
        f"{min(split.n_items, split.n_users)}-square Gram matrix per fit")
    t0 = time.perf_counter()
    grid = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000] if not quick else [10, 100, 1000]
    xv = split.matrix(with_valid=False)
    spec = EaseSpectrum(xv, np.unique(split.valid["users"]))
    best, score = None, -1.0
    for lam in grid:
        t = time.perf_counter()
        m = evaluate(spec.scorer(lam), split.valid, xv, split.n_items, seed)
        s = m["full"]["ndcg@10"]
        log(f"  EASE lambda={lam:<5g} valid full NDCG@10 {s:.4f} ({time.perf_counter() - t:.1f} s)")
        if s > score:
            best, score = lam, s
    del spec
    xt = split.matrix(with_valid=True)
    spec = EaseSpectrum(xt, np.unique(split.test["users"]))
    res = evaluate(spec.scorer(best), split.test, xt, split.n_items, seed, coverage=True)
    res.update(chosen={"lambda": best}, chosen_text=f"lambda={best:g}", valid_ndcg=score, fits=len(grid),
               seconds=round(time.perf_counter() - t0, 1))
    return res


# ---------------------------------------------------------------- report


def cols(m):
    return [m["sampled"]["hr@10"], m["sampled"]["ndcg@10"], m["full"]["hr@10"], m["full"]["ndcg@10"]]


def report(name, split, hearth, mp_ours, als, ease, as_json, train_s):
    n_test = len(split.test["users"])
    peers = {"ALS (implicit)": als, "EASE": ease}
    mp = hearth["most_popular"] if hearth else mp_ours
    rows = []
    if hearth:
        rows.append(("hearth two-tower", hearth["model"], "(hearth's own)"))
    for label, r in peers.items():
        rows.append((label, None if "skipped" in r else r, r.get("chosen_text") or r["skipped"]))
    rows.append(("most popular", mp, "(hearth's eval)" if hearth else "(this script's)"))
    best = [max(cols(r)[c] for _, r, _ in rows[1 if hearth else 0:] if r) for c in range(4)]
    ratios = [cols(hearth["model"])[c] / best[c] if hearth and best[c] > 0 else None for c in range(4)]
    if as_json:
        def clean(r):
            return {k: v for k, v in r.items() if k != "chosen_text"}
        out = {"dataset": name, "test_users": n_test, "items": split.n_items, "train_users": split.n_users,
               "valid_users": len(split.valid["users"]),
               "hearth": hearth["model"] if hearth else None, "hearth_train_s": train_s,
               "most_popular": mp, "most_popular_this_script": mp_ours,
               "als": clean(als), "ease": clean(ease),
               "hearth_over_best_peer": dict(zip(["sampled_hr@10", "sampled_ndcg@10", "full_hr@10", "full_ndcg@10"],
                                                 ratios)) if hearth else None,
               "versions": {"implicit": implicit.__version__, "numpy": np.__version__, "scipy": scipy.__version__}}
        print(json.dumps(out, default=float), flush=True)
        return
    print(f"{name}: {n_test} test users, {split.n_items} items"
          + (f" (hearth trained in {train_s:.1f} s)" if train_s else ""))
    print(f"{'recommender':<18} {'sampled HR@10':>13} {'NDCG@10':>8} {'full HR@10':>12} {'NDCG@10':>8}   chosen on validation")
    for label, r, chosen in rows:
        if r is None:
            print(f"{label:<18} {'-':>13} {'-':>8} {'-':>12} {'-':>8}   {chosen}")
        else:
            a, b, c, d = cols(r)
            print(f"{label:<18} {a:>13.4f} {b:>8.4f} {c:>12.4f} {d:>8.4f}   {chosen}")
    if hearth:
        a, b, c, d = (f"{r:.2f}x" if r is not None else "-" for r in ratios)
        print(f"{'hearth / best peer':<18} {a:>13} {b:>8} {c:>12} {d:>8}   (best of ALS, EASE, most popular)")
        if hearth.get("users") != n_test:
            print(f"warning: hearth evaluated {hearth.get('users')} users, this script {n_test}")
    pm = cols(mp_ours)
    print(f"(most popular by this script: {pm[0]:.4f} {pm[1]:.4f} {pm[2]:.4f} {pm[3]:.4f}, a check on the protocol; "
          f"implicit {implicit.__version__}, numpy {np.__version__})")
    print(flush=True)


def main():
    global THREADS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="one JSON object per dataset")
    p.add_argument("--only", action="append", metavar="NAME", help="a built-in dataset (repeatable)")
    p.add_argument("--name", help="a custom dataset's name (instead of the built-ins)")
    p.add_argument("--data", help="custom dataset: MovieLens-100K directory or interactions CSV")
    p.add_argument("--items", help="custom dataset: items CSV")
    p.add_argument("--model", help="custom dataset: hearth model directory (trained if no manifest.json)")
    p.add_argument("--split", help="split directory (default: <target>/quality/NAME/split)")
    p.add_argument("--no-hearth", action="store_true", help="peers only, on an existing --split; no hearth binary")
    p.add_argument("--seed", type=int, default=42, help="ALS initialisation and tie-breaking")
    p.add_argument("--quick", action="store_true", help="small grids (a smoke test, not a result)")
    p.add_argument("--threads", type=int, default=THREADS,
                   help="threads for implicit and for BLAS (default: every core; 1 on a machine busy with other "
                        "work, where OpenBLAS' threads spin against it)")
    a = p.parse_args()
    THREADS = max(1, a.threads)

    builtins = builtin_datasets()
    if a.name or a.data:
        if not a.name:
            p.error("--data needs --name")
        if not a.data and not a.no_hearth:
            p.error("--name needs --data (or --split DIR --no-hearth)")
        q = os.path.join(target_dir(), "quality", a.name)
        sets = [dict(name=a.name, data=a.data, items=a.items, model=a.model or os.path.join(q, "model"),
                     split=a.split or os.path.join(q, "split"), synth=None, retrain=True)]
    else:
        names = [d["name"] for d in builtins]
        for n in a.only or []:
            if n not in names:
                p.error(f"unknown dataset {n!r}: one of {', '.join(names)}")
        sets = [d for d in builtins if not a.only or d["name"] in a.only]
        if a.split:
            if len(sets) != 1:
                p.error("--split needs exactly one dataset")
            sets[0]["split"] = a.split

    for ds in sets:
        t0 = time.perf_counter()
        hearth = None if a.no_hearth else hearth_side(ds)
        log(f"{ds['name']}: reading {ds['split']}")
        split = Split(ds["split"])
        log(f"{ds['name']}: {split.n_users} users, {split.n_items} items, {len(split.train[0])} train interactions, "
            f"{len(split.valid['users'])} validation / {len(split.test['users'])} test users")
        t = time.perf_counter()
        with threadpoolctl.threadpool_limits(THREADS, "blas"):
            mp = most_popular(split, a.seed)
            log(f"{ds['name']}: ALS (implicit {implicit.__version__}, CPU)")
            als = tune_als(split, a.seed, a.quick)
            log(f"{ds['name']}: ALS chose {als['chosen_text']} in {als['seconds']} s ({als['fits']} fits)")
            ease = tune_ease(split, a.seed, a.quick)
        if "skipped" not in ease:
            log(f"{ds['name']}: EASE chose {ease['chosen_text']} in {ease['seconds']} s")
        log(f"{ds['name']}: peers took {time.perf_counter() - t:.1f} s, all {time.perf_counter() - t0:.1f} s")
        report(ds["name"], split, hearth, mp, als, ease, a.json, ds.get("train_s"))


if __name__ == "__main__":
    main()
