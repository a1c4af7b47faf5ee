"""Codec stages: each an encode/decode pair over a list of float32 tensors, returning exact bytes.

A stage turns tensors into body bytes (``encode``) and back (``decode``); the header records the
stage's name and parameters so the server never guesses. Wire v0 has one stage, the lossless
``float32-delta``; compression and secure-aggregation stages register here later
(the encode/decode-pair habit follows pfl-research's postprocessors).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from wire.errors import RejectReason, UpdateRejected

Buffer = bytes | memoryview


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one tensor in an update."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


class Stage(Protocol):
    """One codec stage. ``encode`` returns (body buffers, params); ``decode`` inverts it.

    The body is a list of bytes-like buffers that the payload joins in a single copy.
    """

    name: str

    def encode(self, tensors: Sequence[np.ndarray]) -> tuple[list[Buffer], dict[str, Any]]: ...

    def body_bytes(self, specs: Sequence[TensorSpec], params: dict[str, Any]) -> int: ...

    def decode(
        self, body: memoryview, specs: Sequence[TensorSpec], params: dict[str, Any]
    ) -> list[np.ndarray]: ...


class Float32Delta:
    """Lossless stage: little-endian float32 values of each tensor, concatenated in order."""

    name = "float32-delta"

    def encode(self, tensors: Sequence[np.ndarray]) -> tuple[list[Buffer], dict[str, Any]]:
        parts = [memoryview(np.ascontiguousarray(t, dtype="<f4")).cast("B") for t in tensors]
        return parts, {}

    def body_bytes(self, specs: Sequence[TensorSpec], params: dict[str, Any]) -> int:
        return 4 * sum(spec.size for spec in specs)

    def decode(
        self, body: memoryview, specs: Sequence[TensorSpec], params: dict[str, Any]
    ) -> list[np.ndarray]:
        flat = np.frombuffer(body, dtype="<f4")
        if not np.isfinite(flat).all():
            bad = int((~np.isfinite(flat)).sum())
            raise UpdateRejected(
                RejectReason.NON_FINITE,
                f"{bad} of {flat.size} values are NaN or Inf; clients must send finite deltas",
            )
        owned = flat.astype(np.float32)  # one writable copy, independent of the payload
        out: list[np.ndarray] = []
        offset = 0
        for spec in specs:
            out.append(owned[offset : offset + spec.size].reshape(spec.shape))
            offset += spec.size
        return out


STAGES: dict[str, Stage] = {Float32Delta.name: Float32Delta()}


def get_stage(name: str) -> Stage:
    """Look a stage up by the name written in a header."""
    try:
        return STAGES[name]
    except KeyError:
        raise UpdateRejected(
            RejectReason.UNKNOWN_STAGE,
            f"codec stage {name!r} is not known to this server (known: {sorted(STAGES)})",
        ) from None
