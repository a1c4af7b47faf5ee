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
from wire.header_ref import RoundHeaders, digest_of, header_of, row_layout
from wire.kept import TensorSpec, segment_lengths
from wire.mask import MaskSet

__all__ = ["encode_float32_rows", "encode_rows", "row_layout"]


def encode_rows(
    sections: Mapping[str, np.ndarray],
    specs: Sequence[TensorSpec],
    *,
    server_round: int,
    codec: CodecSpec,
    masks: MaskSet | None = None,
    rotation_seeds: Sequence[int] | None = None,
    reference: RoundHeaders | None = None,
) -> list[bytes]:
    """One payload per row of the ``sections`` arrays ([clients, ...], C-contiguous, row k's
    bytes are client k's section as :func:`encode_update` lays it out). ``rotation_seeds``:
    each client's seed when ``codec`` rotates per client (one header per distinct seed).
    ``reference``: the round's announced headers; a row whose header is the expected one for
    its seed sends the digest instead (v3), as :func:`encode_update` does."""
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
        header = header_of(server_round, specs, stages, layout)
        frames[seed] = payload_frame(header, _reference(header, reference, seed))
    views = [[memoryview(row).cast("B") for row in a] for a in arrays.values()]
    return [b"".join([frames[seed], *(rows[i] for rows in views)]) for i, seed in enumerate(seeds)]


def _reference(header: dict, reference: RoundHeaders | None, seed: int | None) -> bytes | None:
    """The digest a row with ``header`` sends (its own, as :func:`encode_update`'s), or None
    where the round announced nothing or expects another header (or none can be built)."""
    if reference is None or reference.digest is None:
        return None
    try:
        expected = reference.header_for_seed(seed)
    except ValueError:  # a per-client rotation without its seed: the full header
        return None
    return digest_of(header) if header == expected else None


def encode_float32_rows(
    rows: np.ndarray,
    specs: Sequence[TensorSpec],
    *,
    server_round: int,
    masks: MaskSet | None = None,
    reference: RoundHeaders | None = None,
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
        {"values": values},
        specs,
        server_round=server_round,
        codec=CodecSpec(),
        masks=masks,
        reference=reference,
    )
