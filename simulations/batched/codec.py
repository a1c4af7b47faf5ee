"""The update codec for K clients at once on the engine's device: quantize, pack, error feedback.

A torch port of :mod:`wire.quantize`, :mod:`wire.bitpack` (widths 1..32) and the SDK's
error feedback (:mod:`client_sdk.upload`) over [K, n] rows, written by hand because the wire
layer is numpy-only (devices run it without torch) while the batched engine keeps the trained
models on its device. Every step is the same IEEE float32 operation as numpy's, one kernel at a
time (no fused multiply-add; ``torch.round`` rounds half to even like ``np.rint``), dtypes
promote as numpy's do, and stochastic rounding uses each client's noise from the numpy
generator the SDK seeds (on CUDA computed on the device, :mod:`.pcg64`): each payload and
each stored residual is byte-for-byte the SDK's (``tests/simulations/batched/test_codec.py``).
The uniform quantization twin (:mod:`.stage_twins`) runs these kernels; :mod:`.encoder` runs a
round's chain of twins and stores residuals with :func:`store_residuals`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Context

from client_sdk.client_round import (
    RoundPlan,
    flat_norm,
    load_residual,
    store_flat_residual,
)
from simulations.batched.deltas import local_minus_global, trained_tensors
from simulations.batched.pcg64 import uniform_float32
from wire import TensorSpec
from wire.bitpack import packed_size
from wire.quantize import num_chunks


def quantize_rows(
    values: torch.Tensor, bits: int, chunk: int, noise: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes [K, n] uint8, lo and hi [K, chunks] of float32 rows, as ``wire.quantize`` does
    per row; ``noise`` [K, chunks, chunk] selects stochastic rounding, None nearest."""
    k, n = values.shape
    chunks = num_chunks(n, chunk)
    padded = torch.empty(k, chunks * chunk, dtype=torch.float32, device=values.device)
    padded[:, :n] = values
    padded[:, n:] = values[:, -1:]
    blocks = padded.view(k, chunks, chunk)
    lo, hi = blocks.amin(dim=2), blocks.amax(dim=2)
    levels = (1 << bits) - 1
    span = hi - lo
    scale = torch.where(span > 0, torch.full_like(span, levels) / span, torch.zeros_like(span))
    scale = scale.clamp(max=float(np.finfo(np.float32).max))  # a subnormal span overflows
    position = (blocks - lo[:, :, None]) * scale[:, :, None]
    codes = torch.round(position) if noise is None else torch.floor(position + noise)
    codes = codes.clamp_(0, levels).to(torch.uint8).view(k, -1)[:, :n]
    return codes, lo, hi


def dequantize_rows(
    codes: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int, chunk: int
) -> torch.Tensor:
    """Float32 values of the codes, as the server's ``wire.quantize.dequantize`` computes them."""
    k, n = codes.shape
    chunks = lo.shape[1]
    padded = torch.zeros(k, chunks * chunk, dtype=torch.float32, device=codes.device)
    padded[:, :n] = codes
    step = (hi - lo) / torch.tensor((1 << bits) - 1, dtype=torch.float32, device=lo.device)
    blocks = padded.view(k, chunks, chunk) * step[:, :, None]
    return (blocks + lo[:, :, None]).view(k, -1)[:, :n]


