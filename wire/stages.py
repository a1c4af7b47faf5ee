"""Codec stages: encode/decode pairs over the flat vector of an update, with exact byte counts.

An update runs through ``select`` (the tensors and, under a pruning mask, the kept coordinates,
in a fixed order: no indices travel), then optionally ``topk`` (positions coded compactly), then
either ``quantize`` (b-bit codes + per-chunk ranges) or ``float32``. Each stage writes its
parameters in the header and its bytes as named body sections; each decoder checks every
parameter and section length before it reads (encode/decode pairs follow pfl-research's
postprocessors).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wire.bitpack import pack_uint, packed_size, unpack_uint
from wire.errors import RejectReason, UpdateRejected
from wire.mask import MaskSet
from wire.quantize import ALLOWED_BITS, Quantized, dequantize, num_chunks, quantize
from wire.sparsify import (
    BITMAP,
    GAPS,
    SegmentCode,
    decode_positions,
    encode_positions,
    expected_nbytes,
    topk_indices,
)

Sections = list[tuple[str, bytes | memoryview]]


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one tensor in an update."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @functools.cached_property
    def size(self) -> int:
        return math.prod(int(d) for d in self.shape)


def _reject(reason: RejectReason, detail: str) -> UpdateRejected:
    return UpdateRejected(reason, detail)


# ----------------------------------------------------------------------------- select
def segment_lengths(specs: Sequence[TensorSpec], masks: MaskSet | None) -> list[int]:
    """Values each tensor contributes to the flat vector (its kept count under the mask)."""
    return [spec.size if masks is None else masks.kept(spec.name, spec.size) for spec in specs]


def select(
    tensors: Sequence[np.ndarray], specs: Sequence[TensorSpec], masks: MaskSet | None
) -> np.ndarray:
    parts = []
    for spec, tensor in zip(specs, tensors, strict=True):
        flat = np.asarray(tensor, dtype=np.float32).ravel()
        mask = None if masks is None else masks.masks.get(spec.name)
        parts.append(flat if mask is None else flat[mask.ravel()])
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def scatter(
    flat: np.ndarray, specs: Sequence[TensorSpec], masks: MaskSet | None
) -> list[np.ndarray]:
    out, offset = [], 0
    for spec, length in zip(specs, segment_lengths(specs, masks), strict=True):
        mask = None if masks is None else masks.masks.get(spec.name)
        part = flat[offset : offset + length]
        offset += length
        if mask is None:
            out.append(part.reshape(spec.shape))
        else:
            dense = np.zeros(spec.size, dtype=np.float32)
            dense[mask.ravel()] = part
            out.append(dense.reshape(spec.shape))
    return out


def check_select(params: Mapping[str, Any], masks: MaskSet | None, count: int) -> None:
    want = "" if masks is None else masks.digest
    if params.get("mask") != want:
        raise _reject(
            RejectReason.MASK_MISMATCH,
            f"update was made under mask {params.get('mask')!r}, this round's mask is {want!r}",
        )
    if type(params.get("count")) is not int or params.get("count") != count:
        raise _reject(
            RejectReason.LENGTH_MISMATCH,
            f"select stage says {params.get('count')} values, the mask keeps {count}",
        )


# ----------------------------------------------------------------------------- topk
def encode_topk(
    flat: np.ndarray, fraction: float, lengths: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, dict, Sections]:
    k = min(flat.size, int(np.ceil(fraction * flat.size)))
    positions = topk_indices(flat, k)
    parts, codes = encode_positions(positions, lengths)
    params = {"k": int(k), "segments": [c.as_list() for c in codes]}
    return positions, flat[positions], params, [("indices", b"".join(parts))]


def parse_topk(params: Mapping[str, Any], lengths: Sequence[int]) -> tuple[int, list[SegmentCode]]:
    """Check the top-k parameters against the tensor lengths; return k and segment codes."""
    k, segments = params.get("k"), params.get("segments")
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= sum(lengths):
        raise _reject(RejectReason.BAD_INDICES, f"top-k count {k!r} is not in [0, {sum(lengths)}]")
    if not isinstance(segments, list) or len(segments) != len(lengths):
        raise _reject(
            RejectReason.BAD_INDICES, "top-k needs one [coding, width, count, nbytes] per tensor"
        )
    codes = []
    for seg, length in zip(segments, lengths, strict=True):
        if not (isinstance(seg, list) and len(seg) == 4 and all(type(v) is int for v in seg)):
            raise _reject(RejectReason.BAD_INDICES, f"segment {seg!r} is not four integers")
        code = SegmentCode(*seg)
        if (
            code.coding not in (BITMAP, GAPS)
            or not 1 <= code.width <= 32
            or not 0 <= code.count <= length
        ):
            raise _reject(
                RejectReason.BAD_INDICES,
                f"segment {seg!r} has an impossible coding, width or count",
            )
        if code.nbytes != expected_nbytes(code.coding, code.width, code.count, length):
            raise _reject(RejectReason.LENGTH_MISMATCH, f"segment {seg!r} has the wrong byte count")
        codes.append(code)
    if sum(c.count for c in codes) != k:
        raise _reject(
            RejectReason.LENGTH_MISMATCH,
            f"top-k segments hold {sum(c.count for c in codes)} positions, not k={k}",
        )
    return k, codes


def decode_topk(
    section: memoryview, codes: Sequence[SegmentCode], lengths: Sequence[int]
) -> np.ndarray:
    try:
        return decode_positions(section, codes, lengths)
    except ValueError as err:
        raise _reject(RejectReason.BAD_INDICES, str(err)) from None


# ----------------------------------------------------------------------------- values
def encode_values(
    values: np.ndarray, bits: int, chunk: int, rng: np.random.Generator | None
) -> tuple[dict, Sections]:
    """``bits == 0``: float32 values; else b-bit codes and (min, max) float32 per chunk."""
    if bits == 0:
        return {}, [("values", memoryview(np.ascontiguousarray(values, "<f4")).cast("B"))]
    q = quantize(values, bits, chunk, rng)
    scales = np.stack([q.lo, q.hi], axis=1).astype("<f4").tobytes()
    params = {"bits": bits, "chunk": chunk, "rounding": "nearest" if rng is None else "stochastic"}
    return params, [("scales", scales), ("codes", pack_uint(q.codes, bits))]


def values_sections(stage: str, params: Mapping[str, Any], count: int) -> list[tuple[str, int]]:
    """The sections (name, bytes) a value stage must have for ``count`` values."""
    if stage == "float32":
        return [("values", 4 * count)]
    bits, chunk = params.get("bits"), params.get("chunk")
    if type(bits) is not int or bits not in ALLOWED_BITS:  # 4.0 == 4 and True == 1
        raise _reject(
            RejectReason.BAD_BIT_WIDTH, f"bit width {bits!r} is not one of {ALLOWED_BITS}"
        )
    if type(chunk) is not int or not 1 <= chunk <= 1 << 24:
        raise _reject(RejectReason.BAD_HEADER, f"quantization chunk {chunk!r} is not in [1, 2^24]")
    return [("scales", 8 * num_chunks(count, chunk)), ("codes", packed_size(count, bits))]


def decode_values(
    stage: str, params: Mapping[str, Any], sections: Mapping[str, memoryview], count: int
) -> np.ndarray:
    if stage == "float32":
        values = np.frombuffer(sections["values"], dtype="<f4")
        if not np.isfinite(values).all():
            raise _reject(RejectReason.NON_FINITE, "some values are NaN or Inf; send finite deltas")
        return values.astype(np.float32)
    bits, chunk = params["bits"], params["chunk"]
    scales = np.frombuffer(sections["scales"], dtype="<f4").reshape(-1, 2)
    if not np.isfinite(scales).all() or (scales[:, 0] > scales[:, 1]).any():
        raise _reject(RejectReason.BAD_SCALE, "a chunk range is NaN/Inf or has min > max")
    with np.errstate(over="ignore"):  # dequantize steps by (max - min) in float32
        if not np.isfinite(scales[:, 1] - scales[:, 0]).all():
            raise _reject(RejectReason.BAD_SCALE, "a chunk range (max - min) overflows float32")
    codes = unpack_uint(sections["codes"], bits, count)
    return dequantize(Quantized(codes, scales[:, 0].copy(), scales[:, 1].copy()), bits, chunk)
