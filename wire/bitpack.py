"""Bit-packing of unsigned integer codes, numpy-vectorized.

Format: value ``i`` occupies bits ``[i*width, (i+1)*width)`` of a little-endian bit stream
(least significant bit first), so for widths that divide 8 the first value sits in the lowest
bits of the first byte. A payload of ``count`` values is exactly ``ceil(count*width/8)`` bytes.
numpy's ``packbits``/``unpackbits`` only handle width 1, hence this module (widths 1..32).
Other widths work on groups of 8 values, which fill exactly ``width`` bytes: value ``j`` of
every group starts at the same bit ``j*width`` of its group and spans at most 5 bytes (width +
7 <= 39 bits), so unpacking reads one strided 64-bit word per lane and packing ORs each lane's
bytes into fixed columns: 8 vector operations per lane instead of one per bit.
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
    small = width <= 8 and np.asarray(values).dtype == np.uint8  # no uint32 copy needed
    codes = np.ascontiguousarray(values, dtype=np.uint8 if small else np.uint32).ravel()
    if codes.size and int(codes.max()) >> width:
        raise ValueError(f"a value does not fit in {width} bits")
    if width == 8:
        return codes.astype(np.uint8, copy=False).tobytes()
    if 8 % width == 0:
        per_byte = 8 // width
        padded = np.zeros(-(-codes.size // per_byte) * per_byte, dtype=np.uint8)
        padded[: codes.size] = codes
        lanes = padded.reshape(-1, per_byte)
        out = np.zeros(lanes.shape[0], dtype=np.uint8)
        for lane in range(per_byte):
            out |= lanes[:, lane] << np.uint8(lane * width)
        return out.tobytes()
    groups = -(-codes.size // 8)
    lanes = np.zeros(groups * 8, dtype=np.uint64)
    lanes[: codes.size] = codes
    lanes = lanes.reshape(groups, 8)
    rows = np.zeros((groups, width), dtype=np.uint8)
    for j in range(8):
        first, shift = (j * width) >> 3, (j * width) & 7
        word = lanes[:, j] << np.uint64(shift)
        for k in range(min((shift + width + 7) >> 3, width - first)):
            rows[:, first + k] |= ((word >> np.uint64(8 * k)) & np.uint64(0xFF)).astype(np.uint8)
    return rows.tobytes()[: packed_size(codes.size, width)]


def unpack_uint(buffer: bytes | memoryview, width: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_uint`; ``buffer`` must hold exactly ``packed_size`` bytes.

    uint8 values for widths that divide 8, uint32 for the others."""
    if not 1 <= width <= 32:
        raise ValueError(f"bit width must be in 1..32, got {width}")
    raw = np.frombuffer(buffer, dtype=np.uint8)
    if raw.size != packed_size(count, width):
        raise ValueError(f"{raw.size} bytes cannot hold exactly {count} values of {width} bits")
    if width == 8:
        return raw.copy()
    if 8 % width == 0:  # into one uint8 array (fresh temporaries fault pages: see dequantize)
        per_byte = 8 // width
        out = np.empty((raw.size, per_byte), dtype=np.uint8)
        mask = np.uint8((1 << width) - 1)
        for lane in range(per_byte):
            np.bitwise_and(raw >> np.uint8(lane * width), mask, out=out[:, lane])
        return out.ravel()[:count]
    if count == 0:
        return np.zeros(0, dtype=np.uint32)
    groups = -(-count // 8)
    padded = np.zeros(groups * width + 8, dtype=np.uint8)  # 8 spare bytes for the last reads
    padded[: raw.size] = raw
    out = np.empty((groups, 8), dtype=np.uint32)
    mask = np.uint64((1 << width) - 1)
    for j in range(8):
        bit = j * width
        words = np.ndarray((groups,), dtype="<u8", buffer=padded, offset=bit >> 3, strides=(width,))
        out[:, j] = (words >> np.uint64(bit & 7)) & mask
    return out.ravel()[:count]
