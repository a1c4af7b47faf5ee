"""A trained chunk's updates: ``local - global`` per client in the wire's order, or their
weighted mean for a pooled upload (the engine's side of what the SDK's encoder subtracts)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from client_sdk.client_round import RoundPlan
from simulations.batched.training import TrainedChunk
from wire import TensorSpec


def trained_tensors(plan: RoundPlan, device: torch.device):
    """(name, spec, global tensor on ``device``, kept flat indices or None), in wire order."""
    for name, start in plan.global_arrays.items():
        if plan.frozen and name.startswith(plan.frozen):
            continue
        spec = TensorSpec(name=name, shape=tuple(int(d) for d in start.shape))
        keep = None
        if plan.masks is not None and name in plan.masks.masks:
            keep = torch.from_numpy(np.asarray(plan.masks.masks[name]).ravel()).to(device)
        yield name, spec, torch.from_numpy(start).to(device), keep


def local_minus_global(local: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """[k, ...] client updates ``local - global`` in the global model's dtype, bitwise the
    SDK's numpy subtraction (which promotes to that dtype)."""
    return local.to(reference.dtype) - reference


def _delta(local: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """[k, n] float32 :func:`local_minus_global`, one row per client."""
    k = local.shape[0]
    return local_minus_global(local, reference).to(torch.float32).reshape(k, -1)


def flat_deltas(
    chunk: TrainedChunk, plan: RoundPlan, device: torch.device
) -> tuple[np.ndarray, list[TensorSpec]]:
    """[K, kept] float32 rows of local - global in the wire's ``select`` order, on the host."""
    specs, columns = [], []
    for name, spec, reference, keep in trained_tensors(plan, device):
        flat = _delta(chunk.local[name], reference)
        specs.append(spec)
        columns.append(flat if keep is None else flat[:, keep])
    return torch.cat(columns, dim=1).cpu().numpy(), specs


# Rows per float32 partial sum of a pooled update (as strategies.aggregation.StreamingMean).
POOL_BLOCK = 64


def weighted_mean(
    rows: Callable[[slice], torch.Tensor], count: int, size: int, weights: torch.Tensor
) -> torch.Tensor:
    """``sum_k weights[k] * rows(k) / sum(weights)`` over ``count`` rows of ``size`` values,
    float32. Blocks of ``POOL_BLOCK`` rows are summed in float32 (one matrix-vector product
    each: no [K, n] weighted copy) and the blocks in float64."""
    acc = torch.zeros(size, dtype=torch.float64, device=weights.device)
    for start in range(0, count, POOL_BLOCK):
        part = slice(start, start + POOL_BLOCK)
        acc += torch.mv(rows(part).T, weights[part])
    return (acc / float(weights.double().sum())).to(torch.float32)


def pooled_delta(
    chunk: TrainedChunk, plan: RoundPlan, device: torch.device
) -> tuple[np.ndarray, list[TensorSpec], float]:
    """The K clients' updates averaged with their example counts (:func:`weighted_mean`):
    ([kept] float32 on the host, specs, total weight)."""
    counts = [s.num_examples for s in chunk.stats]
    weights = torch.tensor(counts, dtype=torch.float32, device=device)
    specs, means = [], []
    for name, spec, reference, keep in trained_tensors(plan, device):
        local = chunk.local[name]
        mean = weighted_mean(
            lambda part, local=local, reference=reference: _delta(local[part], reference),
            len(counts),
            reference.numel(),
            weights,
        )
        specs.append(spec)
        means.append(mean if keep is None else mean[keep])
    return torch.cat(means).cpu().numpy(), specs, float(sum(counts))
