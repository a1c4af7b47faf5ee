"""Torch kernels over [K, n] rows: the randomized Hadamard rotation, EDEN/DRIVE and scaled sign.

The torch twins of :mod:`wire.rotation` (same Kronecker factors of the Hadamard matrix, same
signs, drawn by numpy on the host) and :mod:`wire.eden` (same centroids, float64 norms and inner
products, one float32 rounding per scale). The rotation's BLAS products add in an order of their
own (numpy's and torch's kernels differ), so rotated values agree with the wire's to float32
rounding (~1e-7 relative) rather than bit for bit; the eden and sign kernels on given values are
the wire's bit for bit (``tests/simulations/batched/test_stage_twins.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from wire.eden import boundaries, table
from wire.rotation import ROUNDS, factors, hadamard, random_signs


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


def signs_rows(seeds: list[int], length: int, device: torch.device) -> torch.Tensor:
    """[k or 1, ROUNDS, length] signs of :func:`wire.rotation.rotate`, drawn on the host."""
    distinct = sorted(set(seeds))
    picked = distinct if len(distinct) == 1 else seeds  # shared: one row for every client
    signs = np.stack([random_signs(s, ROUNDS * length).reshape(ROUNDS, length) for s in picked])
    return torch.from_numpy(signs).to(device)