def pack_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """[K, packed] bytes of ``wire.bitpack.pack_uint`` for each row (widths 1..32; values must
    be below 2^bits). Widths dividing 8 OR whole codes into bytes; the others work, as
    ``pack_uint`` does, on groups of 8 values that fill ``bits`` bytes, one lane at a time."""
    if not 1 <= bits <= 32:
        raise ValueError(f"bit width must be in 1..32, got {bits}")
    k, n = codes.shape
    if 8 % bits == 0:
        per_byte = 8 // bits
        lanes = torch.zeros(
            k, packed_size(n, bits) * per_byte, dtype=torch.uint8, device=codes.device
        )
        lanes[:, :n] = codes
        lanes = lanes.view(k, -1, per_byte)
        out = lanes[:, :, 0].clone()
        for lane in range(1, per_byte):
            out |= lanes[:, :, lane] << (lane * bits)
        return out
    groups = -(-n // 8)
    lanes = torch.zeros(k, groups * 8, dtype=torch.int64, device=codes.device)
    lanes[:, :n] = codes
    lanes = lanes.view(k, groups, 8)
    rows = torch.zeros(k, groups, bits, dtype=torch.uint8, device=codes.device)
    for j in range(8):
        first, shift = (j * bits) >> 3, (j * bits) & 7
        word = lanes[:, :, j] << shift
        for byte in range(min((shift + bits + 7) >> 3, bits - first)):
            rows[:, :, first + byte] |= ((word >> (8 * byte)) & 0xFF).to(torch.uint8)
    return rows.view(k, -1)[:, : packed_size(n, bits)]


# payloads, residual norms carried in, residual norms kept (None: not error feedback)
EncodedBlock = tuple[list[bytes], list[float], list[float | None]]
# decoded values [K, kept], specs, one payload's bytes, carried and kept residual norms
DecodedChunk = tuple[torch.Tensor, list[TensorSpec], int, list[float], list[float | None]]

# devices whose stochastic-rounding noise is computed there (.pcg64); numpy's own loop on the
# host is faster than the port on a CPU (benchmarks/README.md)
DEVICE_DRAWS = {"cuda"}


def noise_rows(seeds: list[int], count: int, chunk: int, device: torch.device) -> torch.Tensor:
    """[K, chunks, chunk] float32: the first draws of ``np.random.default_rng(seed).random``
    per row, as the SDK's stochastic rounding takes them; computed on the device where
    :data:`DEVICE_DRAWS` says so (:mod:`.pcg64`), else drawn by numpy row by row (faster on a
    CPU)."""
    shape = (len(seeds), num_chunks(count, chunk), chunk)
    if device.type in DEVICE_DRAWS:
        return uniform_float32(seeds, shape[1] * shape[2], device).reshape(shape)
    noise = np.empty(shape, np.float32)
    for row, seed in zip(noise, seeds, strict=True):
        np.random.default_rng(seed).random(dtype=np.float32, out=row)
    return torch.from_numpy(noise).to(device)


@dataclass
class BlockTargets:
    """What a block of clients uploads before any codec runs: delta (+ residual), masked."""

    names: list[str]
    specs: list[TensorSpec]
    targets: list[torch.Tensor]  # [k, numel] per tensor, in its own dtype
    keeps: list[torch.Tensor | None]
    kept: torch.Tensor  # [k, n] float32: the kept coordinates, in select's order
    carried: list[float]  # norms of the residuals carried in (0.0 without error feedback)


def block_targets(
    plan: RoundPlan,
    contexts: list[Context],
    local: dict[str, torch.Tensor],
    device: torch.device,
) -> BlockTargets:
    """Each client's ``local - global`` (+ its stored residual under error feedback), masked as
    ``MaskSet.apply`` does, and its kept coordinates as one [k, n] float32 matrix."""
    feedback = plan.error_feedback
    names, specs, targets, keeps = [], [], [], []
    loaded = [load_residual(c.state) for c in contexts] if feedback else []
    stored = [tensors for _, tensors in loaded]
    for name, spec, reference, keep in trained_tensors(plan, device):
        target = local_minus_global(local[name], reference)
        if feedback:
            target = _add_residual(target, name, spec, stored)
        if plan.masks is not None and name in plan.masks.masks:  # MaskSet.apply: float32
            mask = torch.from_numpy(plan.masks.masks[name]).to(device)
            target = torch.where(mask, target, torch.zeros((), dtype=target.dtype, device=device))
            target = target.to(torch.float32)
        names.append(name)
        specs.append(spec)
        targets.append(target.reshape(len(contexts), -1))
        keeps.append(keep)
    kept = torch.cat(
        [
            (t if k is None else t[:, k]).to(torch.float32)
            for t, k in zip(targets, keeps, strict=True)
        ],
        dim=1,
    )
    carried = [flat_norm(flat) for flat, _ in loaded] if feedback else [0.0] * len(contexts)
    return BlockTargets(names, specs, targets, keeps, kept, carried)


def store_residuals(
    contexts: list[Context], block: BlockTargets, sent: torch.Tensor
) -> list[float | None]:
    """Each node's residual ``target - sent`` ([k, n] what the server decodes) is stored; the
    new residuals' norms."""
    return _store_residuals(contexts, block.names, block.specs, block.targets, block.keeps, sent)


def _add_residual(
    target: torch.Tensor, name: str, spec: TensorSpec, stored: list[dict[str, np.ndarray]]
) -> torch.Tensor:
    """delta + residual for the clients that kept one of this shape (numpy's promotion)."""
    has = [name in s and s[name].shape == spec.shape for s in stored]
    if not any(has):
        return target
    zeros = np.zeros(spec.shape, np.float32)
    residual = torch.from_numpy(
        np.stack([s[name] if h else zeros for s, h in zip(stored, has, strict=True)])
    )
    added = target + residual.to(target.device)
    flags = torch.tensor(has, device=target.device).view(-1, *[1] * len(spec.shape))
    return torch.where(flags, added, target)  # untouched where none was stored (keeps -0.0)


def _store_residuals(contexts, names, specs, targets, keeps, sent) -> list[float | None]:
    """residual = target - decode(payload), per tensor in its own dtype, kept as float32;
    the new residuals' norms."""
    parts, offset = [], 0
    for target, keep in zip(targets, keeps, strict=True):
        width = target.shape[1] if keep is None else int(keep.sum())
        values = sent[:, offset : offset + width]
        offset += width
        decoded = torch.zeros(target.shape, dtype=torch.float32, device=target.device)
        if keep is None:
            decoded = values
        else:
            decoded[:, keep] = values
        parts.append((target - decoded.to(target.dtype)).to(torch.float32))
    rows = torch.cat(parts, dim=1).cpu().numpy()
    shapes = [s.shape for s in specs]
    for context, row in zip(contexts, rows, strict=True):
        store_flat_residual(context.state, row, names, shapes)
    return [flat_norm(row) for row in rows]
