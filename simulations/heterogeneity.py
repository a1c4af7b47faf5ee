"""System heterogeneity for simulations: device tiers, availability, and a round deadline.

FedScale-style (Lai et al., "FedScale: Benchmarking Model and System Performance of Federated
Learning at Scale", ICML 2022): every client belongs to a device tier with a compute speed
(seconds per local minibatch step) and uplink/downlink bandwidth; a virtual clock turns a
round's bytes and steps into simulated seconds; a client is online in a round with probability
``availability``; the server waits until the deadline and drops the stragglers. Tiers and
availability are drawn from (seed, partition id[, round]), so both engines and a resumed run see
the same devices. Pooled uploads (:mod:`wire.pooling`) are switched off for the rounds it
wraps when a reply can be dropped after it is computed (a deadline): a dropped member's update
would otherwise stay inside its pool's mean.

:class:`HeterogeneousGrid` wraps any Grid (Flower's simulation grid or the batched engine), so
the effect is the same in both engines: an offline client is never sent its train message (it
does no work and its state, an error-feedback residual say, stays as it was), a reply that
misses the deadline never reaches the strategy (the adapter counts both as dropped), and each
round's simulated time is reported into ``metrics.jsonl``. Which partition a node holds is asked
once per node (a QUERY message, as the seeded sampler asks; both learn from the same replies).
Stragglers do compute their updates: only the server's view follows the virtual clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from strategies.sampling import UNKNOWN_PARTITION, query_partitions, reported_partition
from wire import POOLING_CONFIG_KEY, keys
from wire.secagg_protocol import SECAGG_RECORD_KEY


class HeterogeneityError(ValueError):
    """A tier file or a heterogeneity setting is not usable; the message says what to fix and
    ``key`` names the setting (``device-tiers``, ``availability`` or ``deadline``)."""

    def __init__(self, why: str, key: str = "device-tiers") -> None:
        super().__init__(why)
        self.key = key


@dataclass(frozen=True)
class DeviceTier:
    name: str
    share: float  # fraction of clients in this tier
    step_s: float  # seconds per local minibatch step
    uplink_mbps: float
    downlink_mbps: float

    def __post_init__(self) -> None:
        if not (
            self.share > 0 and self.step_s >= 0 and self.uplink_mbps > 0 and self.downlink_mbps > 0
        ):
            raise HeterogeneityError(
                f"tier {self.name!r}: share, uplink_mbps and downlink_mbps must be > 0 and "
                f"step_s >= 0, got {self}"
            )

    def seconds(self, download_bytes: int, steps: int, upload_bytes: int) -> float:
        """Virtual time of one round on this device: download, train, upload."""
        return (
            8 * download_bytes / (self.downlink_mbps * 1e6)
            + steps * self.step_s
            + 8 * upload_bytes / (self.uplink_mbps * 1e6)
        )


# Three illustrative phone classes (the spread, not the absolute figures, is what matters):
# a flagship on Wi-Fi, a mid-range phone on LTE, a low-end phone on a slow link.
DEFAULT_TIERS = (
    DeviceTier("high", share=0.3, step_s=0.01, uplink_mbps=20.0, downlink_mbps=100.0),
    DeviceTier("mid", share=0.5, step_s=0.04, uplink_mbps=5.0, downlink_mbps=20.0),
    DeviceTier("low", share=0.2, step_s=0.15, uplink_mbps=1.0, downlink_mbps=5.0),
)


def load_tiers(spec: str) -> tuple[DeviceTier, ...]:
    """``default``, or a JSON file: a list of {name, share, step_s, uplink_mbps, downlink_mbps}."""
    if spec == "default":
        return DEFAULT_TIERS
    path = Path(spec)
    try:
        rows = json.loads(path.read_text())
        tiers = tuple(DeviceTier(**row) for row in rows)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as err:
        raise HeterogeneityError(
            f"device tiers {spec!r}: expected 'default' or a JSON list of objects with name, "
            f"share, step_s, uplink_mbps, downlink_mbps ({err})"
        ) from None
    if not tiers:
        raise HeterogeneityError(f"device tiers {spec!r}: the list is empty")
    return tiers


@dataclass(frozen=True, kw_only=True)
class Heterogeneity:
    tiers: Sequence[DeviceTier] = DEFAULT_TIERS
    availability: float = 1.0  # probability a client is online in a round
    deadline_s: float = 0.0  # simulated seconds the server waits per round; 0 = no deadline
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.availability <= 1:
            raise HeterogeneityError(
                f"availability must be in (0, 1], got {self.availability}", "availability"
            )
        if self.deadline_s < 0:
            raise HeterogeneityError(
                f"deadline must be >= 0 seconds, got {self.deadline_s}", "deadline"
            )

    def tier_of(self, partition_id: int) -> DeviceTier:
        shares = np.array([t.share for t in self.tiers], dtype=np.float64)
        pick = np.random.default_rng([self.seed, 0x7169, partition_id]).choice(
            len(self.tiers), p=shares / shares.sum()
        )
        return self.tiers[int(pick)]

    def online(self, partition_id: int, server_round: int) -> bool:
        if self.availability >= 1:
            return True
        draw = np.random.default_rng([self.seed, 0xA7A1, server_round, partition_id]).random()
        return bool(draw < self.availability)


def message_bytes(content: RecordDict) -> int:
    """Bytes a message carries: array data plus bytes values in config records."""
    total = 0
    for record in content.values():
        if isinstance(record, ArrayRecord):
            total += sum(len(array.data) for array in record.values())
        elif isinstance(record, ConfigRecord):
            total += sum(len(v) for v in record.values() if isinstance(v, bytes))
    return total


@dataclass
class RoundClock:
    """What the virtual clock saw in one train round."""

    simulated_round_s: float = 0.0
    offline: int = 0
    stragglers: int = 0
    tiers: dict[str, int] = field(default_factory=dict)


class HeterogeneousGrid:
    """A Grid view that applies :class:`Heterogeneity` to train replies; the rest passes through."""

    def __init__(self, grid: Grid, model: Heterogeneity, *, query_timeout_s: float = 120.0) -> None:
        self._grid = grid
        self.model = model
        self.elapsed_s = 0.0
        self.query_timeout_s = query_timeout_s
        self._last: RoundClock | None = None
        self._partitions: dict[int, int] = {}  # node id -> partition id, as the nodes report

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        train = [m for m in messages if m.metadata.message_type == MessageType.TRAIN]
        clock, unknown = RoundClock(), False
        # masked (secure) replies carry no partition-id: the nodes' QUERY answers tell it
        if train and (self.model.availability < 1 or SECAGG_RECORD_KEY in train[0].content):
            self._ask_partitions([m.metadata.dst_node_id for m in train])
            offline = {id(m) for m in train if not self._online(m)}
            clock.offline = len(offline)
            messages = [m for m in messages if id(m) not in offline]
            train = [m for m in train if id(m) not in offline]
            unknown = any(self._partition(m) == UNKNOWN_PARTITION for m in train)
        if self.model.deadline_s or unknown:  # replies that may still be dropped
            self._unpool(train)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout)) if messages else []
        self._learn(replies)
        if not train and not clock.offline:
            return replies
        sent = {m.metadata.message_id: m for m in train}
        kept = []
        for reply in replies:
            request = sent.get(reply.metadata.reply_to_message_id)
            if request is None or reply.has_error():
                kept.append(reply)
                continue
            seconds = self._client_seconds(request, reply, clock)
            if seconds is None:
                clock.offline += 1
            elif self.model.deadline_s and seconds > self.model.deadline_s:
                clock.stragglers += 1
            else:
                clock.simulated_round_s = max(clock.simulated_round_s, seconds)
                kept.append(reply)
        if clock.stragglers and self.model.deadline_s:
            clock.simulated_round_s = self.model.deadline_s  # the server waited it out
        self.elapsed_s += clock.simulated_round_s
        self._last = clock
        return kept

    @staticmethod
    def _unpool(train: list[Message]) -> None:
        """A pooled upload would hide which members missed the deadline: each replies alone."""
        for content in {id(m.content): m.content for m in train}.values():
            config = content.get("config")
            if isinstance(config, ConfigRecord) and POOLING_CONFIG_KEY in config:
                del config[POOLING_CONFIG_KEY]

    def _ask_partitions(self, nodes: list[int]) -> None:
        """Learn the partition ids of nodes not seen yet, in one round of QUERY messages."""
        unknown = [nid for nid in nodes if nid not in self._partitions]
        if unknown:
            self._partitions.update(query_partitions(self._grid, unknown, self.query_timeout_s))

    def _partition(self, request: Message) -> int:
        return self._partitions.get(request.metadata.dst_node_id, UNKNOWN_PARTITION)

    def _online(self, request: Message) -> bool:
        """False when the node's partition is offline this round; True when it is not known
        (then its reply's partition-id decides, :meth:`_client_seconds`)."""
        pid = self._partition(request)
        if pid == UNKNOWN_PARTITION:
            return True
        config = request.content.get("config")
        is_record = isinstance(config, ConfigRecord)
        server_round = int(config.get(keys.SERVER_ROUND, 0)) if is_record else 0
        return self.model.online(pid, server_round)

    def _learn(self, replies: list[Message]) -> None:
        """Partition ids the nodes reported, in query replies (the sampler's too)."""
        for reply in replies:
            if reply.metadata.message_type == MessageType.QUERY:
                pid = reported_partition(reply)
                if pid != UNKNOWN_PARTITION:
                    self._partitions[reply.metadata.src_node_id] = pid

    def _client_seconds(self, request: Message, reply: Message, clock: RoundClock) -> float | None:
        """Simulated seconds of this client's round, or None when it is offline."""
        metrics = next((v for v in reply.content.values() if isinstance(v, MetricRecord)), None)
        metrics = metrics or MetricRecord()
        pid = int(metrics.get("partition-id", self._partition(request)))
        config = request.content.get("config")
        is_record = isinstance(config, ConfigRecord)
        server_round = int(config.get(keys.SERVER_ROUND, 0)) if is_record else 0
        if not self.model.online(pid, server_round):
            return None
        tier = self.model.tier_of(pid)
        clock.tiers[tier.name] = clock.tiers.get(tier.name, 0) + 1
        return tier.seconds(
            message_bytes(request.content),
            int(metrics.get("train-steps", 0)),
            int(metrics.get("upload-bytes", message_bytes(reply.content))),
        )

    def round_metrics(self) -> dict[str, Any]:
        """The last train round's virtual-clock figures (empty before the first), then reset."""
        if self._last is None:
            return {}
        last, self._last = self._last, None
        return {
            "simulated_round_s": last.simulated_round_s,
            "simulated_time_s": self.elapsed_s,
            "offline_clients": last.offline,
            "straggler_clients": last.stragglers,
            **{f"tier_{name}_clients": n for name, n in sorted(last.tiers.items())},
        }
