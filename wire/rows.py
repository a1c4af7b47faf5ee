"""Payloads for many clients at once (Pollen's batched simulation engine), one per row.

Each payload is byte-for-byte what :func:`wire.format.encode_update` writes for that client's
tensors; rows share one header, built once, since every client of a round sends the same
layout (same tensors, mask, codec and section sizes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from wire.bitpack import packed_size
from wire.codec import CodecSpec
from wire.format import payload_frame
from wire.mask import MaskSet
from wire.quantize import num_chunks
from wire.rotation import ROUNDS, block_for, padded_length
from wire.stages import TensorSpec, segment_lengths


def encode_float32_rows(
    rows: np.ndarray,
    specs: Sequence[TensorSpec],
    *,
    server_round: int,
    masks: MaskSet | None = None,
) -> list[bytes]:
    """Payloads for many clients' uncompressed updates at once, one per row of ``rows``.

    Row k holds client k's kept values (``select``'s order: tensors in ``specs`` order, pruned
    coordinates left out). Every payload is byte-for-byte what :func:`encode_update` writes for
    that client's tensors with the float32 codec; the header is built once for all of them.
    """
    count = sum(segment_lengths(specs, masks))
    if rows.ndim != 2 or rows.shape[1] != count:
        raise ValueError(f"rows must be [clients, {count}] kept values, got {rows.shape}")
    stages = [
        {
            "name": "select",
            "params": {"mask": "" if masks is None else masks.digest, "count": count},
        },
        {"name": "float32", "params": {}},
    ]
    frame = payload_frame(server_round, specs, stages, [("values", 4 * count)])
    rows = np.ascontiguousarray(rows, dtype="<f4")
    return [b"".join([frame, memoryview(row).cast("B")]) for row in rows]


def encode_quantized_rows(
    scales: np.ndarray,
    codes: np.ndarray,
    specs: Sequence[TensorSpec],
    *,
    server_round: int,
    codec: CodecSpec,
    masks: MaskSet | None = None,
) -> list[bytes]:
    """Payloads for many clients' quantized updates (no top-k), one per row.

    Row k of ``scales`` holds client k's (min, max) float32 pairs, chunk by chunk, and row k of
    ``codes`` its bit-packed codes, as :func:`encode_update` lays them out; quantizing them is the
    caller's (Pollen's batched engine does it on its device). The header is built once.
    """
    count = sum(segment_lengths(specs, masks))
    chunks, packed = num_chunks(count, codec.quant_chunk), packed_size(count, codec.quant_bits)
    if codec.topk or not codec.quant_bits:
        raise ValueError("encode_quantized_rows encodes quantized updates without top-k")
    if (
        scales.shape[1:] != (2 * chunks,)
        or codes.shape[1:] != (packed,)
        or len(scales) != len(codes)
    ):
        raise ValueError(
            f"rows must be [clients, {2 * chunks}] scales and [clients, {packed}] codes, "
            f"got {scales.shape} and {codes.shape}"
        )
    stages = [
        {
            "name": "select",
            "params": {"mask": "" if masks is None else masks.digest, "count": count},
        },
        {
            "name": "quantize",
            "params": {
                "bits": codec.quant_bits,
                "chunk": codec.quant_chunk,
                "rounding": "stochastic" if codec.stochastic else "nearest",
            },
        },
    ]
    frame = payload_frame(server_round, specs, stages, [("scales", 8 * chunks), ("codes", packed)])
    scales = np.ascontiguousarray(scales, dtype="<f4")
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    return [
        b"".join([frame, memoryview(s).cast("B"), memoryview(c)])
        for s, c in zip(scales, codes, strict=True)
    ]


def encode_scaled_sign_rows(
    scales: np.ndarray,
    codes: np.ndarray,
    specs: Sequence[TensorSpec],
    *,
    server_round: int,
    codec: CodecSpec,
    masks: MaskSet | None = None,
    rotation_seeds: Sequence[int] | None = None,
) -> list[bytes]:
    """Payloads for many clients' ``eden`` or ``sign`` updates (no top-k), one per row.

    Row k of ``scales`` holds client k's float32 scale per chunk and row k of ``codes`` its
    bit-packed codes, as :func:`encode_update` lays them out. ``rotation_seeds``: each client's
    rotation seed when ``codec.rotate`` is on (one header per distinct seed, so a shared
    rotation builds one). The values stage counts the rotated (padded) values.
    """
    if codec.topk or codec.scheme not in ("eden", "sign"):
        raise ValueError("encode_scaled_sign_rows encodes eden or sign updates without top-k")
    count = sum(segment_lengths(specs, masks))
    block = block_for(count, codec.rotate_block)
    rotated = codec.rotate != "none"
    values = padded_length(count, block) if rotated else count
    chunk = min(codec.quant_chunk, block) if rotated else codec.quant_chunk  # scale_chunk
    chunks, packed = num_chunks(values, chunk), packed_size(values, codec.quant_bits)
    if rotated != (rotation_seeds is not None) or (
        rotation_seeds is not None and len(rotation_seeds) != len(scales)
    ):
        raise ValueError("rotation_seeds: one per row when the codec rotates, else None")
    if scales.shape[1:] != (chunks,) or codes.shape[1:] != (packed,) or len(scales) != len(codes):
        raise ValueError(
            f"rows must be [clients, {chunks}] scales and [clients, {packed}] codes, "
            f"got {scales.shape} and {codes.shape}"
        )
    if codec.scheme == "eden":
        params = {"bits": codec.quant_bits, "chunk": chunk, "scale": codec.eden_scale}
    else:
        params = {"chunk": chunk}
    select = {"mask": "" if masks is None else masks.digest, "count": count}
    sections = [("scales", 4 * chunks), ("codes", packed)]
    frames: dict[int | None, bytes] = {}

    def frame(seed: int | None) -> bytes:
        if seed not in frames:
            stages = [{"name": "select", "params": select}]
            if seed is not None:
                rotate = {"seed": int(seed), "block": block, "rounds": ROUNDS}
                stages.append({"name": "rotate", "params": rotate})
            stages.append({"name": codec.scheme, "params": params})
            frames[seed] = payload_frame(server_round, specs, stages, sections)
        return frames[seed]

    scales = np.ascontiguousarray(scales, dtype="<f4")
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    seeds = rotation_seeds if rotation_seeds is not None else [None] * len(scales)
    return [
        b"".join([frame(seed), memoryview(s).cast("B"), memoryview(c)])
        for s, c, seed in zip(scales, codes, seeds, strict=True)
    ]
