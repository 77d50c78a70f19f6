#!/usr/bin/env python3
"""Flower's SecAgg+ at hearth's scale: the peer side of hearth's secure-aggregation benchmark.

One federated round of Flower's SecAgg+ (`flwr` 1.42, simulation runtime on Ray) over N clients
(default 1,000), each contributing D float32 values drawn uniformly in [-0.03, 0.03] (default
36,146: the `tower` group's values, which hearth's `bench/secagg.sh` masks padded to 36,864
words), each client dropping with probability P (default 0.1): the peer of
`bash bench/secagg.sh --devices N` with the same dropout.

What runs:
  - ServerApp: `DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))` with FedAvg, one round,
    every client sampled (fraction_fit 1.0, min_fit/min_available = N), no evaluation round.
  - ClientApp: a NumPyClient whose `fit` returns its vector without training (weight 1), behind
    the mods [drop_mod, secaggplus_mod].
  - Dropout: each client drops with probability P at one of the SecAgg+ stages in --drop-stages
    (uniformly), both decided from (seed, partition id). Dropping = drop_mod answers that stage's
    message (its stage is the "stage" key of the "secaggplus_configs" ConfigRecord) with an error
    instead of passing it on, so the server sees the client fail there at once: in the simulation
    runtime an error reply is how a failed client shows. The default stages are
    collect_masked_vectors (keys shared, no masked input: hearth's --dropout-before) and unmask
    (masked input sent, no shares: hearth's --dropout), so P = 0.1 here is hearth's
    `--dropout 0.05 --dropout-before 0.05` in expectation; `--drop-stages unmask` is hearth's
    default. Flower 1.42 cannot finish a round where anyone drops at setup or share_keys: that
    client never dealt shares of its mask key, yet the unmask stage lists it as dead to its
    neighbours, who fail looking up its share (KeyError), and the server halts for want of
    shares ("completed": false). Pass all four stages to see it.

SecAgg+ parameters, as hearth's `Params::for_clients` picks them (1,000 clients: 30 neighbours,
16 shares to reconstruct):
  - degree k = 2 * ceil(1.5 * log2 N), at most N - 1. Flower's `num_shares` counts the client
    itself (it keeps one of its own shares and sends one to each neighbour; its neighbours are
    the num_shares // 2 clients either side of it on a shuffled ring), so num_shares = k + 1
    (31): hearth's k-regular graph plus the client. hearth's "t of k+1" Shamir threshold is
    Flower's `reconstruction_threshold` (shares that rebuild a secret): (k + 1) // 2 + 1 (16).
  - modulus_range 2**32 (hearth sums modulo 2**32); clipping_range 0.03 (the values' range, so
    nothing is clipped); quantization_range 2**22, one step 2 * 0.03 / 2**22 = 1.4e-8; max_weight
    1.0 with num_examples 1, so every client's weight quantizes to exactly 2**22. The masked sum
    of N weights and N values in [0, 2**22] must stay below 2**32: N <= 1023.
  - timeout (per stage, --timeout, default 3600 s): the server waits at most this long for one
    stage's replies. Drops answer with an error at once, so it never decides who dropped here;
    it guards against a hung round and must exceed a whole stage (in simulation every client of
    a stage runs on the same few actors: minutes at N = 1,000).

Measured: round_secs, the fit round from its start (sampling, then the four stages) to the
aggregate being available, with time.perf_counter in the ServerApp, after every node is
registered and a warm-up message has made sure Ray's actors are up; the time of each stage
(clients' work and the server's: the unmask stage's includes rebuilding secrets and removing
masks); total_secs, the whole run_simulation including Ray's start and shutdown; peak_rss_mb,
VmHWM of this process (the ServerApp and the simulation engine run here);
descendants_peak_rss_mb, the sum of the VmHWM of every process descending from this one (Ray's
GCS, raylet and workers), read at the end of the round while they are still alive (an upper
bound: pages they share, Ray's object store among them, count once per process).

Check: FedAvg receives the clients whose masked vectors were summed (a client that drops at the
unmask stage is still in the sum: its self mask is rebuilt from its neighbours' shares), each
with its partition id as a fit metric. The script regenerates those clients' vectors from the
seed and compares their plain mean with Flower's unmasked average: max_abs_error should be
below one quantization step. survivors_as_planned says the clients in the sum are exactly those
the plan did not drop before their masked input.

    python3 -m venv ~/.cache/hearth/venv-flower
    ~/.cache/hearth/venv-flower/bin/pip install -r bench/flower_requirements.txt
    ~/.cache/hearth/venv-flower/bin/python bench/flower_secagg.py [--clients N] [--dim D]
        [--dropout P] [--drop-stages S,...] [--seed S] [--timeout SECS] [--json]
"""

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field

