"""Top-k sparsification and a compact index coding.

Top-k keeps the k largest-magnitude coordinates (Stich, Cordonnier & Jaggi, NeurIPS 2018;
Lin et al., "Deep Gradient Compression", ICLR 2018), to be used with error feedback. The kept
positions are coded per tensor segment with whichever is smaller: a bitmap (one bit per
coordinate) or the gaps between consecutive positions bit-packed at the width of the largest
gap. Either beats 32-bit indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from wire.bitpack import pack_uint, packed_size, unpack_uint

BITMAP, GAPS = 0, 1


def topk_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Sorted positions of the ``k`` largest |values| (ties broken by position, stable)."""
    n = values.size
    if k >= n:
        return np.arange(n, dtype=np.int64)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    magnitude = np.abs(values)
    threshold = np.partition(magnitude, n - k)[n - k]
    above = np.flatnonzero(magnitude > threshold)
    ties = np.flatnonzero(magnitude == threshold)[: k - above.size]
    return np.sort(np.concatenate([above, ties])).astype(np.int64)


@dataclass(frozen=True)
class SegmentCode:
    """How one tensor segment's positions are coded: [coding, width, count, nbytes]."""

    coding: int
    width: int
    count: int
    nbytes: int

    def as_list(self) -> list[int]:
        return [self.coding, self.width, self.count, self.nbytes]


def expected_nbytes(coding: int, width: int, count: int, length: int) -> int:
    if coding == BITMAP:
        return packed_size(length, 1)
    return packed_size(count, width)


def encode_positions(
    positions: np.ndarray, lengths: Sequence[int]
) -> tuple[list[bytes], list[SegmentCode]]:
    """Code sorted global positions into per-segment bytes (segments of ``lengths``)."""
    parts: list[bytes] = []
    codes: list[SegmentCode] = []
    start = 0
    bounds = np.searchsorted(positions, np.cumsum(lengths))
    first = 0
    for length, last in zip(lengths, bounds, strict=True):
        local = positions[first:last] - start
        first, start = last, start + length
        count = local.size
        bitmap_bytes = packed_size(length, 1)
        gaps = np.diff(local, prepend=-1) - 1 if count else np.zeros(0, np.int64)
        width = max(1, int(gaps.max()).bit_length()) if count else 1
        if count and packed_size(count, width) < bitmap_bytes:
            parts.append(pack_uint(gaps.astype(np.uint32), width))
            codes.append(SegmentCode(GAPS, width, count, packed_size(count, width)))
        else:
            bitmap = np.zeros(length, dtype=np.uint8)
            bitmap[local] = 1
            parts.append(np.packbits(bitmap, bitorder="little").tobytes())
            codes.append(SegmentCode(BITMAP, 1, count, bitmap_bytes))
    return parts, codes


def decode_positions(
    buffer: memoryview, codes: Sequence[SegmentCode], lengths: Sequence[int]
) -> np.ndarray:
    """Inverse of :func:`encode_positions`; raises ValueError on any inconsistency."""
    out: list[np.ndarray] = []
    offset = start = 0
    for code, length in zip(codes, lengths, strict=True):
        chunk = buffer[offset : offset + code.nbytes]
        offset += code.nbytes
        if code.coding == BITMAP:
            bits = np.unpackbits(np.frombuffer(chunk, np.uint8), bitorder="little")
            if bits[length:].any():
                raise ValueError("bitmap has bits set past the end of its tensor")
            local = np.flatnonzero(bits[:length])
            if local.size != code.count:
                raise ValueError(f"bitmap marks {local.size} positions, header says {code.count}")
        else:
            gaps = unpack_uint(chunk, code.width, code.count).astype(np.int64)
            local = np.cumsum(gaps + 1) - 1
            if local.size and local[-1] >= length:
                raise ValueError(f"a position {local[-1]} is past the tensor's {length} values")
        out.append(local + start)
        start += length
    return np.concatenate(out) if out else np.zeros(0, np.int64)
