"""What the server makes of one round's accepted updates, before Flower's server step.

An :class:`Aggregator` receives the decoded, checked updates of a round (:class:`Update`) and
hands Flower's strategy what its ``aggregate_train`` expects, as FRESH messages: the replies
that came in are never changed. Three kinds:

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
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
    Strategy,
)

from strategies.aggregation import StreamingMean, common_scalars
from strategies.decoding import Update
from strategies.replies import WEIGHT_KEY
from strategies.secagg import SecAggFailed, SecAggSession
from strategies.secagg_metrics import masked_replies
from strategies.validation import ReplyLimits, check_update
from wire import MaskSet
from wire.rotation import block_for, padded_length, unrotate
from wire.secagg_vector import kept_count, unflatten_kept

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