# Offline and quiet: no telemetry or usage stats, Flower's console log (stderr) at WARNING.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("FLWR_LOG_LEVEL", "WARNING")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a FutureWarning

import numpy as np  # noqa: E402
import flwr  # noqa: E402
import ray  # noqa: E402
from flwr.app import Context, Error, Message  # noqa: E402
from flwr.app.message_type import MessageType  # noqa: E402
from flwr.client import NumPyClient  # noqa: E402
from flwr.client.mod import secaggplus_mod  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.common import (  # noqa: E402
    GetPropertiesIns,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.constant import ErrorCode, MessageTypeLegacy  # noqa: E402
from flwr.common.secure_aggregation.secaggplus_constants import (  # noqa: E402
    RECORD_KEY_CONFIGS,
    Key,
    Stage,
)
from flwr.compat.common.recorddict_compat import getpropertiesins_to_recorddict  # noqa: E402
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig  # noqa: E402
from flwr.server.strategy import FedAvg  # noqa: E402
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

VALUE_RANGE = 0.03
CLIPPING_RANGE = 0.03
QUANTIZATION_RANGE = 2**22
MODULUS_RANGE = 2**32
MAX_WEIGHT = 1.0
STAGES = Stage.all()  # setup, share_keys, collect_masked_vectors, unmask
# Stages after which the client's masked vector is not in the sum.
BEFORE_SUM = (Stage.SETUP, Stage.SHARE_KEYS, Stage.COLLECT_MASKED_VECTORS)


def hearth_neighbourhood(n: int) -> tuple[int, int]:
    """hearth's `Params::for_clients`: (neighbourhood with the client, threshold)."""
    degree = min(2 * math.ceil(1.5 * math.log2(max(n, 2))), (n - 1) + (n - 1) % 2)
    size = min(degree, n - 1) + 1
    return size, size // 2 + 1


@dataclass(frozen=True)
class Plan:
    """What each client sends and where it drops, from (seed, partition id) alone, so the
    clients (in Ray's workers) and the check (here) agree without talking."""

    seed: int
    dim: int
    dropout: float
    drop_stages: tuple[str, ...]

    def vector(self, pid: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, pid, 0])
        return rng.uniform(-VALUE_RANGE, VALUE_RANGE, self.dim).astype(np.float32)

    def drop_stage(self, pid: int) -> str | None:
        rng = np.random.default_rng([self.seed, pid, 1])
        if rng.random() >= self.dropout:
            return None
        return self.drop_stages[rng.integers(len(self.drop_stages))]


def make_client_app(plan: Plan) -> ClientApp:
    class UpdateClient(NumPyClient):
        """Returns its fixed vector as the 'trained' parameters, with weight 1."""

        def __init__(self, pid: int) -> None:
            self.pid = pid

        def fit(self, parameters, config):
            return [plan.vector(self.pid)], 1, {"partition_id": self.pid}

    def client_fn(context: Context):
        return UpdateClient(int(context.node_config["partition-id"])).to_client()

    def drop_mod(msg: Message, ctxt: Context, call_next) -> Message:
        """Fails the client at its planned SecAgg+ stage (named in the message's configs)."""
        if msg.metadata.message_type == MessageType.TRAIN:
            stage = msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE]
            if stage == plan.drop_stage(int(ctxt.node_config["partition-id"])):
                error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"dropped at {stage}")
                return Message(error, reply_to=msg)
        return call_next(msg, ctxt)

    return ClientApp(client_fn=client_fn, mods=[drop_mod, secaggplus_mod])


@dataclass
class Outcome:
    """What the ServerApp measured, read by main once run_simulation returns."""

    round_secs: float | None = None
    stage_secs: dict[str, float] = field(default_factory=dict)
    replies: dict[str, int] = field(default_factory=dict)
    halted_at: str | None = None
    in_sum: list[int] | None = None
    aggregate: np.ndarray | None = None
    descendants_peak_rss_mb: float | None = None
    descendants: int | None = None
    ray_cpus: float | None = None


