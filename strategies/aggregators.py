"""One round's train replies in, Flower's strategy input out: decode + validate, then aggregate.

1. :class:`RoundDecoder` decodes each reply into an accepted :class:`Update` (update, weight,
   metrics) or a counted rejection: its metrics first (:mod:`strategies.replies`), then its
   payload against the model clients started from this round (its tensors, pruning mask, round
   and rotation; :func:`wire.decode_update` runs the stage chain its header names), its weight
   and values (:mod:`strategies.validation`), then clipped if the run asks; a pool's carrier
   holds its members' weighted mean (:mod:`strategies.pooling`).
2. An :class:`Aggregator` receives the round's updates and hands Flower's strategy what its
   ``aggregate_train`` expects, as FRESH messages: the replies that came in are never changed.
   Three kinds:

- :class:`MeanAggregator`: the streaming weighted mean (FedAvg, McMahan et al. AISTATS 2017),
  O(model) memory however many clients reply; a pooled chunk (:mod:`strategies.pooling`) is a
  pre-summed partial added with its total weight. Flower's strategy gets one message holding
  the mean and the total weight: its weighted mean of one record is that record, and
  FedAdam/FedYogi/FedAdagrad (Reddi et al. ICLR 2021) or FedAvgM (Hsu et al. 2019) step from it.
- :class:`CollectAll`: every update, one message each, for strategies that read each one
  (Krum, Blanchard et al. 2017; FedMedian/FedTrimmedAvg, Yin et al. ICML 2018; Bulyan,
  El Mhamdi et al. ICML 2018; q-FFL, Li et al. ICLR 2020) and for any strategy class not known
  to need only the mean.
- :class:`SecureSum`: SecAgg+ (Bell et al. CCS 2020): the server learns only the sum of the
  masked uploads; the unmasked weighted mean goes to the strategy like the streaming mean's.

Which one a strategy gets is a capability of its class, decided here once
(:func:`needs_only_mean`): the run-config check, the strategy registry and the adapter read it.
A new aggregator is a class here with ``add`` and ``strategy_input``, chosen in
:func:`aggregator_for`; a new Flower strategy is one entry in ``registry.STRATEGY_CLASSES``
(added to ``MEAN_ONLY_STRATEGIES`` when its ``aggregate_train`` is a weighted mean).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
    Strategy,
)

from strategies.aggregation import StreamingMean, clip_update, common_scalars
from strategies.pooling import Pool, check_pool, group_pools
from strategies.replies import (
    LOSS,
    WEIGHT_KEY,
    checked_replies,
    reject,
    reply_payload,
    reply_weight,
    strip_adapter_metrics,
)
from strategies.secagg import SecAggFailed, SecAggSession
from strategies.secagg_metrics import masked_replies
from strategies.stats import RoundStats
from strategies.validation import ReplyLimits, as_rejection, check_update
from wire import (
    DOWNLOAD_RECORD_KEY,
    PAYLOAD_FIELD,
    CodecSpec,
    MaskSet,
    RejectReason,
    TensorSpec,
    UpdateRejected,
    decode_update,
    encode_update,
)
from wire.header_ref import RoundHeaders
from wire.rotation import block_for, padded_length, unrotate
from wire.secagg_vector import kept_count, unflatten_kept

log = logging.getLogger(__name__)

# Header and codec slack allowed above the float32 size of the model before refusing a payload.
PAYLOAD_SLACK_BYTES = 1 << 16
MAX_LOSS = 1e6  # q-FFL raises the loss to the power q: a larger one only overflows


@dataclass
class Update:
    """One accepted contribution: a client's decoded update (``replies`` holds its reply), or a
    pool's weighted mean (``replies`` holds every member, the mean a pre-summed partial);
    ``weight`` is the total weight, ``weights`` and ``metrics`` each member's checked weight and
    metrics (without the adapter's own keys)."""

    replies: list[Message]
    deltas: dict[str, np.ndarray]
    weight: float
    weights: list[float]
    metrics: list[dict]


@dataclass
class RoundDecoder:
    """This round's expectations: ``reference`` is the model clients start from (after pruning
    and the 8-bit download), ``frozen`` the name prefixes never sent."""

    reference: dict[str, np.ndarray]
    masks: MaskSet | None = None
    frozen: tuple[str, ...] = ()
    clip_norm: float = 0.0
    limits: ReplyLimits = field(default_factory=ReplyLimits)
    rotation_seed: int | None = None  # a shared rotation's seed this round (issue 20)
    headers: RoundHeaders | None = None  # the headers this round expects (and announced)
    needs_loss: bool = False  # the strategy weighs each update by its train loss (q-FFL)
    specs: list[TensorSpec] = field(init=False)
    model_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        trained = {k: v for k, v in self.reference.items() if not k.startswith(self.frozen)}
        self.specs = [TensorSpec(name=k, shape=tuple(v.shape)) for k, v in trained.items()]
        self.model_bytes = sum(a.nbytes for a in trained.values())

    def decode(
        self, msg: Message, metrics: dict, stats: RoundStats, pool_weight: float = 0.0
    ) -> tuple[dict[str, np.ndarray], float]:
        """The reply's checked, decoded (and clipped) update and its weight (a pool's carrier,
        ``pool_weight`` > 0, holds its pool's mean of that total weight)."""
        payload = reply_payload(msg)
        if not pool_weight:  # a pool's bytes are counted for all its members at once
            stats.upload_bytes.append(len(payload))
        if pool_weight:  # each member's num-examples was checked against the bound
            weight = pool_weight
        else:
            weight = reply_weight(metrics, WEIGHT_KEY, self.limits)
        if self.needs_loss:
            loss = metrics.get(LOSS)
            if not (isinstance(loss, (int, float)) and 0 <= loss <= MAX_LOSS):
                raise UpdateRejected(
                    RejectReason.BAD_METRICS,
                    f"this strategy weighs updates by {LOSS!r}: it must be a number in "
                    f"[0, {MAX_LOSS:g}], got {str(loss)[:40]}",
                )
        node = msg.metadata.src_node_id
        seed = None if self.headers is None else self.headers.rotation_seed(node)
        update = decode_update(
            payload,
            expected=self.specs,
            masks=self.masks,
            expected_round=stats.server_round,
            # a rotated float32 update pads each block to a power of two: at most 1/8 more
            max_bytes=self.model_bytes + self.model_bytes // 8 + PAYLOAD_SLACK_BYTES,
            rotation_seed=self.rotation_seed if self.headers is None else seed,
            headers=self.headers,
            node_id=node,
        )
        deltas = update.as_dict()
        check_update(deltas, self.limits)
        if self.clip_norm > 0:
            deltas = clip_update(deltas, self.clip_norm)
        return deltas, weight

    def decode_pool(
        self, pool: Pool, metrics: list[dict], stats: RoundStats, *, allowed: bool
    ) -> tuple[dict[str, np.ndarray], float]:
        """A pool's checked mean update and its total weight (all members or none: a rejection
        raises). ``metrics``: each reply's checked metrics, in ``pool.replies`` order."""
        stats.upload_bytes += [pool.payload_bytes()] * len(pool.replies)
        carrier, weight = check_pool(pool, metrics, WEIGHT_KEY, allowed=allowed, limits=self.limits)
        return self.decode(carrier, metrics[pool.replies.index(carrier)], stats, weight)

    def updates(
        self, replies: Iterable[Message], stats: RoundStats, *, pools: bool
    ) -> Iterator[Update]:
        """Each accepted update of ``replies`` (a pool's as one, where ``pools``), in summing
        order; every other reply is counted in ``stats`` (failed, rejected or missing) and
        logged, and the round goes on with the rest."""
        server_round = stats.server_round
        ordered, metrics_by_reply, received = checked_replies(
            replies, server_round, stats, self.limits
        )
        accepted = 0
        for unit in group_pools(ordered):
            members = unit.replies if isinstance(unit, Pool) else [unit]
            metrics = [metrics_by_reply[id(m)] for m in members]
            try:
                if isinstance(unit, Pool):
                    deltas, weight = self.decode_pool(unit, metrics, stats, allowed=pools)
                else:
                    deltas, weight = self.decode(unit, metrics[0], stats)
            except Exception as err:  # noqa: BLE001 - any fault of one reply is its rejection
                reject(server_round, stats, members, as_rejection(err, self.limits))
                continue
            weights = [float(m[WEIGHT_KEY]) for m in metrics]
            for record in metrics:
                strip_adapter_metrics(record)
            stats.pooled += len(members) if isinstance(unit, Pool) else 0
            accepted += len(members)
            yield Update(members, deltas, weight, weights, metrics)
        stats.accepted = accepted
        stats.dropped = max(stats.sampled - received, 0)  # no reply before the round deadline
        if stats.dropped:
            log.warning(
                "round %d: %d sampled clients did not reply in time", server_round, stats.dropped
            )


def quantized_download(
    messages: list[Message],
    master: dict[str, np.ndarray],
    server_round: int,
    bits: int,
    masks: MaskSet | None,
) -> tuple[dict[str, np.ndarray], int]:
    """Send ``master`` to ``messages``' clients as one ``bits``-bit payload instead of float32
    arrays; returns what the clients decode from it (their reference) and its size."""
    payload = encode_update(
        master,
        server_round=server_round,
        codec=CodecSpec(quant_bits=bits, stochastic=False),
        masks=masks,
    )
    content = RecordDict(
        {
            "config": messages[0].content["config"],
            DOWNLOAD_RECORD_KEY: ConfigRecord({PAYLOAD_FIELD: payload}),
        }
    )
    for msg in messages:
        msg.content = content
    return decode_update(payload, masks=masks).as_dict(), len(payload)


# Flower strategies whose aggregate_train is the weighted mean of the replies' arrays (then, for
# FedOpt and FedAvgM, a server-optimizer step from it). Exact classes: a subclass may override
# aggregate_train, so it gets every update (correct, if slower).
MEAN_ONLY_STRATEGIES: frozenset[type[Strategy]] = frozenset(
    {FedAvg, FedProx, FedAdam, FedYogi, FedAdagrad, FedAvgM}
)


def needs_only_mean(strategy: Strategy | type[Strategy]) -> bool:
    """Whether ``strategy`` (an object or a class) needs only the weighted mean of the updates:
    then the server may stream the mean, accept pooled uploads and run secure aggregation."""
    cls = strategy if isinstance(strategy, type) else type(strategy)
    return cls in MEAN_ONLY_STRATEGIES


class Aggregator(Protocol):
    """One round's aggregate, as Flower's strategy takes it."""

    def strategy_input(self) -> list[Message]:
        """Fresh messages for Flower's ``aggregate_train`` (none when nothing was added)."""
        ...


class UpdateAggregator(Aggregator, Protocol):
    """An aggregator fed one decoded update at a time."""

    accepts_pools: bool  # a pooled chunk (a pre-summed partial) may be added as one update

    def add(self, update: Update) -> None:
        """Take one accepted update (or a pool's partial, where ``accepts_pools``)."""
        ...


def fresh_reply(like: Message, arrays: dict[str, np.ndarray], metrics: dict) -> Message:
    """A new reply with ``like``'s metadata (a copy), ``arrays`` and ``metrics``: what Flower's
    strategy reads, built for it instead of changing a reply that came in."""
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord(metrics),
        }
    )
    # Flower's public constructors make an instruction and need a running ServerApp's run id;
    # a copy of the reply's metadata keeps its sender for the strategy's logs.
    return Message(content=content, metadata=copy.copy(like.metadata))


