"""The server's side of secure aggregation (SecAgg+, Bell et al. CCS 2020) on the Message API.

:class:`SecAggSession` runs one round's protocol through Flower's ``Grid``: it collects public
keys, assigns each client its neighbours on a random k-regular graph (a Harary graph over a
random order of the nodes, as in Bell et al. §3), relays sealed shares, and after the masked
train replies asks the survivors for the shares that cancel the masks: the self-mask seed of a
client that uploaded, the mask key of one that dropped after sharing. The server only ever
adds masked vectors and removes masks from the running total, so no unmasked individual
update exists on this side. Every reply is checked for its round, stage and nonce (replays),
that its claimed node id is the sender Flower authenticated, and its lengths; a failing reply
is logged and counted, and the round goes on while enough honest clients remain.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from strategies.stats import Rejection, RoundStats
from wire import PAYLOAD_FIELD, UPDATE_RECORD_KEY, RejectReason, UpdateRejected
from wire.secagg import KEY_BYTES, SHARE_BYTES, agree_each, combine_shares, mask_stream
from wire.secagg_protocol import (
    MASK_PURPOSE,
    SEALED_SHARE_BYTES,
    SECAGG_RECORD_KEY,
    STAGE_KEYS,
    STAGE_MASKED,
    STAGE_SHARES,
    STAGE_UNMASK,
    chunks,
    ids_bytes,
    node_ids,
)
from wire.secagg_vector import SecAggVectorSpec

log = logging.getLogger(__name__)


class SecAggFailed(RuntimeError):
    """The round's secure aggregation cannot finish (too few clients or shares)."""


@dataclass(frozen=True)
class SecAggSettings:
    """``degree`` 0: every other client up to 24, else 3 log2(N) neighbours (O(log N) as in
    Bell et al.; small federations get a complete graph, which survives 30% dropouts);
    ``threshold`` 0: half the degree + 1."""

    degree: int = 0
    threshold: int = 0
    bits: int = 8
    clip: float = 1.0
    max_weight: int = 256
    timeout: float = 600.0

    def graph(self, clients: int) -> tuple[int, int]:
        """(degree, threshold) for ``clients`` nodes; a threshold must exceed half the degree.

        An automatic degree is kept between an explicit threshold t and 2t - 1, so the pair
        stays valid; raises ValueError when no valid pair exists for ``clients``.
        """
        most = clients - 1
        degree = self.degree
        if not degree:
            degree = max(24, 3 * math.ceil(math.log2(max(clients, 2))))
            if self.threshold:
                degree = min(max(degree, self.threshold), 2 * self.threshold - 1)
        degree = min(degree, most)
        threshold = self.threshold or degree // 2 + 1
        if not degree // 2 < threshold <= degree:
            raise ValueError(
                f"secure-aggregation threshold {threshold} must be above half the degree "
                f"({degree}) and at most the degree (with {clients} clients)"
            )
        return degree, threshold