class TimedSecAggPlus(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow, timing each stage and counting the clients that answered it."""

    def __init__(self, outcome: Outcome, **kwargs) -> None:
        super().__init__(**kwargs)
        self.outcome = outcome

    def _timed(self, stage: str, run, grid, context, state) -> bool:
        start = time.perf_counter()
        ok = run(grid, context, state)
        self.outcome.stage_secs[stage] = time.perf_counter() - start
        self.outcome.replies[stage] = len(state.active_node_ids)
        if not ok:
            self.outcome.halted_at = stage
        return ok

    def setup_stage(self, grid, context, state):
        return self._timed(Stage.SETUP, super().setup_stage, grid, context, state)

    def share_keys_stage(self, grid, context, state):
        return self._timed(Stage.SHARE_KEYS, super().share_keys_stage, grid, context, state)

    def collect_masked_vectors_stage(self, grid, context, state):
        return self._timed(
            Stage.COLLECT_MASKED_VECTORS, super().collect_masked_vectors_stage, grid, context, state
        )

    def unmask_stage(self, grid, context, state):
        return self._timed(Stage.UNMASK, super().unmask_stage, grid, context, state)


class RecordingFedAvg(FedAvg):
    """FedAvg that keeps what SecAgg+ hands it: who is in the sum, and the unmasked average."""

    def __init__(self, outcome: Outcome, **kwargs) -> None:
        super().__init__(**kwargs)
        self.outcome = outcome

    def aggregate_fit(self, server_round, results, failures):
        self.outcome.in_sum = sorted(int(res.metrics["partition_id"]) for _, res in results)
        parameters, metrics = super().aggregate_fit(server_round, results, failures)
        if parameters is not None:
            self.outcome.aggregate = parameters_to_ndarrays(parameters)[0]
        return parameters, metrics


def vm_hwm_kb(pid: int | str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def descendants_peak_rss(root: int) -> tuple[float, int]:
    """Sum of VmHWM (MiB) over every live process whose parent chain reaches `root`, and their count."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    # The command name (in parentheses) may hold spaces; the ppid follows the state.
                    parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    total_kb, count = 0, 0
    for pid in parent:
        up = parent.get(pid)
        while up not in (None, 0, 1, root):
            up = parent.get(up)
        if up == root and pid != root:
            try:
                total_kb += vm_hwm_kb(pid)
                count += 1
            except OSError:
                continue
    return total_kb / 1024, count


def make_server_app(args, secagg: dict, outcome: Outcome) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        # Outside the timed round: wait for the simulation engine to register every node, then
        # for Ray and its actors (one message answered).
        while len(nodes := list(grid.get_node_ids())) < args.clients:
            time.sleep(0.1)
        warmup = Message(
            getpropertiesins_to_recorddict(GetPropertiesIns({})),
            dst_node_id=nodes[0],
            message_type=MessageTypeLegacy.GET_PROPERTIES,
            group_id="warmup",
        )
        grid.send_and_receive([warmup])

        strategy = RecordingFedAvg(
            outcome,
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=args.clients,
            min_available_clients=args.clients,
            initial_parameters=ndarrays_to_parameters([np.zeros(args.dim, np.float32)]),
        )
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=1), strategy=strategy)
        secagg_workflow = TimedSecAggPlus(outcome, **secagg)

        def fit_round(grid: Grid, context: LegacyContext) -> None:
            start = time.perf_counter()
            secagg_workflow(grid, context)
            outcome.round_secs = time.perf_counter() - start

        DefaultWorkflow(fit_workflow=fit_round)(grid, legacy)
        outcome.descendants_peak_rss_mb, outcome.descendants = descendants_peak_rss(os.getpid())
        outcome.ray_cpus = ray.cluster_resources().get("CPU")

    return app


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=1000, help="N clients (3 to 1023)")
    p.add_argument("--dim", type=int, default=36146, help="D float32 values per client")
    p.add_argument("--dropout", type=float, default=0.1, help="P: each client's chance to drop")
    p.add_argument(
        "--drop-stages",
        default=f"{Stage.COLLECT_MASKED_VECTORS},{Stage.UNMASK}",
        help=f"comma-separated stages a dropping client fails at, uniformly (of {','.join(STAGES)})",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=3600.0, help="SecAgg+ per-stage timeout, seconds")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = p.parse_args()
    args.drop_stages = tuple(s for s in args.drop_stages.split(",") if s)
    if not args.drop_stages or any(s not in STAGES for s in args.drop_stages):
        p.error(f"--drop-stages: a comma-separated subset of {','.join(STAGES)}")
    if not 3 <= args.clients or args.clients * QUANTIZATION_RANGE >= MODULUS_RANGE:
        # Flower needs num_shares > 2; the masked sum of N weights of 2**22 must fit in 2**32.
        p.error("--clients must be 3 to 1023")
    if not 0.0 <= args.dropout < 1.0:
        p.error("--dropout must be in [0, 1)")
    return args


