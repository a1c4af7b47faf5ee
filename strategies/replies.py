"""Reading train replies on the server: their metrics, their summing order, their rejection."""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from strategies.sampling import UNKNOWN_PARTITION
from strategies.stats import Rejection, RoundStats
from wire import PAYLOAD_FIELD, UPDATE_RECORD_KEY, RejectReason, UpdateRejected

log = logging.getLogger(__name__)

# Metrics the adapter keeps for itself instead of passing to the weighted average.
ADAPTER_METRICS = ("partition-id", "upload-bytes")


def metrics_of(content: RecordDict) -> MetricRecord | None:
    """The reply's first MetricRecord (``RecordDict.metric_records`` copies them all each call)."""
    return next((v for v in content.values() if isinstance(v, MetricRecord)), None)


def strip_adapter_metrics(metrics: MetricRecord) -> None:
    for key in ADAPTER_METRICS:  # not averaged: the adapter accounts for them itself
        if key in metrics:
            del metrics[key]


def order_key(msg: Message, metrics: MetricRecord | None) -> tuple[int, int]:
    """Replies are summed in partition-id order (node ids are random per simulation run);
    ``metrics``: the reply's (:func:`metrics_of`)."""
    pid = -1 if metrics is None else metrics.get("partition-id", -1)
    pid = int(pid) if isinstance(pid, (int, float)) and pid >= 0 else UNKNOWN_PARTITION
    return pid, msg.metadata.src_node_id


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
    msg: Message, weight_key: str, pool_weight: float = 0.0
) -> tuple[MetricRecord, float]:
    """The reply's metrics and its weight: ``pool_weight`` for a pool's carrier, else the
    ``weight_key`` metric; :class:`UpdateRejected` (``bad-header``) when it is not positive."""
    metrics = metrics_of(msg.content)
    weight = pool_weight or (None if metrics is None else metrics.get(weight_key))
    if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not weight > 0:
        raise UpdateRejected(
            RejectReason.BAD_HEADER,
            f"reply needs a positive {weight_key!r} metric to be weighted, got {weight!r}",
        )
    return metrics, float(weight)  # type: ignore[return-value]  # a weight implies metrics
