"""Server-owned magnitude pruning with a gradual sparsity schedule (numpy only).

Schedule: Zhu & Gupta, "To prune, or not to prune" (2017), eq. 1: from initial sparsity s_i at
``start_round`` to final s_f at ``end_round``, s_t = s_f + (s_i - s_f) * (1 - progress)^3 (cubic);
``linear`` and ``constant`` (s_f from the start) are there for comparison. Masks keep the
largest-magnitude weights of the global model per tensor (``layer``, the default: every layer
keeps the same share) or over all prunable tensors together (``global``; layers whose weights
start smaller, such as a wide classifier head at initialization, can then lose every weight, so
start global pruning after a few rounds of training). Pruned weights are zero in the global
model, so once pruned they stay the smallest and the masks only grow sparser as the schedule
rises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from wire import MaskSet


class PruningConfigError(ValueError):
    """An impossible pruning setting; the message names it."""


@dataclass(frozen=True, kw_only=True)
class PruningSchedule:
    final_sparsity: float
    initial_sparsity: float = 0.0
    start_round: int = 1
    end_round: int = 10
    kind: Literal["cubic", "linear", "constant"] = "cubic"
    scope: Literal["global", "layer"] = "layer"

    def __post_init__(self) -> None:
        if not 0 <= self.final_sparsity < 1:
            raise PruningConfigError(
                f"prune (final sparsity) must be in [0, 1), got {self.final_sparsity}"
            )
        if not 0 <= self.initial_sparsity <= self.final_sparsity:
            raise PruningConfigError(
                f"prune-initial must be in [0, prune={self.final_sparsity}], "
                f"got {self.initial_sparsity}"
            )
        if not 1 <= self.start_round <= self.end_round:
            raise PruningConfigError(
                "need 1 <= prune-start-round <= prune-end-round, "
                f"got {self.start_round}, {self.end_round}"
            )
        if self.kind not in ("cubic", "linear", "constant"):
            raise PruningConfigError(
                f"prune-schedule must be cubic, linear or constant, got {self.kind!r}"
            )
        if self.scope not in ("global", "layer"):
            raise PruningConfigError(f"prune-scope must be global or layer, got {self.scope!r}")

    def sparsity(self, server_round: int) -> float:
        """Target sparsity of the model trained in ``server_round``."""
        if self.kind == "constant":
            return self.final_sparsity
        if server_round < self.start_round:
            return 0.0
        span = max(self.end_round - self.start_round, 1)
        progress = min((server_round - self.start_round) / span, 1.0)
        shape = (1 - progress) ** 3 if self.kind == "cubic" else 1 - progress
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * shape


def prunable_names(arrays: Mapping[str, np.ndarray], frozen: Sequence[str] = ()) -> list[str]:
    """Weight matrices and kernels (ndim >= 2) that are trained; biases stay dense."""
    return [n for n, a in arrays.items() if a.ndim >= 2 and not n.startswith(tuple(frozen))]


def magnitude_masks(
    arrays: Mapping[str, np.ndarray],
    names: Sequence[str],
    sparsity: float,
    scope: Literal["global", "layer"] = "layer",
) -> MaskSet:
    """Keep-masks pruning the ``sparsity`` fraction of smallest |weights| among ``names``.

    Ties (e.g. already-pruned zeros) are broken by position with a stable sort, so the same
    model always gets the same mask.
    """
    if not names:
        return MaskSet({})
    if scope == "layer":
        return MaskSet(
            {n: _keep_largest(arrays[n].ravel(), sparsity).reshape(arrays[n].shape) for n in names}
        )
    flat = np.concatenate([arrays[n].ravel() for n in names])
    keep = _keep_largest(flat, sparsity)
    out, offset = {}, 0
    for n in names:
        size = arrays[n].size
        out[n] = keep[offset : offset + size].reshape(arrays[n].shape)
        offset += size
    return MaskSet(out)


def _keep_largest(values: np.ndarray, sparsity: float) -> np.ndarray:
    prune = int(round(sparsity * values.size))
    keep = np.ones(values.size, dtype=bool)
    if prune:
        order = np.argsort(np.abs(values), kind="stable")
        keep[order[:prune]] = False
    return keep