def main() -> int:
    args = parse_args()
    plan = Plan(args.seed, args.dim, args.dropout, args.drop_stages)
    num_shares, threshold = hearth_neighbourhood(args.clients)
    secagg = {
        "num_shares": num_shares,
        "reconstruction_threshold": threshold,
        "max_weight": MAX_WEIGHT,
        "clipping_range": CLIPPING_RANGE,
        "quantization_range": QUANTIZATION_RANGE,
        "modulus_range": MODULUS_RANGE,
        "timeout": args.timeout,
    }
    backend_config = {
        # One CPU per ClientApp: as many actors at once as Ray sees cores (2 here).
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "include_dashboard": False,
            "logging_level": "ERROR",
            "log_to_driver": False,
        },
    }

    # Everything but the result goes to stderr: point fd 1 there (Ray's processes inherit it).
    sys.stdout.flush()
    stdout_fd = os.dup(1)
    os.dup2(2, 1)
    outcome = Outcome()
    start = time.perf_counter()
    run_simulation(
        server_app=make_server_app(args, secagg, outcome),
        client_app=make_client_app(plan),
        num_supernodes=args.clients,
        backend_config=backend_config,
    )
    total_secs = time.perf_counter() - start
    peak_rss_mb = vm_hwm_kb("self") / 1024
    sys.stdout.flush()
    os.dup2(stdout_fd, 1)
    os.close(stdout_fd)

    drops = [plan.drop_stage(pid) for pid in range(args.clients)]
    planned_in_sum = [pid for pid, s in enumerate(drops) if s not in BEFORE_SUM]
    max_abs_error = None
    if outcome.aggregate is not None:
        expected = np.zeros(args.dim)
        for pid in outcome.in_sum:
            expected += plan.vector(pid)
        expected /= len(outcome.in_sum)
        max_abs_error = float(np.max(np.abs(outcome.aggregate - expected)))

    result = {
        "clients": args.clients,
        "dim": args.dim,
        "dropout": args.dropout,
        "drop_stages": list(args.drop_stages),
        "seed": args.seed,
        "planned_drops": {s: drops.count(s) for s in STAGES},
        "replies": outcome.replies,
        "completed": outcome.aggregate is not None,
        "halted_at": outcome.halted_at,
        "survivors": len(outcome.in_sum) if outcome.in_sum is not None else None,
        "survivors_as_planned": outcome.in_sum == planned_in_sum if outcome.in_sum is not None else None,
        "round_secs": outcome.round_secs,
        "stage_secs": outcome.stage_secs,
        "total_secs": total_secs,
        "peak_rss_mb": peak_rss_mb,
        "descendants_peak_rss_mb": outcome.descendants_peak_rss_mb,
        "descendants": outcome.descendants,
        "ray_cpus": outcome.ray_cpus,
        "max_abs_error": max_abs_error,
        "quantization_step": 2 * CLIPPING_RANGE / QUANTIZATION_RANGE,
        "flwr": flwr.__version__,
        "ray": ray.__version__,
        "secaggplus": {"neighbours": num_shares - 1, **secagg},
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"Flower {flwr.__version__} SecAgg+: {args.clients} clients x {args.dim} values, "
            f"dropout {args.dropout} at {'/'.join(args.drop_stages)}; {num_shares - 1} neighbours, "
            f"{threshold} of {num_shares} shares"
        )
        if outcome.aggregate is None:
            print(f"  round halted at {outcome.halted_at}; replies per stage {outcome.replies}")
        else:
            print(f"  survivors in the sum: {result['survivors']} (as planned: {result['survivors_as_planned']})")
            print(f"  max abs error vs plain mean: {max_abs_error:.3g} (one step {result['quantization_step']:.3g})")
        stages = ", ".join(f"{s} {t:.2f}" for s, t in outcome.stage_secs.items())
        round_secs = f"{outcome.round_secs:.2f} s" if outcome.round_secs is not None else "n/a"
        print(f"  round {round_secs} ({stages}); whole run {total_secs:.2f} s")
        descendants = outcome.descendants_peak_rss_mb or 0.0
        print(f"  peak RSS: this process {peak_rss_mb:.0f} MiB, its {outcome.descendants} descendants {descendants:.0f} MiB")
    return 0 if outcome.aggregate is not None else 1


if __name__ == "__main__":
    sys.exit(main())
