"""Reading train replies on the server: their metrics, their summing order, their rejection."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flwr.app import ConfigRecord, Message

from strategies.stats import Rejection, RoundStats
from strategies.validation import (
    ReplyLimits,
    as_rejection,
    checked_metrics,
    checked_weight,
    partition_of,
)
from wire import PAYLOAD_FIELD, UPDATE_RECORD_KEY, RejectReason, UpdateRejected

log = logging.getLogger(__name__)

WEIGHT_KEY = "num-examples"
LOSS = "train-loss"  # a train reply's mean local loss (what q-FFL weighs updates by)
# Metrics the adapter keeps for itself instead of passing to the weighted average.
ADAPTER_METRICS = ("partition-id", "upload-bytes")
_EXEMPT = (WEIGHT_KEY, *ADAPTER_METRICS)  # checked where they are read, with their own reason


def strip_adapter_metrics(metrics: dict) -> None:
    for key in ADAPTER_METRICS:  # not averaged: the adapter accounts for them itself
        metrics.pop(key, None)


def order_key(msg: Message, metrics: dict) -> tuple[int, int]:
    """Replies are summed in partition-id order (node ids are random per simulation run);
    ``metrics``: the reply's checked metrics (:func:`checked_metrics`)."""
    return partition_of(metrics.get("partition-id", -1)), msg.metadata.src_node_id


def reject(server_round: int, stats: RoundStats, replies: list[Message], err: UpdateRejected):
    """Count every reply of ``replies`` (one update, or one pool) as rejected; log it once."""
    for msg in replies:
        stats.rejected.append(Rejection(msg.metadata.src_node_id, err.reason.value, err.detail))
    log.warning(
        "round %d: rejected %s (%s): %s",
        server_round,
        f"update from node {replies[0].metadata.src_node_id}"
        if len(replies) == 1
        else f"{len(replies)} pooled updates",
        err.reason.value,
        err.detail,
    )


def reply_payload(msg: Message) -> bytes:
    """The reply's update bytes; :class:`UpdateRejected` (``missing-payload``) without them."""
    record = msg.content.get(UPDATE_RECORD_KEY)
    payload = record.get(PAYLOAD_FIELD) if isinstance(record, ConfigRecord) else None
    if not isinstance(payload, bytes):
        raise UpdateRejected(
            RejectReason.MISSING_PAYLOAD,
            f"reply has no bytes under {UPDATE_RECORD_KEY!r}/{PAYLOAD_FIELD!r}; "
            "is the client built with Pollen's SDK?",
        )
    return payload


def reply_weight(
    metrics: dict, weight_key: str, limits: ReplyLimits, pool_weight: float = 0.0
) -> float:
    """The reply's weight: ``pool_weight`` for a pool's carrier, else its checked
    ``weight_key`` metric; :class:`UpdateRejected` (``bad-weight``) when unusable."""
    return checked_weight(pool_weight or metrics.get(weight_key), weight_key, limits)


def checked_replies(
    replies: Iterable[Message], server_round: int, stats: RoundStats, limits: ReplyLimits
) -> tuple[list[Message], dict[int, dict], int]:
    """The train replies whose metrics pass the checks, in summing order, their checked metrics
    (by ``id`` of the reply) and how many replies came; error replies count as failures."""
    candidates: list[tuple[tuple[int, int], Message]] = []
    metrics_by_reply: dict[int, dict] = {}
    received = 0
    for msg in replies:
        received += 1
        node = msg.metadata.src_node_id
        if msg.has_error():
            reason = str(msg.error.reason)[: limits.max_detail_chars]
            stats.failures.append(Rejection(node, "client-error", reason))
            log.warning("round %d: node %d failed: %s", server_round, node, reason)
            continue
        try:
            metrics_by_reply[id(msg)] = metrics = checked_metrics(msg, limits, _EXEMPT)
        except Exception as err:  # noqa: BLE001 - any fault of one reply is its rejection
            reject(server_round, stats, [msg], as_rejection(err, limits))
            continue
        candidates.append((order_key(msg, metrics), msg))
    # A fixed order makes the floating-point sum, hence the model, reproducible.
    candidates.sort(key=lambda item: item[0])
    return [msg for _, msg in candidates], metrics_by_reply, received


def checked_evaluate_replies(
    replies: Iterable[Message], stats: RoundStats, limits: ReplyLimits, weight_key: str = WEIGHT_KEY
) -> tuple[list[dict], list[float]]:
    """The evaluation replies' checked metrics (without the weight) and weights; a reply that
    fails a check is counted in ``stats.evaluate_rejected`` and left out."""
    records, weights = [], []
    for msg in replies:
        if msg.has_error():
            continue
        try:
            metrics = checked_metrics(msg, limits, _EXEMPT)
            weight = reply_weight(metrics, weight_key, limits)
        except Exception as err:  # noqa: BLE001 - any fault of one reply is its rejection
            why = as_rejection(err, limits)
            stats.evaluate_rejected.append(
                Rejection(msg.metadata.src_node_id, why.reason.value, why.detail)
            )
            continue
        metrics.pop(weight_key)
        strip_adapter_metrics(metrics)
        records.append(metrics)
        weights.append(weight)
    return records, weights
