"""Codec stages ``select``, ``topk``, ``quantize`` and ``float32``: encode/decode pairs over the
flat vector of an update, with exact byte counts (the interface: :mod:`wire.stage_api`).

An update runs through ``select`` (the tensors and, under a pruning mask, the kept coordinates,
in :mod:`wire.kept`'s order: no indices travel), then optionally ``topk`` (positions coded
compactly), then a values stage: ``quantize`` (b-bit codes + per-chunk ranges) or ``float32``
(or :mod:`wire.eden`'s). Each stage writes its parameters in the header and its bytes as named
body sections; each decoder checks every parameter and section length before it reads
(encode/decode pairs follow pfl-research's postprocessors).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from wire.bitpack import pack_uint, packed_size, unpack_uint
from wire.codec import CodecSpec
from wire.errors import RejectReason, UpdateRejected
from wire.kept import TensorSpec, gather_kept, segment_lengths
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
from wire.stage_api import (
    SELECT,
    SPARSIFY,
    VALUES,
    DecodeContext,
    EncodeContext,
    Encoded,
    Params,
    Sections,
)

__all__ = ["TensorSpec", "segment_lengths", "select"]


def _reject(reason: RejectReason, detail: str) -> UpdateRejected:
    return UpdateRejected(reason, detail)


# ----------------------------------------------------------------------------- select
def select(
    tensors: Sequence[np.ndarray], specs: Sequence[TensorSpec], masks: MaskSet | None
) -> np.ndarray:
    """The kept values of ``tensors`` as one float32 vector (:func:`wire.kept.gather_kept`)."""
    return gather_kept(tensors, [s.name for s in specs], masks, np.float32)


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


class SelectStage:
    """``select``: the kept coordinates of the tensors (``ctx.tensors``), params ``{"mask":
    digest or "", "count"}``, no body section; decoding hands the flat vector on unchanged
    (:func:`scatter` makes tensors of it)."""

    name, slot = "select", SELECT

    def wanted(self, codec: CodecSpec) -> bool:
        return True

    def header_params(self, codec: CodecSpec, count: int, ctx: EncodeContext) -> Params:
        return {"mask": "" if ctx.masks is None else ctx.masks.digest, "count": int(count)}

    def encode(self, values: np.ndarray | None, codec: CodecSpec, ctx: EncodeContext) -> Encoded:
        flat = select(ctx.tensors, ctx.specs, ctx.masks)
        return Encoded(flat, self.header_params(codec, flat.size, ctx), [])

    def layout(
        self, params: Mapping[str, Any], count: int, ctx: DecodeContext
    ) -> tuple[int, list[tuple[str, int]]]:
        total = sum(ctx.lengths)
        check_select(params, ctx.masks, total)
        return total, []

    def decode(self, params, sections, values, count, ctx) -> np.ndarray:
        return values


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


class TopkStage:
    """``topk``: the ``ceil(topk * n)`` largest-magnitude values, params ``{"k", "segments"}``
    (one [coding, width, count, nbytes] per tensor), section ``indices``."""

    name, slot = "topk", SPARSIFY

    def wanted(self, codec: CodecSpec) -> bool:
        return bool(codec.topk)

    def header_params(self, codec: CodecSpec, count: int, ctx: EncodeContext) -> Params:
        raise ValueError("top-k's params (the positions' coding) depend on the values")

    def encode(self, values: np.ndarray, codec: CodecSpec, ctx: EncodeContext) -> Encoded:
        _, kept, params, sections = encode_topk(values, codec.topk, ctx.lengths)
        return Encoded(kept, params, sections)

    def layout(
        self, params: Mapping[str, Any], count: int, ctx: DecodeContext
    ) -> tuple[int, list[tuple[str, int]]]:
        k, codes = parse_topk(params, ctx.lengths)
        return k, [("indices", sum(c.nbytes for c in codes))]

    def decode(self, params, sections, values, count, ctx) -> np.ndarray:
        _, codes = parse_topk(params, ctx.lengths)
        flat = np.zeros(count, dtype=np.float32)
        flat[decode_topk(sections["indices"], codes, ctx.lengths)] = values
        return flat


# ----------------------------------------------------------------------------- values
class Float32Stage:
    """``float32``: the values as little-endian float32, params ``{}``, section ``values``."""

    name, slot = "float32", VALUES

    def wanted(self, codec: CodecSpec) -> bool:
        return codec.scheme == "uniform" and not codec.quant_bits

    def header_params(self, codec: CodecSpec, count: int, ctx: EncodeContext) -> Params:
        return {}

    def encode(self, values: np.ndarray, codec: CodecSpec, ctx: EncodeContext) -> Encoded:
        body = memoryview(np.ascontiguousarray(values, "<f4")).cast("B")
        return Encoded(None, {}, [("values", body)])

    def layout(
        self, params: Mapping[str, Any], count: int, ctx: DecodeContext
    ) -> tuple[int, list[tuple[str, int]]]:
        return 0, [("values", 4 * count)]

    def decode(self, params, sections, values, count, ctx) -> np.ndarray:
        out = np.frombuffer(sections["values"], dtype="<f4")
        if not np.isfinite(out).all():
            raise _reject(RejectReason.NON_FINITE, "some values are NaN or Inf; send finite deltas")
        return out.astype(np.float32)


class QuantizeStage:
    """``quantize`` (:mod:`wire.quantize`): params ``{"bits", "chunk", "rounding"}``; sections
    ``scales`` ((min, max) float32 per chunk) and ``codes`` (``bits`` per value)."""

    name, slot = "quantize", VALUES

    def wanted(self, codec: CodecSpec) -> bool:
        return codec.scheme == "uniform" and bool(codec.quant_bits)

    def header_params(self, codec: CodecSpec, count: int, ctx: EncodeContext) -> Params:
        rounding = "stochastic" if codec.stochastic else "nearest"
        return {"bits": codec.quant_bits, "chunk": codec.quant_chunk, "rounding": rounding}

    def encode(self, values: np.ndarray, codec: CodecSpec, ctx: EncodeContext) -> Encoded:
        if codec.stochastic and ctx.rng is None:
            raise ValueError("stochastic quantization needs an rng (numpy Generator)")
        bits, chunk = codec.quant_bits, codec.quant_chunk
        q = quantize(values, bits, chunk, ctx.rng if codec.stochastic else None)
        scales = np.stack([q.lo, q.hi], axis=1).astype("<f4").tobytes()
        params = self.header_params(codec, values.size, ctx)
        return Encoded(None, params, [("scales", scales), ("codes", pack_uint(q.codes, bits))])

    def layout(
        self, params: Mapping[str, Any], count: int, ctx: DecodeContext
    ) -> tuple[int, list[tuple[str, int]]]:
        bits, chunk = params.get("bits"), params.get("chunk")
        if type(bits) is not int or bits not in ALLOWED_BITS:  # 4.0 == 4 and True == 1
            raise _reject(
                RejectReason.BAD_BIT_WIDTH, f"bit width {bits!r} is not one of {ALLOWED_BITS}"
            )
        if type(chunk) is not int or not 1 <= chunk <= 1 << 24:
            why = f"quantization chunk {chunk!r} is not in [1, 2^24]"
            raise _reject(RejectReason.BAD_HEADER, why)
        return 0, [("scales", 8 * num_chunks(count, chunk)), ("codes", packed_size(count, bits))]

    def decode(self, params, sections, values, count, ctx) -> np.ndarray:
        bits, chunk = params["bits"], params["chunk"]
        scales = np.frombuffer(sections["scales"], dtype="<f4").reshape(-1, 2)
        if not np.isfinite(scales).all() or (scales[:, 0] > scales[:, 1]).any():
            raise _reject(RejectReason.BAD_SCALE, "a chunk range is NaN/Inf or has min > max")
        with np.errstate(over="ignore"):  # dequantize steps by (max - min) in float32
            if not np.isfinite(scales[:, 1] - scales[:, 0]).all():
                why = "a chunk range (max - min) overflows float32"
                raise _reject(RejectReason.BAD_SCALE, why)
        codes = unpack_uint(sections["codes"], bits, count)
        lo, hi = scales[:, 0].copy(), scales[:, 1].copy()
        return dequantize(Quantized(codes, lo, hi), bits, chunk)


SELECT_STAGE, TOPK, FLOAT32, QUANTIZE = SelectStage(), TopkStage(), Float32Stage(), QuantizeStage()
