"""Decoding one round's train replies into accepted updates or counted rejections.

Each reply's metrics are checked first (:mod:`strategies.replies`), then its payload against
the model clients started from this round (its tensors, pruning mask, round and rotation), its
weight and values (:mod:`strategies.validation`), then clipped if the run asks; a pool's carrier
holds its members' weighted mean (:mod:`strategies.pooling`). What comes out is an
:class:`Update` per client (or per pool) for an aggregator (:mod:`strategies.aggregators`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict

from strategies.aggregation import clip_update
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
        update = decode_update(
            payload,
            expected=self.specs,
            masks=self.masks,
            expected_round=stats.server_round,
            # a rotated float32 update pads each block to a power of two: at most 1/8 more
            max_bytes=self.model_bytes + self.model_bytes // 8 + PAYLOAD_SLACK_BYTES,
            rotation_seed=self.rotation_seed,
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