def harary_neighbours(nodes: list[int], degree: int, rng: np.random.Generator) -> dict[int, list]:
    """Each node's neighbours on a Harary graph H(degree, n) over a random order of ``nodes``.

    An odd degree adds the diametric neighbour on an even ring (Harary 1962); with
    ``degree >= n - 1`` the graph is complete.
    """
    n = len(nodes)
    order = [nodes[i] for i in rng.permutation(n)]
    links: dict[int, set[int]] = {v: set() for v in nodes}
    if degree >= n - 1:
        return {v: sorted(set(nodes) - {v}) for v in nodes}
    for pos, v in enumerate(order):
        for step in range(1, degree // 2 + 1):
            u = order[(pos + step) % n]
            links[v].add(u)
            links[u].add(v)
        if degree % 2:
            u = order[(pos + n // 2) % n]
            links[v].add(u)
            links[u].add(v)
    return {v: sorted(s) for v, s in links.items()}


@dataclass
class SecAggSession:
    """One round of the protocol. ``setup`` before training, ``aggregate`` after it."""

    settings: SecAggSettings
    server_round: int
    grid: Grid
    stats: RoundStats
    nonce: bytes = field(default_factory=lambda: os.urandom(16))
    threshold: int = 0
    neighbours: dict[int, list[int]] = field(default_factory=dict)
    pk_s: dict[int, bytes] = field(default_factory=dict)
    alive: list[int] = field(default_factory=list)
    sealed: dict[int, dict[int, bytes]] = field(default_factory=dict)  # dst -> src -> box
    spec: SecAggVectorSpec | None = None

    # ----------------------------------------------------------------- messages
    def _record(self, **fields: object) -> ConfigRecord:
        return ConfigRecord({"round": self.server_round, "nonce": self.nonce, **fields})

    def _ask(self, stage: str, records: dict[int, ConfigRecord]) -> dict[int, ConfigRecord]:
        """Send each node its record; return the valid replies' records by sender."""
        messages = [
            Message(
                content=RecordDict({SECAGG_RECORD_KEY: record}),
                dst_node_id=node,
                message_type=stage,
                group_id=str(self.server_round),
            )
            for node, record in records.items()
        ]
        valid: dict[int, ConfigRecord] = {}
        for reply in self.grid.send_and_receive(messages, timeout=self.settings.timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                self.stats.failures.append(Rejection(node, "client-error", reply.error.reason))
                log.warning("secure aggregation %s: node %d failed: %s", stage, node, reply.error)
                continue
            try:
                valid[node] = self.check(reply, stage)
            except UpdateRejected as err:
                self.reject(node, err, stage)
        return valid

    def check(self, reply: Message, stage: str) -> ConfigRecord:
        """The reply's record if it answers this session's ``stage`` from its true sender."""
        record = reply.content.get(SECAGG_RECORD_KEY)
        if not isinstance(record, ConfigRecord):
            raise UpdateRejected(RejectReason.MISSING_PAYLOAD, f"no {SECAGG_RECORD_KEY!r} record")
        if record.get("node-id") != str(reply.metadata.src_node_id):
            raise UpdateRejected(
                RejectReason.IDENTITY_MISMATCH,
                f"claims to be node {record.get('node-id')} but comes from node "
                f"{reply.metadata.src_node_id}",
            )
        if (
            record.get("stage") != stage
            or record.get("round") != self.server_round
            or record.get("nonce") != self.nonce
        ):
            raise UpdateRejected(
                RejectReason.REPLAYED,
                f"answers stage {record.get('stage')!r} of round {record.get('round')}, "
                f"not stage {stage!r} of this round's session {self.server_round}",
            )
        return record

    def reject(self, node: int, err: UpdateRejected, stage: str) -> None:
        self.stats.rejected.append(Rejection(node, err.reason.value, f"{stage}: {err.detail}"))
        log.warning("secure aggregation %s: rejected node %d: %s", stage, node, err)

    # ----------------------------------------------------------------- stages 1-2
    def setup(self, nodes: Iterable[int], rng: np.random.Generator) -> ConfigRecord:
        """Keys and shares; the record for the train messages (raises SecAggFailed)."""
        nodes = sorted(nodes)
        keys = self._ask(STAGE_KEYS, {v: self._record() for v in nodes})
        pk_c: dict[int, bytes] = {}
        for node, record in keys.items():
            c, s = record.get("pk-c"), record.get("pk-s")
            if not (isinstance(c, bytes) and isinstance(s, bytes)) or {len(c), len(s)} != {
                KEY_BYTES
            }:
                self.reject(
                    node,
                    UpdateRejected(RejectReason.LENGTH_MISMATCH, "public keys must be 32 bytes"),
                    STAGE_KEYS,
                )
                continue
            pk_c[node], self.pk_s[node] = c, s
        ready = sorted(pk_c)
        if len(ready) < 2:
            raise SecAggFailed(f"{len(ready)} clients advertised keys; at least 2 are needed")
        try:
            degree, self.threshold = self.settings.graph(len(ready))
        except ValueError as err:
            raise SecAggFailed(str(err)) from None
        self.neighbours = harary_neighbours(ready, degree, rng)
        requests = {
            v: self._record(
                threshold=self.threshold,
                neighbours=ids_bytes(self.neighbours[v]),
                **{
                    "pk-c": b"".join(pk_c[u] for u in self.neighbours[v]),
                    "pk-s": b"".join(self.pk_s[u] for u in self.neighbours[v]),
                },
            )
            for v in ready
        }
        shares = self._ask(STAGE_SHARES, requests)
        for node, record in shares.items():
            try:
                to = node_ids(bytes(record["to"]))
                if to != self.neighbours[node]:
                    raise UpdateRejected(RejectReason.BAD_SECAGG, "shares for other nodes")
                boxes = chunks(bytes(record["sealed"]), SEALED_SHARE_BYTES, len(to), "sealed")
            except (UpdateRejected, KeyError) as err:
                if isinstance(err, KeyError):
                    err = UpdateRejected(RejectReason.BAD_SECAGG, f"missing field {err}")
                self.reject(node, err, STAGE_SHARES)
                continue
            for dst, box in zip(to, boxes, strict=True):
                self.sealed.setdefault(dst, {})[node] = box
        self.alive = sorted(shares)
        if len(self.alive) < self.threshold:
            raise SecAggFailed(
                f"{len(self.alive)} clients shared keys, below the threshold {self.threshold}"
            )
        self.spec = SecAggVectorSpec(
            bits=self.settings.bits,
            clip=self.settings.clip,
            max_weight=self.settings.max_weight,
            clients=len(self.alive),
        )
        return self._record(alive=ids_bytes(self.alive), **self.spec.as_config())

    # ----------------------------------------------------------------- stages 3-4
    def aggregate(self, replies: Iterable[Message], count: int) -> np.ndarray:
        """Sum the masked uploads and unmask the total: the plain sum of the clients' vectors."""
        assert self.spec is not None, "setup() first"
        total = np.zeros(count, dtype=np.uint32)
        survivors: list[int] = []
        seen: set[int] = set()  # survivors, for O(1) repeat checks
        alive = set(self.alive)
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                self.stats.failures.append(Rejection(node, "client-error", reply.error.reason))
                continue
            try:
                self.check(reply, STAGE_MASKED)
                if node not in alive or node in seen:
                    raise UpdateRejected(RejectReason.BAD_SECAGG, "not in this round's alive set")
                payload = reply.content[UPDATE_RECORD_KEY][PAYLOAD_FIELD]
                self.stats.upload_bytes.append(len(payload))
                total += self.spec.unpack(payload, count)  # masked: wrap-around is the point
            except (UpdateRejected, KeyError, TypeError) as err:
                if not isinstance(err, UpdateRejected):
                    err = UpdateRejected(RejectReason.MISSING_PAYLOAD, f"malformed reply: {err}")
                self.reject(node, err, STAGE_MASKED)
                continue
            survivors.append(node)
            seen.add(node)
        if len(survivors) < self.threshold:
            raise SecAggFailed(
                f"{len(survivors)} masked uploads, below the threshold {self.threshold}"
            )
        dropped = sorted(alive - set(survivors))
        self._unmask(total, sorted(survivors), dropped)
        total &= np.uint32(self.spec.modulus_mask)
        self.stats.accepted = len(survivors)
        return total

    def _unmask(self, total: np.ndarray, survivors: list[int], dropped: list[int]) -> None:
        requests = {}
        survivor_ids, dropped_ids = ids_bytes(survivors), ids_bytes(dropped)  # once, not per node
        for v in survivors:
            senders = sorted(self.sealed.get(v, {}))
            requests[v] = self._record(
                survivors=survivor_ids,
                dropped=dropped_ids,
                sealed=b"".join(self.sealed[v][u] for u in senders),
                **{"from": ids_bytes(senders)},
            )
        answers = self._ask(STAGE_UNMASK, requests)
        seed_shares: dict[int, dict[int, bytes]] = {}
        key_shares: dict[int, dict[int, bytes]] = {}
        for holder, record in answers.items():
            try:
                for field_ids, field_shares, into in (
                    ("seed-of", "seed-shares", seed_shares),
                    ("key-of", "key-shares", key_shares),
                ):
                    owners = node_ids(bytes(record[field_ids]))
                    shares = chunks(
                        bytes(record[field_shares]), SHARE_BYTES, len(owners), field_ids
                    )
                    for owner, share in zip(owners, shares, strict=True):
                        if holder not in self.neighbours.get(owner, ()):
                            raise UpdateRejected(RejectReason.BAD_SECAGG, "not a neighbour's share")
                        into.setdefault(owner, {})[self.neighbours[owner].index(holder)] = share
                for src in node_ids(bytes(record.get("refused", b""))):
                    self.stats.rejected.append(
                        Rejection(src, RejectReason.SHARE_TAMPERED.value, f"refused by {holder}")
                    )
            except (UpdateRejected, KeyError) as err:
                if isinstance(err, KeyError):
                    err = UpdateRejected(RejectReason.BAD_SECAGG, f"missing field {err}")
                self.reject(holder, err, STAGE_UNMASK)
        for owner in survivors:
            seed = self._reconstruct(seed_shares, owner, "self-mask seed")
            total -= mask_stream(seed, total.size)
        alive_after = set(survivors)  # membership per dropped node's neighbour: O(1)
        for owner in dropped:
            secret = self._reconstruct(key_shares, owner, "mask key")
            peers = [peer for peer in self.neighbours[owner] if peer in alive_after]
            seeds = agree_each(secret, [self.pk_s[peer] for peer in peers], MASK_PURPOSE)
            for peer, seed in zip(peers, seeds, strict=True):
                stream = mask_stream(seed, total.size)
                if peer < owner:  # the survivor added +stream for this pair; take it out
                    total -= stream
                else:
                    total += stream

    def _reconstruct(self, shares: dict[int, dict[int, bytes]], owner: int, what: str) -> bytes:
        held = shares.get(owner, {})
        if len(held) < self.threshold:
            raise SecAggFailed(
                f"the {what} of node {owner} has {len(held)} shares, below the threshold "
                f"{self.threshold}"
            )
        return combine_shares(held, self.threshold)


def secure_mean_reply(
    replies: list[Message], model: dict[str, np.ndarray], weight_key: str, weight: float
) -> Message:
    """The first surviving masked reply, now holding the unmasked weighted mean ``model`` of
    total ``weight``, with the survivors' mean train loss: the one reply a mean strategy needs."""
    survivors = [m for m in replies if not m.has_error() and SECAGG_RECORD_KEY in m.content]
    losses = [
        float(m.content["metrics"]["train-loss"])
        for m in survivors
        if "metrics" in m.content and "train-loss" in m.content["metrics"]
    ]
    metrics = MetricRecord({weight_key: weight})
    if losses:
        metrics["train-loss"] = float(np.mean(losses))
    carrier = survivors[0]
    carrier.content = RecordDict(
        {"arrays": ArrayRecord({k: Array(v) for k, v in model.items()}), "metrics": metrics}
    )
    return carrier
