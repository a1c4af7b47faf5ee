"""Secure aggregation cost: Pollen's SecAgg+ vs Flower's own SecAgg+, plain rounds as baselines.

Every protocol runs in this process over an in-memory Grid that hands each message to a real
Flower ``ClientApp`` (one ``Context`` per node, as a SuperNode keeps it), so no network or Ray
time is counted. Each client uploads the same fixed 100K-parameter update (no training): the
figures are the protocol's own cost.

- Pollen plain: 8-bit wire update (``wire.encode_update``), server decode + weighted mean.
- Pollen secure: ``client_sdk.secagg`` stages + ``strategies.secagg.SecAggSession`` (8 bits,
  weights folded in, m-bit masked upload), then the weighted mean.
- Pollen secure + DP: the same stages carrying distributed DP (``dp-mode distributed``, 16 bits
  per coordinate, clip 1, noise multiplier 1): each client clips, rotates, rounds and adds its
  discrete Gaussian share (``wire.ddp_vector.DdpVectorSpec``, the round's spec from
  ``strategies.privacy.distributed.DistributedDp``); the server unmasks, un-rotates and rescales.
- Flower plain / secure: the legacy ``DefaultWorkflow`` with a ``NumPyClient``, secure adding
  ``SecAggPlusWorkflow`` and ``secaggplus_mod`` (Flower 1.42's only SecAgg+).

Secure overhead = secure round time - plain round time of the same framework; the ratio of the
two frameworks' overheads is printed, with client and server seconds and bytes per client.

    .venv/bin/python benchmarks/secagg.py                 # N = 10, 50, 200; 100K parameters
    .venv/bin/python benchmarks/secagg.py --clients 10 --params 10000
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from functools import partial
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto

from client_sdk import secagg
from strategies.privacy.accounting import RoundPlan
from strategies.privacy.distributed import DistributedDp
from strategies.secagg import SecAggSession, SecAggSettings
from strategies.stats import RoundStats
from wire import PAYLOAD_FIELD, UPDATE_RECORD_KEY, CodecSpec, decode_update, encode_update
from wire.ddp_vector import vector_spec_from_config
from wire.secagg import mask_stream
from wire.secagg_protocol import SECAGG_RECORD_KEY
from wire.secagg_vector import SecAggVectorSpec
from wire.stages import TensorSpec

logging.disable(logging.WARNING)


class InProcessGrid:
    """Flower's Grid surface over ClientApps called in this process; times clients apart.

    Every message and reply goes through Flower's protobuf serialization, as over a real
    connection (so each node gets its own copy), and its serialized size is what is counted;
    that transport time is counted neither as client nor as server time.
    """

    def __init__(self, app, nodes: list[int]) -> None:
        self.app = app
        self.contexts = {
            n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config={})
            for n in nodes
        }
        self.client_s = self.transport_s = 0.0
        self.up = self.down = 0

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id, message_type, group_id=group_id)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            msg = self._carry(msg, "down")
            started = time.perf_counter()
            reply = self.app(msg, self.contexts[msg.metadata.dst_node_id])
            self.client_s += time.perf_counter() - started
            replies.append(self._carry(reply, "up"))
        return replies

    def _carry(self, msg: Message, direction: str) -> Message:
        started = time.perf_counter()
        proto = message_to_proto(msg)
        setattr(self, direction, getattr(self, direction) + proto.ByteSize())
        out = message_from_proto(proto)
        self.transport_s += time.perf_counter() - started
        return out

    @property
    def run(self):  # the legacy workflow logs the run; a stand-in is enough
        return type("Run", (), {"run_id": 1})()


# ----------------------------------------------------------------------------- Pollen
def pollen_app(update: np.ndarray, weights: dict[int, int]):
    from flwr.clientapp import ClientApp

    app = ClientApp()
    app.query("secagg_keys")(secagg.advertise_keys)
    app.query("secagg_shares")(secagg.share_keys)
    app.query("secagg_unmask")(secagg.unmask)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        rng = np.random.default_rng(context.node_id)
        if SECAGG_RECORD_KEY not in msg.content:  # plain: the 8-bit wire update
            payload = encode_update(
                {"w": update}, server_round=1, codec=CodecSpec(quant_bits=8), rng=rng
            )
            metrics = MetricRecord({"num-examples": weights[context.node_id]})
            content = RecordDict(
                {UPDATE_RECORD_KEY: ConfigRecord({PAYLOAD_FIELD: payload}), "metrics": metrics}
            )
            return Message(content=content, reply_to=msg)
        spec = vector_spec_from_config(msg.content[SECAGG_RECORD_KEY])
        vector, _ = spec.quantize(update, spec.weight_of(weights[context.node_id]), rng)
        return secagg.masked_reply(msg, context, vector)

    return app


def pollen_round(n: int, params: int, secure: bool, dp: bool = False) -> dict[str, float]:
    update = np.random.default_rng(0).normal(0, 0.05, params).astype(np.float32)
    nodes = list(range(1, n + 1))
    weights = {v: 50 + v % 7 for v in nodes}
    grid = InProcessGrid(pollen_app(update, weights), nodes)
    started = time.perf_counter()
    down = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(params, np.float32))})})
    if secure:
        stats = RoundStats(server_round=1)
        session = SecAggSession(SecAggSettings(), 1, grid, stats)
        if dp:  # distributed DP's round spec, as strategies.wire_adapter sets it
            plan = RoundPlan(population=n, per_round=n, rounds=1, delta=1e-5)
            privacy = DistributedDp(noise_multiplier=1.0, clip=1.0, bits=16, plan=plan)
            session.spec_for = partial(privacy.vector_spec, kept=params, server_round=1, sampled=n)
            norm = float(np.linalg.norm(update.astype(np.float64)))
            update = update * min(1.0, 1.0 / norm)  # what the mean estimates: the clipped update
        record = session.setup(nodes, np.random.default_rng(0))
        down[SECAGG_RECORD_KEY] = record
        replies = grid.send_and_receive(
            [Message(down, v, "train", group_id="1") for v in session.alive]
        )
        total = session.aggregate(replies, session.spec.vector_size(params))
        mean, _ = session.spec.weighted_mean(total)
        graph = (len(session.neighbours[1]), session.threshold)
    else:
        replies = grid.send_and_receive([Message(down, v, "train", group_id="1") for v in nodes])
        acc, weight = np.zeros(params), 0.0
        for r in replies:
            w = float(r.content["metrics"]["num-examples"])
            payload = r.content[UPDATE_RECORD_KEY][PAYLOAD_FIELD]
            acc += w * decode_update(payload, expected=[TensorSpec("w", (params,))]).as_dict()["w"]
            weight += w
        mean, graph = acc / weight, (0, 0)
    wall = time.perf_counter() - started
    err = float(np.abs(mean - update).max())
    return _row(wall, grid, n, err, graph)


def _row(wall: float, grid: InProcessGrid, n: int, err: float, graph=(0, 0)) -> dict:
    wall -= grid.transport_s
    return {
        "round_s": wall,
        "client_s_per_client": grid.client_s / n,
        "server_s": wall - grid.client_s,
        "up_bytes_per_client": grid.up / n,
        "down_bytes_per_client": grid.down / n,
        "max_abs_error": err,
        "degree": graph[0],
        "threshold": graph[1],
    }


# ----------------------------------------------------------------------------- Flower
def flower_round(n: int, params: int, secure: bool, degree: int, threshold: int) -> dict:
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.server.workflow.default_workflows import default_fit_workflow

    update = np.random.default_rng(0).normal(0, 0.05, params).astype(np.float32)

    class FixedUpdate(NumPyClient):
        def __init__(self, node: int) -> None:
            self.node = node

        def fit(self, parameters, config):
            return [parameters[0] + update], 50 + self.node % 7, {}

    nodes = list(range(1, n + 1))
    app = ClientApp(
        client_fn=lambda context: FixedUpdate(context.node_id).to_client(),
        mods=[secaggplus_mod] if secure else [],
    )
    grid = InProcessGrid(app, nodes)
    got = {}

    def evaluate(server_round, parameters, config):
        got["mean"] = parameters[0]
        return None

    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=n,
        min_available_clients=n,
        initial_parameters=ndarrays_to_parameters([np.zeros(params, np.float32)]),
        evaluate_fn=evaluate,
    )
    base = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    context = LegacyContext(context=base, config=ServerConfig(num_rounds=1), strategy=strategy)
    fit = (
        SecAggPlusWorkflow(num_shares=degree + 1, reconstruction_threshold=threshold)
        if secure
        else default_fit_workflow
    )
    timed = {}

    def timed_fit(grid_, context_):  # only the fit round: not node registration nor init
        grid.client_s, grid.transport_s, grid.up, grid.down = 0.0, 0.0, 0, 0
        started = time.perf_counter()
        fit(grid_, context_)
        timed["wall"] = time.perf_counter() - started

    DefaultWorkflow(fit_workflow=timed_fit)(grid, context)
    wall = timed["wall"]
    err = float(np.abs(got["mean"] - update).max()) if "mean" in got else float("nan")
    return _row(wall, grid, n, err, (degree, threshold))


# ----------------------------------------------------------------------------- figures
def mask_speed(params: int, total_mb: int = 512) -> float:
    """GB/s of mask words, generated as a client does: one ``params``-word mask per seed."""
    rounds = max(1, total_mb * (1 << 20) // (4 * params))
    started = time.perf_counter()
    for i in range(rounds):
        mask_stream(i.to_bytes(32, "little"), params)
    return rounds * 4 * params / 1e9 / (time.perf_counter() - started)


def main() -> None:
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    # what Flower's runtime sets before a ServerApp runs: messages read their source from it
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    print(f"{args.params:,} parameters; times in seconds per round, bytes per client")
    head = f"{'N':>4} {'row':16}{'round s':>9}{'client s':>10}{'server s':>10}{'up B':>10}"
    print(head + f"{'down B':>10}{'max err':>10}")
    for n in args.clients:
        plain = pollen_round(n, args.params, secure=False)
        secure = pollen_round(n, args.params, secure=True)
        secure_dp = pollen_round(n, args.params, secure=True, dp=True)
        degree, threshold = secure["degree"], secure["threshold"]
        f_plain = flower_round(n, args.params, False, degree, threshold)
        f_secure = flower_round(n, args.params, True, degree, threshold)
        for name, row in (
            ("Pollen plain", plain),
            ("Pollen SecAgg+", secure),
            ("Pollen SecAgg+DP", secure_dp),
            ("Flower plain", f_plain),
            ("Flower SecAgg+", f_secure),
        ):
            print(
                f"{n:>4} {name:16}{row['round_s']:>9.3f}{row['client_s_per_client']:>10.4f}"
                f"{row['server_s']:>10.3f}{row['up_bytes_per_client']:>10.0f}"
                f"{row['down_bytes_per_client']:>10.0f}{row['max_abs_error']:>10.2e}"
            )
        ours = secure["round_s"] - plain["round_s"]
        ours_dp = secure_dp["round_s"] - plain["round_s"]
        theirs = f_secure["round_s"] - f_plain["round_s"]
        print(
            f"{n:>4} secure overhead: Pollen {ours:.3f} s, Flower {theirs:.3f} s -> "
            f"{theirs / ours:.1f}x lower (degree {degree}, threshold {threshold})"
        )
        print(
            f"{n:>4} secure + distributed DP overhead: Pollen {ours_dp:.3f} s, Flower SecAgg+ "
            f"(no DP) {theirs:.3f} s -> {theirs / ours_dp:.1f}x lower"
        )
        rows.append(
            {
                "clients": n,
                "pollen_plain": plain,
                "pollen_secure": secure,
                "pollen_secure_dp": secure_dp,
                "flower_plain": f_plain,
                "flower_secure": f_secure,
                "overhead_ratio": theirs / ours,
                "dp_overhead_ratio": theirs / ours_dp,
            }
        )
    speed = mask_speed(args.params)
    print(f"mask generation (ChaCha20, one core): {speed:.2f} GB/s")
    unmask = unmask_estimate(args.params)
    print(
        f"server unmasking, 1000 clients x {args.params:,} parameters (no dropouts): "
        f"{unmask:.2f} s (measured on 1000 clients' seeds and sums)"
    )
    if args.json:
        args.json.write_text(
            json.dumps({"rows": rows, "mask_gb_s": speed, "unmask_1000_s": unmask}, indent=2)
        )


def unmask_estimate(params: int, clients: int = 1000) -> float:
    """Time the server's part that grows with N: add N masked vectors, remove N self masks.

    Shamir reconstruction of each seed is timed on real shares of one seed and counted N times.
    """
    from wire.secagg import combine_shares, split_secret

    spec = SecAggVectorSpec(bits=8, max_weight=256, clients=clients)
    rng = np.random.default_rng(0)
    payload = spec.pack(rng.integers(0, 2**spec.modulus_bits, params + 1, dtype=np.uint32))
    seeds = [rng.bytes(32) for _ in range(clients)]
    shares = dict(enumerate(split_secret(seeds[0], 11, 20)))
    started = time.perf_counter()
    for _ in range(20):
        combine_shares(shares, 11)
    combine_s = (time.perf_counter() - started) / 20
    total = np.zeros(params + 1, dtype=np.uint32)
    started = time.perf_counter()
    for seed in seeds:
        total += spec.unpack(payload, params + 1)
        total -= mask_stream(seed, params + 1)
    return time.perf_counter() - started + clients * combine_s


if __name__ == "__main__":
    main()
