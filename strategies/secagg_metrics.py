"""What a masked reply may say in plaintext, and the mean train loss the survivors shared.

Secure aggregation (Bonawitz et al. CCS 2017; SecAgg+, Bell et al. CCS 2020) promises the
server the sum of the updates and nothing about one client. A masked upload therefore carries
no per-client ``train-loss``, ``clipped-fraction`` or ``partition-id`` unless the run opts in
(``secagg-share-metrics``; :func:`client_sdk.secagg.masked_message` leaves them out otherwise),
and what an opted-in client sends is checked like every other field it sends.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import Message, MetricRecord

from wire import RejectReason, UpdateRejected
from wire.secagg_protocol import PRIVATE_METRICS, SECAGG_RECORD_KEY


def check_shared_metrics(reply: Message) -> None:
    """An opted-in masked reply's plaintext metrics are finite numbers (else UpdateRejected:
    the client is rejected and its masks removed as for a dropout)."""
    metrics = reply.content.get("metrics")
    if metrics is None:
        return
    if not isinstance(metrics, MetricRecord):
        raise UpdateRejected(RejectReason.BAD_SECAGG, "'metrics' is not a MetricRecord")
    for key in PRIVATE_METRICS:
        if key in metrics and finite_number(metrics[key]) is None:
            raise UpdateRejected(RejectReason.BAD_SECAGG, f"metric {key!r} is not a finite number")


def finite_number(value: object) -> float | None:
    """``value`` as a float if it is an int or float (not a bool) and finite, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def masked_replies(replies: list[Message]) -> list[Message]:
    """The replies of a secure round that carry a masked upload (no error, a SecAgg record)."""
    return [m for m in replies if not m.has_error() and SECAGG_RECORD_KEY in m.content]


def shared_train_loss(replies: list[Message]) -> dict[str, float]:
    """``{"train-loss": mean}`` over the masked replies that shared a finite loss (opt-in
    ``share_metrics``; a value that is not a finite number is left out); ``{}`` when none did."""
    losses = []
    for m in masked_replies(replies):
        metrics = m.content.get("metrics")
        if isinstance(metrics, MetricRecord) and "train-loss" in metrics:
            loss = finite_number(metrics["train-loss"])
            if loss is not None:
                losses.append(loss)
    return {"train-loss": float(np.mean(losses))} if losses else {}
