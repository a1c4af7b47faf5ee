"""An in-memory Grid whose nodes run the SDK's real secure-aggregation steps.

Each node has its own Flower ``Context`` (state kept between stages, as a SuperNode keeps it).
Query stages go to :mod:`client_sdk.secagg`; a train message masks the vector the test chose for
that node with :func:`client_sdk.secagg.mask_vector`. Hooks let a test drop nodes after key
sharing or rewrite messages and replies in flight (tampering, replays, impersonation).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client_sdk import secagg
from strategies.secagg import SecAggSession, SecAggSettings
from strategies.stats import RoundStats
from wire import UpdateRejected
from wire.secagg_protocol import SECAGG_RECORD_KEY, STAGE_KEYS, STAGE_SHARES, STAGE_UNMASK
from wire.secagg_vector import SecAggVectorSpec

HANDLERS = {
    STAGE_KEYS: secagg.advertise_keys,
    STAGE_SHARES: secagg.share_keys,
    STAGE_UNMASK: secagg.unmask,
}


class SecAggGrid:
    def __init__(self, vectors: dict[int, np.ndarray]) -> None:
        self.vectors = vectors  # node id -> the plain integer vector it will mask
        self.contexts = {
            node: Context(run_id=1, node_id=node, node_config={}, state=RecordDict(), run_config={})
            for node in vectors
        }
        self.drop_at_train: set[int] = set()  # nodes that vanish after sharing keys
        self.on_request: Callable[[Message], Message] = lambda m: m
        self.on_reply: Callable[[Message], Message] = lambda m: m
        self.replies: list[Message] = []  # every reply delivered, for replay tests
        self.client_errors: list[str] = []

    def get_node_ids(self) -> list[int]:
        return list(self.vectors)

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        out = []
        for msg in messages:
            msg = self.on_request(msg)
            node = msg.metadata.dst_node_id
            kind = msg.metadata.message_type
            if kind == "train" and node in self.drop_at_train:
                continue  # vanished: no reply before the deadline
            context = self.contexts[node]
            try:
                reply = (
                    HANDLERS[kind](msg, context) if kind in HANDLERS else self._train(msg, context)
                )
            except UpdateRejected as err:
                self.client_errors.append(f"{node}: {err}")
                continue
            reply = self.on_reply(reply)
            self.replies.append(reply)
            out.append(reply)
        return out

    def train_messages(self, record: ConfigRecord) -> list[Message]:
        content = RecordDict({SECAGG_RECORD_KEY: record})
        return [Message(content=content, dst_node_id=n, message_type="train") for n in self.vectors]

    def _train(self, msg: Message, context: Context) -> Message:
        return secagg.masked_reply(msg, context, self.vectors[context.node_id])


SIZE = 2_000


def vectors_for(n: int, spec: SecAggVectorSpec, seed: int = 0) -> dict[int, np.ndarray]:
    """Plain client vectors as the SDK builds them: w * q then w."""
    rng = np.random.default_rng(seed)
    nodes = sorted({int(v) + 2**63 for v in rng.integers(1, 2**62, size=n)})  # big Flower ids
    out = {}
    for node in nodes:
        weight = int(rng.integers(1, spec.max_weight + 1))
        flat = rng.normal(0, 0.3, size=SIZE - 1).astype(np.float32)
        out[node], _ = spec.quantize(flat, weight, rng)
    return out


def run_round(grid: SecAggGrid, settings: SecAggSettings, server_round: int = 1):
    stats = RoundStats(server_round=server_round)
    session = SecAggSession(settings, server_round, grid, stats)
    record = session.setup(grid.get_node_ids(), np.random.default_rng(server_round))
    replies = grid.send_and_receive(
        [m for m in grid.train_messages(record) if m.metadata.dst_node_id in session.alive]
    )
    return session, session.aggregate(replies, SIZE), stats


def plain_sum(vectors, nodes, spec) -> np.ndarray:
    total = np.zeros(SIZE, dtype=np.uint64)
    for node in nodes:
        total += vectors[node]
    assert total.max() <= spec.modulus_mask  # the stated bound: no wrap-around
    return total.astype(np.uint32)
