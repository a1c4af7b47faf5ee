"""EDEN / DRIVE quantization (b bits + one scale per chunk) and EF-signSGD's scaled sign.

DRIVE (Vargaftik et al., "DRIVE: One-bit Distributed Mean Estimation", NeurIPS 2021) and EDEN
(Vargaftik et al., "EDEN: Communication-Efficient and Robust Distributed Mean Estimation for
Federated Learning", ICML 2022) send, after a random rotation (:mod:`wire.rotation`), each
coordinate as the index of its nearest centroid and one float32 scale per vector (here: per
chunk of ``chunk`` values). A rotated vector's coordinates are close to N(0, ||x||^2 / d), so the
centroids are the Lloyd-Max quantizer of a standard normal (1 bit: +-sqrt(2/pi); 2 and 4 bits:
``CENTROIDS``) applied to ``z = x sqrt(d) / ||x||``. With ``q`` the centroids picked, the decoded
chunk is ``S q`` where

- ``scale="unbiased"``: ``S = ||x||^2 / <x, q>`` (EDEN/DRIVE's unbiased scale: ``<S q, x> =
  ||x||^2`` exactly, so after a uniformly random rotation the estimate is unbiased; a chunk's
  scale keeps this, as ``sum_c <S_c q_c, x_c> = ||x||^2``). Averaging many clients' estimates
  then shrinks the error (1 bit: normalized variance pi/2 - 1 per client);
- ``scale="mse"``: ``S = <x, q> / ||q||^2``, the least-squares scale (biased, 1 bit: normalized
  error 1 - 2/pi), meant for error feedback.

``sign`` is EF-signSGD's compressor (Karimireddy et al., "Error Feedback Fixes SignSGD and other
Gradient Compression Schemes", ICML 2019): ``(||x||_1 / d) sign(x)`` per chunk (one chunk of the
whole vector is the paper's), 1 bit per value, used with error feedback; without a rotation.

Norms and inner products are summed in float64 and each scale rounded once to float32. Body:
``scales`` (float32 per chunk) then ``codes`` (bit-packed, :mod:`wire.bitpack`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from wire.bitpack import pack_uint, packed_size, unpack_uint
from wire.errors import RejectReason, UpdateRejected
from wire.stage_api import VALUES, DecodeContext, EncodeContext, Encoded, Params

if TYPE_CHECKING:
    from wire.codec import CodecSpec

EDEN_BITS = (1, 2, 4)
SCALES = ("unbiased", "mse")
MAX_CHUNK = 1 << 24
# Lloyd-Max centroids of N(0, 1), positive half (tests/wire/test_eden.py recomputes them)
CENTROIDS = {
    1: (0.7978846,),
    2: (0.4527800, 1.5104176),
    4: (0.1283950, 0.3880482, 0.6567591, 0.9423404, 1.2562312, 1.6180460, 2.0690172, 2.7325896),
}


def table(bits: int) -> np.ndarray:
    """All ``2**bits`` centroids, ascending (float32)."""
    half = np.asarray(CENTROIDS[bits], dtype=np.float32)
    return np.concatenate([-half[::-1], half])


def boundaries(bits: int) -> np.ndarray:
    """Midpoints between consecutive centroids (float32): code = how many are <= z."""
    t = table(bits)
    return ((t[:-1] + t[1:]) / np.float32(2)).astype(np.float32)


def centroid_codes(z: np.ndarray, bits: int) -> np.ndarray:
    """uint8 index of each value's nearest centroid: how many boundaries are <= z (one
    comparison pass per boundary: 15 at 4 bits, faster than ``np.searchsorted`` on numpy)."""
    bounds = boundaries(bits)
    codes = np.greater_equal(z, bounds[0]).view(np.uint8)
    if bounds.size > 1:
        codes = codes.copy()
        for bound in bounds[1:]:
            codes += np.greater_equal(z, bound).view(np.uint8)
    return codes


def num_chunks(count: int, chunk: int) -> int:
    return -(-count // chunk)


def _blocks(values: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Values as [chunks, c] zero-padded rows (c = min(chunk, n)) and each row's real count."""
    v = np.asarray(values, dtype=np.float32).ravel()
    n = v.size
    c = max(1, min(chunk, n))
    chunks = num_chunks(n, c)
    padded = np.zeros(chunks * c, dtype=np.float32)
    padded[:n] = v
    counts = np.full(chunks, c, dtype=np.float64)
    if chunks:
        counts[-1] = n - (chunks - 1) * c
    return padded.reshape(chunks, c), counts


