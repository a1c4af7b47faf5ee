"""Which samples each of K clients trains on at each global step of the batched engine.

Client k's epochs follow one another from step 0 on, each its own shuffle, drawn from the
client's ``torch.Generator`` exactly as :func:`client_sdk.training.train_local` draws them, and
padded up to whole minibatches (the padding weighs zero). Only the shuffles are drawn client by
client (torch's generator has no batched form); the layout is built with whole-array numpy
operations, so almost all of its per-client cost is the shuffles themselves
(benchmarks/README.md).
"""

from __future__ import annotations

import numpy as np
import torch


def batch_schedule(
    sizes: np.ndarray, seeds: list[int], epochs: int, batch: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per global step: sample indices [S, K, B], weights [S, K, B]; and steps per client [K]."""
    k_count = len(sizes)
    per_epoch = -(-sizes // batch)
    steps = per_epoch * epochs
    padded = int(per_epoch.max()) * batch
    orders = np.zeros((k_count, epochs, padded), dtype=np.int64)
    for k, (n, seed) in enumerate(zip(sizes.tolist(), seeds, strict=True)):
        generator = torch.Generator().manual_seed(seed)  # as train_local draws its shuffles
        for epoch in range(epochs):
            orders[k, epoch, :n] = torch.randperm(n, generator=generator).numpy()
    position = np.arange(padded)
    used = position < (per_epoch * batch)[:, None, None]  # [K, 1, P]: each epoch's batches
    used = np.broadcast_to(used, orders.shape)
    real = np.broadcast_to(position < sizes[:, None, None], orders.shape)
    # the used slots of each client's epochs, back to back, from step 0 on
    place = np.arange(int(steps.max()) * batch) < (steps * batch)[:, None]  # [K, S * B]
    index = np.zeros(place.shape, dtype=np.int64)
    weight = np.zeros(place.shape, dtype=np.float32)
    index[place] = orders[used]
    weight[place] = real[used]
    shape = (k_count, int(steps.max()), batch)
    return (
        np.ascontiguousarray(index.reshape(shape).transpose(1, 0, 2)),
        np.ascontiguousarray(weight.reshape(shape).transpose(1, 0, 2)),
        steps,
    )
