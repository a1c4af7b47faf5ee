"""Payloads for many clients at once (Pollen's batched simulation engine), one per row.

Each payload is byte-for-byte what :func:`wire.format.encode_update` writes for that client's
tensors: the header comes from the same registered stages (:mod:`wire.registry`; each stage's
``header_params`` and ``layout``), built once per distinct rotation seed, since every client of
a round sends the same layout (same tensors, mask, codec and section sizes); the body sections
are the caller's rows (the batched engine computes them on its device with the stages' twins).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from wire.codec import CodecSpec
from wire.format import payload_frame
from wire.kept import TensorSpec, segment_lengths
from wire.mask import MaskSet
from wire.registry import encode_chain
from wire.stage_api import DecodeContext, EncodeContext


def row_layout(
    specs: Sequence[TensorSpec],
    *,
    codec: CodecSpec,
    masks: MaskSet | None = None,
    rotation_seed: int | None = None,
) -> tuple[list[dict], list[tuple[str, int]]]:
    """The header's stages and body sections (name, bytes) of every row's payload for ``codec``
    (a stage whose params depend on the values, top-k, is refused with a ValueError)."""
    lengths = segment_lengths(specs, masks)
    ctx = EncodeContext(specs, masks, lengths, rotation_seed=rotation_seed)
    check = DecodeContext(specs, masks, lengths)
    count, sections = sum(lengths), []
    for stage in encode_chain(codec):
        params = stage.header_params(codec, count, ctx)
        ctx.previous.append((stage.name, params))
        count, stage_sections = stage.layout(params, count, check)
        check = check.then(stage.name, params)
        sections += stage_sections
    return [{"name": n, "params": p} for n, p in ctx.previous], sections


def encode_rows(
    sections: Mapping[str, np.ndarray],
    specs: Sequence[TensorSpec],
    *,
    server_round: int,
    codec: CodecSpec,
    masks: MaskSet | None = None,
    rotation_seeds: Sequence[int] | None = None,
) -> list[bytes]:
    """One payload per row of the ``sections`` arrays ([clients, ...], C-contiguous, row k's
    bytes are client k's section as :func:`encode_update` lays it out). ``rotation_seeds``:
    each client's seed when ``codec`` rotates per client (one header per distinct seed)."""
    arrays = {name: np.ascontiguousarray(a) for name, a in sections.items()}
    clients = {len(a) for a in arrays.values()}
    if len(clients) != 1:
        raise ValueError(f"section rows disagree on the number of clients: {sorted(clients)}")
    (k,) = clients
    if rotation_seeds is not None and len(rotation_seeds) != k:
        raise ValueError(f"{len(rotation_seeds)} rotation seeds for {k} clients")
    seeds = list(rotation_seeds) if rotation_seeds is not None else [None] * k
    frames: dict[int | None, bytes] = {}
    for seed in dict.fromkeys(seeds):
        stages, layout = row_layout(specs, codec=codec, masks=masks, rotation_seed=seed)
        got = [(name, a[0].nbytes if k else 0) for name, a in arrays.items()]
        if k and got != layout:
            raise ValueError(f"rows hold sections {got}; the codec's stages need {layout}")
        frames[seed] = payload_frame(server_round, specs, stages, layout)
    views = [[memoryview(row).cast("B") for row in a] for a in arrays.values()]
    return [b"".join([frames[seed], *(rows[i] for rows in views)]) for i, seed in enumerate(seeds)]


def encode_float32_rows(
    rows: np.ndarray,
    specs: Sequence[TensorSpec],
    *,
    server_round: int,
    masks: MaskSet | None = None,
) -> list[bytes]:
    """Payloads for many clients' uncompressed updates at once, one per row of ``rows``.

    Row k holds client k's kept values (``select``'s order: tensors in ``specs`` order, pruned
    coordinates left out).
    """
    count = sum(segment_lengths(specs, masks))
    if rows.ndim != 2 or rows.shape[1] != count:
        raise ValueError(f"rows must be [clients, {count}] kept values, got {rows.shape}")
    values = np.ascontiguousarray(rows, dtype="<f4")
    return encode_rows(
        {"values": values}, specs, server_round=server_round, codec=CodecSpec(), masks=masks
    )
