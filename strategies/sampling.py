"""Reproducible client sampling for Flower grids.

Flower's strategies sample with the module-level ``random`` and simulation node ids are random
per run, so the same seed would train different clients. Here nodes are ordered by the
partition id they report (a QUERY message, asked once per new node and only when sampling a
fraction) and drawn with a ``numpy.random.Generator`` seeded by (seed, round, purpose).
:class:`SeededSampler` draws a fixed number of them; :class:`PoissonSampler` trains each
independently with a fixed probability (for differential privacy's Poisson accounting).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from strategies.validation import UNKNOWN_PARTITION, partition_of

log = logging.getLogger(__name__)


class FixedNodesGrid:
    """A view of a Grid that shows only ``node_ids``, so a wrapped strategy samples all of them."""

    def __init__(self, grid: Grid, node_ids: Iterable[int]) -> None:
        self._grid = grid
        self._node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self._node_ids)

    def __getattr__(self, name: str):  # everything else goes to the real grid
        return getattr(self._grid, name)


@dataclass
class SeededSampler:
    """Draw ``max(int(N * fraction), min_nodes)`` of the N connected nodes, reproducibly."""

    seed: int
    min_available: int = 1
    wait_timeout_s: float = 600.0
    query_timeout_s: float = 120.0
    sleep: Callable[[float], None] = time.sleep
    partitions: dict[int, int] = field(default_factory=dict)

    def wait_for_nodes(self, grid: Grid) -> list[int]:
        """Block until ``min_available`` nodes are connected (as Flower does), with a deadline."""
        waited = 0.0
        while len(nodes := sorted(grid.get_node_ids())) < self.min_available:
            if waited >= self.wait_timeout_s:
                raise TimeoutError(
                    f"only {len(nodes)} of the {self.min_available} required nodes connected "
                    f"within {self.wait_timeout_s:.0f}s; start more SuperNodes or lower "
                    "min-available-nodes"
                )
            log.info("waiting for nodes: %d connected, %d required", len(nodes), self.min_available)
            self.sleep(1.0)
            waited += 1.0
        return nodes

    def sample(
        self, grid: Grid, server_round: int, fraction: float, min_nodes: int, purpose: int = 0
    ) -> list[int]:
        """Node ids for this round; all nodes (no query) when ``fraction >= 1``."""
        nodes = self.wait_for_nodes(grid)
        size = sample_size(len(nodes), fraction, min_nodes)
        if size >= len(nodes):
            return nodes
        self._learn_partitions(grid, nodes)
        ordered = sorted(nodes, key=lambda nid: (self.partitions.get(nid, UNKNOWN_PARTITION), nid))
        rng = np.random.default_rng([self.seed, server_round, purpose])
        picked = np.sort(rng.choice(len(ordered), size=size, replace=False))
        return [ordered[i] for i in picked]

    def sample_train(
        self, grid: Grid, server_round: int, fraction: float, min_nodes: int
    ) -> list[int]:
        """The nodes that train this round (``purpose`` 0; evaluation samples with 1)."""
        return self.sample(grid, server_round, fraction, min_nodes)

    def _learn_partitions(self, grid: Grid, nodes: list[int]) -> None:
        unknown = [nid for nid in nodes if nid not in self.partitions]
        if unknown:
            self.partitions.update(query_partitions(grid, unknown, self.query_timeout_s))


@dataclass
class PoissonSampler(SeededSampler):
    """Train each of the N nodes independently with probability ``q = m / N`` (``m``: what
    :class:`SeededSampler` would draw, :func:`sample_size`), so a round trains ``m`` on average
    and the accountant's rate (``RoundPlan(sampling="poisson")``) is the sampler's. Poisson
    sampling is what the subsampled Gaussian's add-or-remove-one analysis assumes (Abadi et al.
    2016; Mironov, Talwar & Zhang 2019): for the same epsilon it needs far less noise than
    fixed-size sampling's replace-one bound. A round may draw no node at all (probability
    ``(1 - q)^N``); it still releases its noise (:mod:`strategies.privacy.central`).
    Evaluation still samples a fixed number (:meth:`SeededSampler.sample`).

    ``rate``: the accountant's ``q`` (its plan's, over dp-population), which every node then
    joins with whatever number is connected; without it ``q`` comes from the connected nodes.
    Fewer nodes connected than the declared population would otherwise raise each one's chance
    above the accounted one wherever ``min_nodes`` lifts ``m``."""

    rate: float | None = None

    def __post_init__(self) -> None:
        if self.rate is not None and not (
            isinstance(self.rate, float | int)
            and not isinstance(self.rate, bool)
            and 0 < self.rate <= 1
        ):
            raise ValueError(f"Poisson sampling rate must be in (0, 1], got {self.rate!r}")

    def sample_train(
        self, grid: Grid, server_round: int, fraction: float, min_nodes: int
    ) -> list[int]:
        nodes = self.wait_for_nodes(grid)
        rate = self.rate if self.rate is not None else poisson_rate(len(nodes), fraction, min_nodes)
        if rate >= 1:
            return nodes
        self._learn_partitions(grid, nodes)
        ordered = sorted(nodes, key=lambda nid: (self.partitions.get(nid, UNKNOWN_PARTITION), nid))
        rng = np.random.default_rng([self.seed, server_round, 0, POISSON_STREAM])
        joins = rng.random(len(ordered)) < rate
        return [nid for nid, joined in zip(ordered, joins, strict=True) if joined]


POISSON_STREAM = 0x504F  # keeps Poisson draws apart from the fixed sampler's stream


def sample_size(nodes: int, fraction: float, min_nodes: int) -> int:
    """Clients a round draws (without replacement) from ``nodes``: what DP accounting assumes."""
    return min(nodes, max(int(nodes * fraction), min_nodes))


def poisson_rate(nodes: int, fraction: float, min_nodes: int) -> float:
    """The probability each of ``nodes`` trains under Poisson sampling: ``m / N``, ``m`` the
    fixed-size count (the accountant's ``RoundPlan.rate`` for the same settings)."""
    return sample_size(nodes, fraction, min_nodes) / nodes if nodes else 1.0


def query_partitions(grid: Grid, node_ids: list[int], timeout: float) -> dict[int, int]:
    """Each node's ``partition-id`` (one QUERY message each); UNKNOWN_PARTITION if it has none."""
    queries = [
        Message(
            content=RecordDict({"config": ConfigRecord({"ask": "partition-id"})}),
            message_type=MessageType.QUERY,
            dst_node_id=nid,
        )
        for nid in node_ids
    ]
    found = {}
    for reply in grid.send_and_receive(queries, timeout=timeout):
        nid = reply.metadata.src_node_id
        found[nid] = reported_partition(reply)
        if found[nid] == UNKNOWN_PARTITION:
            log.warning("node %d did not report its partition id; ordering it by node id", nid)
    return found


def reported_partition(reply: Message) -> int:
    """The ``partition-id`` a QUERY reply's ``node-info`` holds; UNKNOWN_PARTITION without one."""
    if reply.has_error():
        return UNKNOWN_PARTITION
    info = reply.content.get("node-info")
    return (
        partition_of(info.get("partition-id"))
        if isinstance(info, MetricRecord)
        else (UNKNOWN_PARTITION)
    )