@dataclass
class MeanAggregator:
    """The weighted mean of reference + delta, streamed (:class:`StreamingMean`)."""

    reference: dict[str, np.ndarray]
    accepts_pools: bool = True
    mean: StreamingMean = field(init=False)
    first: Message | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.mean = StreamingMean(self.reference)

    def add(self, update: Update) -> None:
        self.mean.add(update.deltas, update.weight)
        if self.first is None:  # the fresh reply takes the first accepted reply's metadata
            self.first = update.replies[0]

    def strategy_input(self) -> list[Message]:
        if self.first is None:
            return []
        return [fresh_reply(self.first, self.mean.result(), {WEIGHT_KEY: self.total})]

    @property
    def total(self) -> float:
        return self.mean.total


@dataclass
class CollectAll:
    """Every update as its client's local model, for strategies that read each one."""

    reference: dict[str, np.ndarray]
    accepts_pools: bool = False
    updates: list[Update] = field(default_factory=list)

    def add(self, update: Update) -> None:
        self.updates.append(update)

    def strategy_input(self) -> list[Message]:
        # each message carries the metrics every reply holds as one number (Flower refuses
        # replies whose metric keys differ; q-FFL reads each reply's loss)
        shared = common_scalars([m for u in self.updates for m in u.metrics])
        return [
            fresh_reply(
                update.replies[0],
                {
                    name: ref + update.deltas[name] if name in update.deltas else ref
                    for name, ref in self.reference.items()
                },
                {**{k: update.metrics[0][k] for k in shared}, WEIGHT_KEY: update.weight},
            )
            for update in self.updates
        ]