def eden_quantize(
    values: np.ndarray, bits: int, chunk: int, scale: str
) -> tuple[np.ndarray, np.ndarray]:
    """(codes uint8 [n], scales float32 [chunks]) of a flat float vector."""
    if bits not in EDEN_BITS or scale not in SCALES:
        raise ValueError(f"eden needs bits in {EDEN_BITS} and scale in {SCALES}")
    n = np.asarray(values).size
    blocks, counts = _blocks(values, chunk)
    norm2 = np.square(blocks, dtype=np.float64).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(norm2 > 0, np.sqrt(counts) / np.sqrt(norm2), 0.0).astype(np.float32)
    z = blocks * factor[:, None]
    codes = centroid_codes(z, bits)
    q = table(bits)[codes].ravel()
    q[n:] = 0  # padding is not sent
    q = q.reshape(blocks.shape)
    dot = np.multiply(blocks, q, dtype=np.float64).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if scale == "unbiased":
            s = np.where(dot > 0, norm2 / dot, 0.0)
        else:
            s = np.where(dot > 0, dot / np.square(q, dtype=np.float64).sum(axis=1), 0.0)
    return codes.ravel()[:n], s.astype(np.float32)


def eden_dequantize(codes: np.ndarray, scales: np.ndarray, bits: int, chunk: int) -> np.ndarray:
    """Float32 ``S q`` chunk by chunk."""
    n = codes.size
    out = table(bits)[codes]
    if n:
        c = max(1, min(chunk, n))
        out *= np.repeat(scales, c)[:n]
    return out


