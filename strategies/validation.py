"""The server's validation boundary for what a client sends besides its payload bytes.

Everything in a reply is hostile until checked (Flower's ``InconsistentMessageReplies`` and
pyca's test vectors are the habit): metrics are checked for type, size and finiteness before
anything reads them, the weight (``num-examples``) must be a finite number in
``(0, max_weight]``, and a decoded update must be finite with every coordinate within the
operator's bound. Each check raises :class:`UpdateRejected` with a reason the adapter counts;
:func:`as_rejection` turns any other exception raised while handling one reply into a counted
``malformed`` rejection, so no single reply can end a run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Message, MetricRecord, RecordDict

from wire import RejectReason, UpdateRejected

UNKNOWN_PARTITION = 2**62
MetricValue = int | float | list[int] | list[float]


@dataclass(frozen=True, kw_only=True)
class ReplyLimits:
    """What the server accepts from one reply (the operator sets the first two)."""

    max_update_value: float = 1e6  # largest |coordinate| of a decoded update
    max_weight: float = 1e9  # largest num-examples a reply may claim
    max_metrics: int = 256  # metric keys in one record
    max_metric_list: int = 4096  # values in one list-valued metric
    max_metric_value: float = 1e18  # largest |value| of a metric
    max_detail_chars: int = 300  # a rejection's detail is cut to this (clients write it)

    def __post_init__(self) -> None:
        for name in ("max_update_value", "max_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def metrics_of(content: RecordDict) -> MetricRecord | None:
    """The reply's first MetricRecord (``RecordDict.metric_records`` copies them all each call)."""
    return next((v for v in content.values() if isinstance(v, MetricRecord)), None)


def checked_metrics(
    msg: Message, limits: ReplyLimits, exempt: tuple[str, ...] = ()
) -> dict[str, MetricValue]:
    """The reply's metrics as plain values, each checked; ``{}`` when it sends none.

    Refused (``bad-metrics``): more than ``max_metrics`` keys, a key that is not a string, a
    value that is not a finite number (bools included) or a list of at most
    ``max_metric_list`` of them, or a value beyond ``max_metric_value``. Keys in ``exempt``
    (the weight, the partition id) skip the value checks: their own checks name their faults.
    """
    record = metrics_of(msg.content)
    if record is None:
        return {}
    if len(record) > limits.max_metrics:
        raise _bad(f"{len(record)} metrics; at most {limits.max_metrics} are accepted")
    clean: dict[str, MetricValue] = {}
    bound = limits.max_metric_value
    for key, value in record.items():
        if not isinstance(key, str) or len(key) > 256:
            raise _bad(f"metric key {str(key)[:40]!r} is not a short string")
        if key in exempt and (_is_number(value) or isinstance(value, list)):
            clean[key] = value  # type: ignore[assignment]  # checked where it is read
        elif _is_number(value):
            if not abs(value) <= bound:  # NaN fails too
                raise _bad(f"metric {key!r} = {value!r} is not finite or beyond {bound:g}")
            clean[key] = value
        elif isinstance(value, list):
            if len(value) > limits.max_metric_list:
                raise _bad(f"metric {key!r} lists {len(value)} values (> {limits.max_metric_list})")
            if not all(_is_number(v) and abs(v) <= bound for v in value):
                raise _bad(f"metric {key!r} must list finite numbers within {bound:g}")
            clean[key] = list(value)
        else:
            raise _bad(f"metric {key!r} is a {type(value).__name__}, not a number or a list")
    return clean


def _bad(detail: str) -> UpdateRejected:
    return UpdateRejected(RejectReason.BAD_METRICS, detail)


def checked_weight(value: Any, key: str, limits: ReplyLimits) -> float:
    """``value`` as a weight: a finite number in ``(0, max_weight]``, else ``bad-weight``."""
    if not _is_number(value) or not 0 < value <= limits.max_weight:
        raise UpdateRejected(
            RejectReason.BAD_WEIGHT,
            f"reply needs a {key!r} metric in (0, {limits.max_weight:g}] to be weighted, "
            f"got {str(value)[:40]}",
        )
    return float(value)


def partition_of(value: Any) -> int:
    """A reported partition id as an int; UNKNOWN_PARTITION unless a whole number >= 0."""
    if _is_number(value) and 0 <= value < UNKNOWN_PARTITION and float(value).is_integer():
        return int(value)
    return UNKNOWN_PARTITION


def check_update(deltas: Mapping[str, np.ndarray], limits: ReplyLimits) -> None:
    """Refuse a decoded update with a NaN/Inf or a coordinate beyond ``max_update_value``.

    Each value on its own is a float32, but a few near 3.4e38 (or ranges whose width overflows)
    would turn the global model into Inf, after which every honest update fails its checks.
    """
    bound = limits.max_update_value
    for name, delta in deltas.items():
        if delta.size == 0:
            continue
        peak = float(np.max(np.abs(delta)))
        if not math.isfinite(peak):
            raise UpdateRejected(RejectReason.NON_FINITE, f"tensor {name!r} has NaN or Inf values")
        if peak > bound:
            raise UpdateRejected(
                RejectReason.OUT_OF_BOUNDS,
                f"tensor {name!r} has a coordinate of {peak:.3g}, beyond the server's bound "
                f"{bound:g} (max-update-value)",
            )


def as_rejection(err: Exception, limits: ReplyLimits) -> UpdateRejected:
    """Any error raised while handling one reply, as the rejection to count (detail cut)."""
    cut = limits.max_detail_chars
    if isinstance(err, UpdateRejected):
        if len(err.detail) <= cut:
            return err
        return UpdateRejected(err.reason, err.detail[:cut] + "...")
    detail = f"{type(err).__name__}: {str(err)[:cut]}"
    return UpdateRejected(RejectReason.MALFORMED, detail)


def is_finite_model(arrays: Mapping[str, Any]) -> bool:
    """Every array of a model (numpy arrays, or Flower Arrays) is finite."""
    for value in arrays.values():
        array = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            return False
    return True
