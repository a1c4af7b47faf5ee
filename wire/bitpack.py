"""Bit-packing of unsigned integer codes, numpy-vectorized.

Format: value ``i`` occupies bits ``[i*width, (i+1)*width)`` of a little-endian bit stream
(least significant bit first), so for widths that divide 8 the first value sits in the lowest
bits of the first byte. A payload of ``count`` values is exactly ``ceil(count*width/8)`` bytes.
numpy's ``packbits``/``unpackbits`` only handle width 1, hence this module (widths 1..32).
"""

from __future__ import annotations

import numpy as np


def packed_size(count: int, width: int) -> int:
    """Bytes needed for ``count`` values of ``width`` bits."""
    return (count * width + 7) // 8


def pack_uint(values: np.ndarray, width: int) -> bytes:
    """Pack non-negative integers below ``2**width`` into a little-endian bit stream."""
    if not 1 <= width <= 32:
        raise ValueError(f"bit width must be in 1..32, got {width}")
    codes = np.ascontiguousarray(values, dtype=np.uint32).ravel()
    if codes.size and int(codes.max()) >> width:
        raise ValueError(f"a value does not fit in {width} bits")
    if 8 % width == 0:
        per_byte = 8 // width
        padded = np.zeros(-(-codes.size // per_byte) * per_byte, dtype=np.uint8)
        padded[: codes.size] = codes
        lanes = padded.reshape(-1, per_byte)
        out = np.zeros(lanes.shape[0], dtype=np.uint8)
        for lane in range(per_byte):
            out |= lanes[:, lane] << np.uint8(lane * width)
        return out.tobytes()
    shifts = np.arange(width, dtype=np.uint32)
    bits = ((codes[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(bits.ravel(), bitorder="little").tobytes()


def unpack_uint(buffer: bytes | memoryview, width: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_uint`; ``buffer`` must hold exactly ``packed_size`` bytes."""
    if not 1 <= width <= 32:
        raise ValueError(f"bit width must be in 1..32, got {width}")
    raw = np.frombuffer(buffer, dtype=np.uint8)
    if raw.size != packed_size(count, width):
        raise ValueError(f"{raw.size} bytes cannot hold exactly {count} values of {width} bits")
    if 8 % width == 0:
        per_byte = 8 // width
        mask = np.uint8((1 << width) - 1)
        lanes = [(raw >> np.uint8(lane * width)) & mask for lane in range(per_byte)]
        return np.stack(lanes, axis=1).ravel()[:count].astype(np.uint32)
    bits = np.unpackbits(raw, bitorder="little")[: count * width].reshape(count, width)
    weights = np.uint32(1) << np.arange(width, dtype=np.uint32)
    return (bits.astype(np.uint32) * weights).sum(axis=1, dtype=np.uint32)
