"""The kept-coordinate order: which values of which tensors an update carries, and in what order.

Tensors in the order given, each flattened row-major; under the shared pruning mask only the
coordinates it keeps (a tensor the mask does not list is sent whole). No indices travel: both
sides derive the order from the tensor list and the mask. The ``select`` stage
(:mod:`wire.stages`) and the secure-aggregation vector (:mod:`wire.secagg_vector`) both use
these functions, so a plain and a masked upload lay the kept values out the same way.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from wire.mask import MaskSet


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one tensor in an update."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @functools.cached_property
    def size(self) -> int:
        return math.prod(int(d) for d in self.shape)


def segment_lengths(specs: Sequence[TensorSpec], masks: MaskSet | None) -> list[int]:
    """Values each tensor contributes to the flat vector (its kept count under the mask)."""
    return [spec.size if masks is None else masks.kept(spec.name, spec.size) for spec in specs]


def gather_kept(
    tensors: Sequence[np.ndarray],
    names: Sequence[str],
    masks: MaskSet | None,
    dtype: type | None = None,
) -> np.ndarray:
    """The kept values of ``tensors`` (named ``names``) as one flat vector, in order;
    ``dtype=None`` keeps each tensor's dtype (numpy's promotion joins them)."""
    parts = []
    for name, tensor in zip(names, tensors, strict=True):
        flat = np.asarray(tensor, dtype=dtype).ravel()
        mask = None if masks is None else masks.masks.get(name)
        parts.append(flat if mask is None else flat[mask.ravel()])
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def scatter_kept(
    flat: np.ndarray, specs: Sequence[TensorSpec], masks: MaskSet | None, *, copy: bool = False
) -> list[np.ndarray]:
    """Inverse of :func:`gather_kept`: float32 tensors, pruned coordinates exact zeros. A tensor
    the mask does not list is a view of ``flat`` when it is float32 and ``copy`` is False."""
    out, offset = [], 0
    for spec, length in zip(specs, segment_lengths(specs, masks), strict=True):
        mask = None if masks is None else masks.masks.get(spec.name)
        part = flat[offset : offset + length]
        offset += length
        if mask is None:
            out.append(part.astype(np.float32, copy=copy).reshape(spec.shape))
        else:
            dense = np.zeros(spec.size, dtype=np.float32)
            dense[mask.ravel()] = part
            out.append(dense.reshape(spec.shape))
    return out
