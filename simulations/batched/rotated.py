"""EDEN/DRIVE and EF-signSGD updates for K clients at once, with the randomized Hadamard rotation.

The engine's encoder for eden and sign rounds: each block's kept coordinates run the codec's
chain of registered stage twins (:mod:`.stage_twins`: [rotate] then eden or sign, kernels in
:mod:`.rotation_rows`) on the engine's device, :func:`wire.rows.encode_rows` makes the payloads,
and error feedback stores each node's residual as the SDK does (:func:`.codec.store_residuals`).
The rotation's BLAS products add in an order of their own, so rotated values agree with the
SDK's to float32 rounding (~1e-7 relative) rather than bit for bit, and a code whose value sits
on a centroid boundary may differ; without rotation the payloads are the SDK's byte for byte
(``tests/simulations/batched/test_rotated.py`` checks both). Top-k, and a rotation before
uniform quantization, stay with the SDK's encoder.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from flwr.app import Context

from client_sdk.client_round import RoundPlan, partition_id_of
from simulations.batched.codec import (
    EncodedBlock,
    block_targets,
    store_residuals,
)
from simulations.batched.memory import encode_block
from simulations.batched.rotation_rows import (
    eden_rows,
    eden_values,
    fwht_rows,
    rotate_rows,
    sign_rows,
    sign_values,
    unrotate_rows,
)
from simulations.batched.stage_twins import TwinContext, run_twins
from simulations.batched.training import TrainedChunk
from wire.kept import segment_lengths
from wire.rows import encode_rows

# the kernels' names stay importable here
__all__ = [
    "eden_rows",
    "eden_values",
    "encode_rotated_chunk",
    "fwht_rows",
    "handles",
    "rotate_rows",
    "sign_rows",
    "sign_values",
    "unrotate_rows",
]


def handles(plan: RoundPlan) -> bool:
    """Whether this module encodes the round's updates (eden or sign, no top-k)."""
    return plan.codec.scheme in ("eden", "sign") and not plan.codec.topk


def encode_rotated_chunk(
    plan: RoundPlan, contexts: list[Context], trained: TrainedChunk, device: torch.device
) -> Iterator[tuple[slice, EncodedBlock | None]]:
    """:func:`.codec.encode_chunk` for eden and sign updates: (the block's rows, its payloads and
    residual norms, or None for a block holding an update that is not finite)."""
    block = encode_block(device)
    for start in range(0, len(contexts), block):
        rows = slice(start, start + block)
        local = {name: tensor[rows] for name, tensor in trained.local.items()}
        yield rows, _encode_block(plan, contexts[rows], local, device)


def _encode_block(
    plan: RoundPlan, contexts: list[Context], local: dict[str, torch.Tensor], device: torch.device
) -> EncodedBlock | None:
    targets = block_targets(plan, contexts, local, device)
    kept = targets.kept
    if not bool(torch.isfinite(kept).all()):
        return None
    seeds = plan.seeds_for([partition_id_of(c) for c in contexts])
    lengths = segment_lengths(targets.specs, plan.masks)
    ctx = TwinContext(targets.specs, plan.masks, lengths, device, seeds=seeds)
    run = run_twins(plan.codec, kept, ctx)
    payloads = encode_rows(
        run.numpy_sections(),
        targets.specs,
        server_round=plan.server_round,
        codec=plan.codec,
        masks=plan.masks,
        rotation_seeds=run.rotation_seeds,
    )
    if not plan.error_feedback:
        return payloads, targets.carried, [None] * len(contexts)
    return payloads, targets.carried, store_residuals(contexts, targets, run.decoded())
