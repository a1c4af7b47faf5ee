"""Typed errors of the wire format."""

from __future__ import annotations

from enum import StrEnum


class RejectReason(StrEnum):
    """Why a payload was refused; the value is the short code logged and counted in metrics."""

    TOO_SHORT = "too-short"
    TOO_LARGE = "too-large"
    BAD_MAGIC = "bad-magic"
    UNSUPPORTED_VERSION = "unsupported-version"
    BAD_HEADER = "bad-header"
    UNKNOWN_STAGE = "unknown-stage"
    BAD_TENSOR_SPEC = "bad-tensor-spec"
    LENGTH_MISMATCH = "length-mismatch"
    SHAPE_MISMATCH = "shape-mismatch"
    ROUND_MISMATCH = "round-mismatch"
    NON_FINITE = "non-finite"
    MISSING_PAYLOAD = "missing-payload"
    MASK_MISMATCH = "mask-mismatch"
    BAD_BIT_WIDTH = "bad-bit-width"
    BAD_SCALE = "bad-scale"
    BAD_INDICES = "bad-indices"
    STAGE_ORDER = "stage-order"
    BAD_POOL = "bad-pool"  # a pooled upload that is incomplete, mis-weighted or not allowed
    BAD_METRICS = "bad-metrics"  # a metric of the wrong type, size or value
    BAD_WEIGHT = "bad-weight"  # num-examples missing, not a number, <= 0 or above the bound
    OUT_OF_BOUNDS = "out-of-bounds"  # a decoded coordinate beyond the operator's bound
    MALFORMED = "malformed"  # handling the reply raised an error no check foresaw
    # secure aggregation
    BAD_SECAGG = "bad-secagg"
    SHARE_TAMPERED = "share-tampered"
    REPLAYED = "replayed"
    IDENTITY_MISMATCH = "identity-mismatch"


class UpdateRejected(ValueError):
    """A client update failed validation; ``reason`` is a :class:`RejectReason`.

    The message always says what was wrong and what a well-formed payload looks like, so the
    server can log it and the client author can fix it.
    """

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