@dataclass
class SecureSum:
    """The unmasked sum of a secure round's masked uploads, as a weighted mean of updates.

    ``sum_replies`` runs stages 3-4 of the session (:meth:`SecAggSession.aggregate`) and never
    sees one client's update; the mean is unrotated (a shared rotation) and checked like any
    decoded update before the strategy sees it.
    """

    session: SecAggSession
    reference: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]
    masks: MaskSet | None
    limits: ReplyLimits
    rotation_seed: int | None = None
    rotate_block: int = 0
    deltas: dict[str, np.ndarray] = field(default_factory=dict)
    total: float = 0.0
    first: Message | None = None

    def sum_replies(self, replies: list[Message]) -> None:
        """Sum and unmask ``replies`` (raises SecAggFailed, or any fault no check foresaw)."""
        kept = kept_count(self.shapes, self.masks)
        block = block_for(kept, self.rotate_block)
        rotated = self.rotation_seed is not None
        spec = self.session.spec
        if spec is None:
            raise SecAggFailed("no secure-aggregation setup for this round")
        # + the weight (or distributed DP's count; its spec rotates and unrotates by itself)
        count = spec.vector_size(padded_length(kept, block) if rotated else kept)
        total = self.session.aggregate(replies, count)
        mean, self.total = spec.weighted_mean(total)
        if rotated:
            mean = unrotate(mean, self.rotation_seed, block, kept)
        self.deltas = unflatten_kept(mean, self.shapes, self.masks)
        check_update(self.deltas, self.limits)
        self.first = masked_replies(replies)[0]

    def strategy_input(self) -> list[Message]:
        if self.first is None:
            return []
        model = {
            name: (ref + self.deltas[name]).astype(np.float32) if name in self.deltas else ref
            for name, ref in self.reference.items()
        }
        return [fresh_reply(self.first, model, {WEIGHT_KEY: self.total})]


def aggregator_for(
    strategy: Strategy, reference: dict[str, np.ndarray], *, pools: bool
) -> UpdateAggregator:
    """The aggregator ``strategy``'s ``aggregate_train`` needs: the streaming mean (accepting
    pooled partials when ``pools``) where it needs only the mean, else every update."""
    if needs_only_mean(strategy):
        return MeanAggregator(reference, accepts_pools=pools)
    return CollectAll(reference)
