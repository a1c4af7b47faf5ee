"""Compressed updates of K clients at once: the codec's chain of stage twins on the device.

The engine's one encoder for compressed uploads (uniform quantization, EDEN/DRIVE, EF-signSGD,
rotation, EDEN's fractional bits; with or without error feedback): each block's kept
coordinates (:func:`.codec.block_targets`: delta + residual, masked) run the codec's chain of
registered stage twins (:mod:`.stage_twins`, the vectorized twins of :mod:`wire.registry`'s
stages), :func:`wire.rows.encode_rows` makes the payloads, and error feedback stores each node's
residual as the SDK does (:func:`.codec.store_residuals`). Without rotation the payloads are the
SDK's byte for byte (``tests/simulations/batched/test_codec.py``, ``test_rotated.py``); the
rotation's BLAS products add in an order of their own, so rotated values agree with the SDK's
to float32 rounding (~1e-7 relative) and a code whose value sits on a boundary may differ.
Top-k, and a rotation before uniform quantization, stay with the SDK's encoder (:func:`handles`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from flwr.app import Context

from client_sdk.client_round import RoundPlan, partition_id_of
from simulations.batched.codec import (
    BlockTargets,
    DecodedChunk,
    EncodedBlock,
    block_targets,
    store_residuals,
)
from simulations.batched.memory import encode_block
from simulations.batched.stage_twins import TwinContext, TwinRun, run_twins, supported
from simulations.batched.training import TrainedChunk
from wire.kept import TensorSpec, segment_lengths
from wire.rows import encode_rows


def handles(plan: RoundPlan) -> bool:
    """Whether every stage of the round's codec has a twin (no top-k), and no rotation comes
    before uniform quantization (the SDK's numpy rotation keeps those codes exact)."""
    codec = plan.codec
    rotated_uniform = codec.scheme == "uniform" and codec.rotate != "none"
    return not codec.topk and supported(codec) and not rotated_uniform


def encode_chunk(
    plan: RoundPlan, contexts: list[Context], trained: TrainedChunk, device: torch.device
) -> Iterator[tuple[slice, EncodedBlock | None]]:
    """The payloads of K clients, block by block: (the block's rows, its payloads and, under
    error feedback, the norms of the residuals they carried in and of those they keep; each
    node's stored residual is updated). None for a block holding an update that is not finite:
    nothing of it is stored, and the caller lets the SDK's encoder handle those clients one by
    one, so that the server rejects exactly them."""
    block = encode_block(device)
    for start in range(0, len(contexts), block):
        rows = slice(start, start + block)
        local = {name: tensor[rows] for name, tensor in trained.local.items()}
        encoded = _run_block(plan, contexts[rows], local, device)
        if encoded is None:
            yield rows, None
            continue
        targets, run = encoded
        payloads = _payloads(plan, targets.specs, run.numpy_sections(), run.rotation_seeds)
        if not plan.error_feedback:
            yield rows, (payloads, targets.carried, [None] * len(payloads))
        else:
            kept = store_residuals(contexts[rows], targets, run.decoded())
            yield rows, (payloads, targets.carried, kept)


def decode_chunk(
    plan: RoundPlan, contexts: list[Context], trained: TrainedChunk, device: torch.device
) -> DecodedChunk | None:
    """What the server would decode from each of the K clients' payloads, without the
    payloads: ([K, kept] float32 on ``device``, the specs, one payload's size in bytes,
    carried and kept residual norms); each node's residual is stored as :func:`encode_chunk`
    stores it. None, with nothing stored, when an update is not finite."""
    step = encode_block(device)
    parts = [slice(start, start + step) for start in range(0, len(contexts), step)]
    runs = []
    for rows in parts:  # every block encoded before any residual is stored
        local = {name: tensor[rows] for name, tensor in trained.local.items()}
        runs.append(_run_block(plan, contexts[rows], local, device))
    if any(run is None for run in runs):
        return None
    sent, carried, kept = [], [], []
    for rows, (targets, run) in zip(parts, runs, strict=True):
        values = run.decoded()
        sent.append(values)
        carried += targets.carried
        if plan.error_feedback:
            kept += store_residuals(contexts[rows], targets, values)
        else:
            kept += [None] * len(targets.carried)
    targets, run = runs[0]
    first = {name: rows[:1].cpu().numpy() for name, rows in run.sections}
    seeds = None if run.rotation_seeds is None else run.rotation_seeds[:1]
    size = len(_payloads(plan, targets.specs, first, seeds)[0])  # one layout and size a round
    return torch.cat(sent), targets.specs, size, carried, kept


def _run_block(
    plan: RoundPlan, contexts: list[Context], local: dict[str, torch.Tensor], device: torch.device
) -> tuple[BlockTargets, TwinRun] | None:
    targets = block_targets(plan, contexts, local, device)
    if not bool(torch.isfinite(targets.kept).all()):
        return None
    seeds = plan.seeds_for([partition_id_of(c) for c in contexts])
    lengths = segment_lengths(targets.specs, plan.masks)
    nodes = [c.node_id for c in contexts]
    ctx = TwinContext(targets.specs, plan.masks, lengths, device, seeds=seeds, node_ids=nodes)
    return targets, run_twins(plan.codec, targets.kept, ctx)


def _payloads(
    plan: RoundPlan,
    specs: list[TensorSpec],
    sections: dict[str, np.ndarray],
    rotation_seeds: list[int] | None,
) -> list[bytes]:
    return encode_rows(
        sections,
        specs,
        server_round=plan.server_round,
        codec=plan.codec,
        masks=plan.masks,
        rotation_seeds=rotation_seeds,
        reference=plan.reference(specs),
    )
