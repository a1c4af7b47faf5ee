"""EDEN/DRIVE and EF-signSGD updates for K clients at once, with the randomized Hadamard rotation.

The torch twins of :mod:`wire.rotation` (same Kronecker factors of the Hadamard matrix, same
signs: each client's rotation seed is drawn from the generator the SDK seeds, and its signs by
numpy on the host) and :mod:`wire.eden` (same centroids, float64 norms and inner products, one
float32 rounding per scale), over [K, n] rows on the engine's device; error feedback stores each
node's residual as the SDK does (:func:`.codec.store_residuals`). The rotation's BLAS products
add in an order of their own (numpy's and torch's kernels differ), so rotated values agree with
the SDK's to float32 rounding (~1e-7 relative) rather than bit for bit, and a code whose value
sits on a centroid boundary may differ; without rotation the payloads are the SDK's byte for
byte (``tests/simulations/batched/test_rotated.py`` checks both). Top-k, and a rotation before
uniform quantization, stay with the SDK's encoder.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from flwr.app import Context

from client_sdk.client_round import RoundPlan, partition_id_of
from simulations.batched.codec import (
    EncodedBlock,
    block_targets,
    pack_rows,
    store_residuals,
)
from simulations.batched.memory import encode_block
from simulations.batched.training import TrainedChunk
from wire.eden import boundaries, scale_chunk, table
from wire.rotation import (
    MAX_SEED,
    ROUNDS,
    block_for,
    factors,
    hadamard,
    padded_length,
    random_signs,
)
from wire.rows import encode_scaled_sign_rows


def handles(plan: RoundPlan) -> bool:
    """Whether this module encodes the round's updates (eden or sign, no top-k)."""
    return plan.codec.scheme in ("eden", "sign") and not plan.codec.topk


def fwht_rows(rows: torch.Tensor) -> torch.Tensor:
    """:func:`wire.rotation.fwht` in torch: unnormalized Walsh-Hadamard transform of [m, B]."""
    m, b = rows.shape
    out = rows.to(torch.float32)
    if b < 2:
        return out.clone()
    left = m
    for f in factors(b):
        right = b * m // (left * f)
        h = torch.from_numpy(np.array(hadamard(f))).to(rows.device)
        view = out.reshape(left, f, right)
        out = view.reshape(left, f) @ h if right == 1 else torch.matmul(h, view)
        left *= f
    return out.reshape(m, b)


def _norm(block: int) -> float:
    return float(np.float32(1.0 / np.sqrt(np.float64(block))))


def rotate_rows(values: torch.Tensor, signs: torch.Tensor, block: int) -> torch.Tensor:
    """Each row's ``R(x)`` ([k, n] -> [k, P]); ``signs`` [k or 1, ROUNDS, P] of +-1."""
    k, n = values.shape
    length = signs.shape[2]
    out = torch.zeros(k, length, dtype=torch.float32, device=values.device)
    out[:, :n] = values
    for r in range(signs.shape[1]):
        out = out * signs[:, r]
        out = fwht_rows(out.reshape(-1, block)).view(k, length) * _norm(block)
    return out


def unrotate_rows(
    rotated: torch.Tensor, signs: torch.Tensor, block: int, count: int
) -> torch.Tensor:
    k, length = rotated.shape
    out = rotated
    for r in reversed(range(signs.shape[1])):
        out = fwht_rows(out.reshape(-1, block)).view(k, length) * _norm(block)
        out = out * signs[:, r]
    return out[:, :count]


