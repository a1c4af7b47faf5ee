"""Uniform b-bit quantization with per-chunk ranges; stochastic (unbiased) or nearest rounding.

Each chunk of ``chunk`` consecutive values is mapped onto ``2**bits`` evenly spaced levels
between its min and max. Stochastic rounding rounds up with probability equal to the fractional
position, so the dequantized value is an unbiased estimate of the input (QSGD, Alistarh et al.,
NeurIPS 2017; the per-chunk range follows its bucketing). Nearest rounding is deterministic and
has half the worst-case error. Error per value is at most one step ``(max - min)/(2**bits - 1)``
(stochastic) or half a step (nearest); a chunk whose range is so small (below ~1e-36) that the
step would underflow is sent as its minimum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ALLOWED_BITS = (1, 2, 4, 8)


@dataclass(frozen=True)
class Quantized:
    codes: np.ndarray  # unsigned ints in [0, 2**bits)
    lo: np.ndarray  # float32, one per chunk
    hi: np.ndarray  # float32, one per chunk


def num_chunks(count: int, chunk: int) -> int:
    return -(-count // chunk)


def quantize(
    values: np.ndarray,
    bits: int,
    chunk: int,
    rng: np.random.Generator | None,
) -> Quantized:
    """Quantize a flat float vector; ``rng=None`` selects nearest rounding."""
    if bits not in ALLOWED_BITS:
        raise ValueError(f"bits must be one of {ALLOWED_BITS}, got {bits}")
    v = np.asarray(values, dtype=np.float32).ravel()
    n, chunks = v.size, num_chunks(v.size, chunk)
    if n == 0:
        empty = np.zeros(0, np.float32)
        return Quantized(np.zeros(0, np.uint32), empty, empty)
    padded = np.empty(chunks * chunk, dtype=np.float32)
    padded[:n] = v
    padded[n:] = v[-1]
    blocks = padded.reshape(chunks, chunk)
    lo, hi = blocks.min(axis=1), blocks.max(axis=1)
    levels = (1 << bits) - 1
    span = hi - lo
    with np.errstate(over="ignore"):  # a subnormal span would overflow: cap the scale
        scale = np.divide(np.float32(levels), span, out=np.zeros_like(span), where=span > 0)
    np.minimum(scale, np.finfo(np.float32).max, out=scale)
    # position = (blocks - lo) * scale, rounded, in place (see dequantize on temporaries)
    blocks -= lo[:, None]
    blocks *= scale[:, None]
    if rng is None:
        np.rint(blocks, out=blocks)
    else:
        blocks += rng.random(blocks.shape, dtype=np.float32)
        np.floor(blocks, out=blocks)  # P(round up) = fractional part
    np.clip(blocks, 0, levels, out=blocks)
    return Quantized(
        codes=blocks.astype(np.uint8 if bits <= 8 else np.uint32).ravel()[:n], lo=lo, hi=hi
    )


def dequantize(q: Quantized, bits: int, chunk: int) -> np.ndarray:
    """Float32 values of the codes, chunk by chunk, computed in place in one buffer.

    Every fresh model-sized temporary costs page faults, which made up most of the server's
    decode of a small update (here and in ``unpack_uint``; benchmarks/README.md).
    """
    n = q.codes.size
    if n == 0:
        return np.zeros(0, np.float32)
    levels = (1 << bits) - 1
    chunks = q.lo.size
    out = np.empty(chunks * chunk, dtype=np.float32)
    out[:n] = q.codes
    out[n:] = 0
    blocks = out.reshape(chunks, chunk)
    blocks *= ((q.hi - q.lo) / np.float32(levels))[:, None]
    blocks += q.lo[:, None]
    return out[:n]
