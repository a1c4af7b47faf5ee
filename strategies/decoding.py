"""Decoding one round's train replies: each payload checked against the model clients started
from this round (its tensors, pruning mask, round and rotation), its weight and values checked
(:mod:`strategies.validation`), then clipped if the run asks; a pool's carrier holds its
members' weighted mean (:mod:`strategies.pooling`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict

from strategies.aggregation import StreamingMean, clip_update
from strategies.pooling import Pool, check_pool
from strategies.replies import LOSS, WEIGHT_KEY, reply_payload, reply_weight
from strategies.stats import RoundStats
from strategies.validation import ReplyLimits, check_update
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

# Header and codec slack allowed above the float32 size of the model before refusing a payload.
PAYLOAD_SLACK_BYTES = 1 << 16
MAX_LOSS = 1e6  # q-FFL raises the loss to the power q: a larger one only overflows


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

    def add_pool(
        self,
        pool: Pool,
        metrics: list[dict],
        mean: StreamingMean | None,
        stats: RoundStats,
        *,
        allowed: bool,
    ) -> None:
        """Add a pool's mean with its total weight (all members or none: a rejection raises).
        ``metrics``: each reply's checked metrics, in ``pool.replies`` order."""
        stats.upload_bytes += [pool.payload_bytes()] * len(pool.replies)
        carrier, weight = check_pool(
            pool, metrics, WEIGHT_KEY, allowed=allowed and mean is not None, limits=self.limits
        )
        deltas, _ = self.decode(carrier, metrics[pool.replies.index(carrier)], stats, weight)
        mean.add(deltas, weight)  # type: ignore[union-attr]  # allowed only with a mean


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