def _blocks(values: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    k, n = values.shape
    c = max(1, min(chunk, n))
    chunks = -(-n // c)
    padded = torch.zeros(k, chunks * c, dtype=torch.float32, device=values.device)
    padded[:, :n] = values
    counts = torch.full((chunks,), float(c), dtype=torch.float64, device=values.device)
    counts[-1] = n - (chunks - 1) * c
    return padded.view(k, chunks, c), counts


def eden_rows(
    values: torch.Tensor, bits: int, chunk: int, scale: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`wire.eden.eden_quantize` per row: codes [k, n] uint8, scales [k, chunks] f32."""
    k, n = values.shape
    device = values.device
    blocks, counts = _blocks(values, chunk)
    norm2 = blocks.to(torch.float64).square().sum(dim=2)
    factor = torch.where(
        norm2 > 0, counts.sqrt() / norm2.sqrt(), torch.zeros((), dtype=torch.float64, device=device)
    ).to(torch.float32)
    z = blocks * factor[:, :, None]
    codes = torch.zeros(z.shape, dtype=torch.uint8, device=device)
    for bound in boundaries(bits).tolist():  # float32 values, compared as float32
        codes += z >= torch.tensor(bound, dtype=torch.float32, device=device)
    q = torch.from_numpy(table(bits)).to(device)[codes.long()]
    q.view(k, -1)[:, n:] = 0
    dot = (blocks.to(torch.float64) * q.to(torch.float64)).sum(dim=2)
    zero = torch.zeros((), dtype=torch.float64, device=device)
    safe = torch.where(dot > 0, dot, torch.ones_like(dot))
    if scale == "unbiased":
        s = torch.where(dot > 0, norm2 / safe, zero)
    else:
        s = torch.where(dot > 0, dot / q.to(torch.float64).square().sum(dim=2), zero)
    return codes.view(k, -1)[:, :n], s.to(torch.float32)


def eden_values(codes: torch.Tensor, scales: torch.Tensor, bits: int, chunk: int) -> torch.Tensor:
    k, n = codes.shape
    out = torch.from_numpy(table(bits)).to(codes.device)[codes.long()]
    c = max(1, min(chunk, n))
    return out * scales.repeat_interleave(c, dim=1)[:, :n]


def sign_rows(values: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`wire.eden.sign_quantize` per row: 1-bit codes and mean-|x| scales."""
    blocks, counts = _blocks(values, chunk)
    l1 = blocks.abs().to(torch.float64).sum(dim=2)
    return (values >= 0).to(torch.uint8), (l1 / counts.clamp(min=1)).to(torch.float32)


def sign_values(codes: torch.Tensor, scales: torch.Tensor, chunk: int) -> torch.Tensor:
    k, n = codes.shape
    out = codes.to(torch.float32) * 2 - 1
    return out * scales.repeat_interleave(max(1, min(chunk, n)), dim=1)[:, :n]


def rotation_seeds(plan: RoundPlan, contexts: list[Context]) -> list[int] | None:
    """Each client's rotation seed as the SDK draws it (the first draw of its codec generator),
    the round's shared seed for everyone, or None without a rotation."""
    if plan.codec.rotate == "none":
        return None
    if plan.codec.rotate == "shared":
        return [plan.codec.rotate_seed] * len(contexts)
    seeds = plan.seeds_for([partition_id_of(c) for c in contexts])
    return [int(np.random.default_rng(s).integers(0, MAX_SEED)) for s in seeds]


def _signs(seeds: list[int], length: int, device: torch.device) -> torch.Tensor:
    """[k or 1, ROUNDS, length] signs of :func:`wire.rotation.rotate`, drawn on the host."""
    distinct = sorted(set(seeds))
    picked = distinct if len(distinct) == 1 else seeds  # shared: one row for every client
    signs = np.stack([random_signs(s, ROUNDS * length).reshape(ROUNDS, length) for s in picked])
    return torch.from_numpy(signs).to(device)


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
    codec = plan.codec
    targets = block_targets(plan, contexts, local, device)
    kept = targets.kept
    if not bool(torch.isfinite(kept).all()):
        return None
    count = kept.shape[1]
    seeds = rotation_seeds(plan, contexts)
    values, signs, rblock = kept, None, block_for(count, codec.rotate_block)
    if seeds is not None:
        signs = _signs(seeds, padded_length(count, rblock), device)
        values = rotate_rows(kept, signs, rblock)
    chunk = codec.quant_chunk if seeds is None else scale_chunk(codec, rblock)
    if codec.scheme == "eden":
        codes, scales = eden_rows(values, codec.quant_bits, chunk, codec.eden_scale)
    else:
        codes, scales = sign_rows(values, chunk)
    payloads = encode_scaled_sign_rows(
        scales.cpu().numpy(),
        pack_rows(codes, codec.quant_bits).cpu().numpy(),
        targets.specs,
        server_round=plan.server_round,
        codec=codec,
        masks=plan.masks,
        rotation_seeds=seeds,
    )
    if not plan.error_feedback:
        return payloads, targets.carried, [None] * len(contexts)
    if codec.scheme == "eden":
        sent = eden_values(codes, scales, codec.quant_bits, chunk)
    else:
        sent = sign_values(codes, scales, chunk)
    if signs is not None:
        sent = unrotate_rows(sent, signs, rblock, count)
    return payloads, targets.carried, store_residuals(contexts, targets, sent)