def sign_quantize(values: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """(1-bit codes, 1 where value >= 0; scales = mean |x| per chunk, float32)."""
    v = np.asarray(values, dtype=np.float32).ravel()
    blocks, counts = _blocks(v, chunk)
    l1 = np.abs(blocks).sum(axis=1, dtype=np.float64)
    return (v >= 0).astype(np.uint8), (l1 / np.maximum(counts, 1)).astype(np.float32)


def sign_dequantize(codes: np.ndarray, scales: np.ndarray, chunk: int) -> np.ndarray:
    n = codes.size
    out = codes.astype(np.float32) * np.float32(2) - np.float32(1)
    if n:
        out *= np.repeat(scales, max(1, min(chunk, n)))[:n]
    return out


# ----------------------------------------------------------------------------- the stages
def _exact_params(stage: str, params: Mapping[str, Any], names: frozenset[str]) -> None:
    if set(params) != names:
        raise UpdateRejected(
            RejectReason.BAD_HEADER,
            f"{stage} needs exactly the params {sorted(names)}, got {sorted(map(str, params))}",
        )


def _check_chunk(stage: str, chunk: Any) -> None:
    if type(chunk) is not int or not 1 <= chunk <= MAX_CHUNK:
        raise UpdateRejected(
            RejectReason.BAD_HEADER, f"{stage} chunk {chunk!r} is not an int in [1, 2^24]"
        )


def _scales(section: memoryview, largest: float) -> np.ndarray:
    scales = np.frombuffer(section, dtype="<f4").astype(np.float32)
    if not np.isfinite(scales).all() or (scales < 0).any():
        raise UpdateRejected(RejectReason.BAD_SCALE, "a chunk scale is NaN, Inf or negative")
    with np.errstate(over="ignore"):
        if not np.isfinite(scales * np.float32(largest)).all():
            raise UpdateRejected(RejectReason.BAD_SCALE, "a chunk scale overflows float32")
    return scales


def scale_chunk(codec: CodecSpec, block: int) -> int:
    """Values per eden/sign scale after a rotation in blocks of ``block``: at most one block.
    Each block is rotated on its own, so a scale spanning blocks of unequal energy is no longer
    rotation-equivariant and EDEN's unbiased scale turns biased (300 values with 5 spikes in
    blocks of 64 under one scale: the mean of 1000 estimates missed x by 1.2 ||x||)."""
    return min(codec.quant_chunk, block)


def _chunk(codec: CodecSpec, ctx: EncodeContext) -> int:
    rotate, subset = ctx.params_of("rotate"), ctx.params_of("subsample")
    if subset is not None:  # a block's sent values: one block's share of it (wire.subsample)
        return scale_chunk(codec, subset["keep"])
    return codec.quant_chunk if rotate is None else scale_chunk(codec, rotate["block"])


class EdenStage:
    """Encode/decode pair ``eden``: params ``{"bits", "chunk", "scale"}``; sections ``scales``
    (4 bytes per chunk) and ``codes`` (``bits`` per value)."""

    name, slot = "eden", VALUES
    params = frozenset({"bits", "chunk", "scale"})

    def wanted(self, codec: CodecSpec) -> bool:
        return codec.scheme == "eden"

    def header_params(self, codec: CodecSpec, count: int, ctx: EncodeContext) -> Params:
        return {"bits": codec.quant_bits, "chunk": _chunk(codec, ctx), "scale": codec.eden_scale}

    def encode(self, values: np.ndarray, codec: CodecSpec, ctx: EncodeContext) -> Encoded:
        params = self.header_params(codec, values.size, ctx)
        bits = params["bits"]
        codes, scales = eden_quantize(values, bits, params["chunk"], params["scale"])
        body = [("scales", scales.astype("<f4").tobytes()), ("codes", pack_uint(codes, bits))]
        return Encoded(None, params, body)

    def layout(
        self, params: Mapping[str, Any], count: int, ctx: DecodeContext
    ) -> tuple[int, list[tuple[str, int]]]:
        _exact_params(self.name, params, self.params)
        bits, chunk, scale = params["bits"], params["chunk"], params["scale"]
        if type(bits) is not int or bits not in EDEN_BITS:
            raise UpdateRejected(
                RejectReason.BAD_BIT_WIDTH, f"eden bit width {bits!r} is not one of {EDEN_BITS}"
            )
        _check_chunk(self.name, chunk)
        if type(scale) is not str or scale not in SCALES:
            raise UpdateRejected(
                RejectReason.BAD_HEADER, f"eden scale {str(scale)[:50]!r} is not one of {SCALES}"
            )
        return 0, [("scales", 4 * num_chunks(count, chunk)), ("codes", packed_size(count, bits))]

    def decode(self, params, sections, values, count, ctx) -> np.ndarray:
        bits, chunk = params["bits"], params["chunk"]
        scales = _scales(sections["scales"], float(CENTROIDS[bits][-1]))
        codes = unpack_uint(sections["codes"], bits, count)
        return eden_dequantize(codes, scales, bits, chunk)


class SignStage:
    """Encode/decode pair ``sign`` (EF-signSGD): params ``{"chunk"}``; sections ``scales``
    (4 bytes per chunk) and ``codes`` (1 bit per value)."""

    name, slot = "sign", VALUES
    params = frozenset({"chunk"})

    def wanted(self, codec: CodecSpec) -> bool:
        return codec.scheme == "sign"

    def header_params(self, codec: CodecSpec, count: int, ctx: EncodeContext) -> Params:
        return {"chunk": _chunk(codec, ctx)}

    def encode(self, values: np.ndarray, codec: CodecSpec, ctx: EncodeContext) -> Encoded:
        params = self.header_params(codec, values.size, ctx)
        codes, scales = sign_quantize(values, params["chunk"])
        return Encoded(
            None,
            params,
            [("scales", scales.astype("<f4").tobytes()), ("codes", pack_uint(codes, 1))],
        )

    def layout(
        self, params: Mapping[str, Any], count: int, ctx: DecodeContext
    ) -> tuple[int, list[tuple[str, int]]]:
        _exact_params(self.name, params, self.params)
        _check_chunk(self.name, params["chunk"])
        return 0, [
            ("scales", 4 * num_chunks(count, params["chunk"])),
            ("codes", packed_size(count, 1)),
        ]

    def decode(self, params, sections, values, count, ctx) -> np.ndarray:
        scales = _scales(sections["scales"], 1.0)
        return sign_dequantize(unpack_uint(sections["codes"], 1, count), scales, params["chunk"])


EDEN = EdenStage()
SIGN = SignStage()
