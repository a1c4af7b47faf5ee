"""Which activation layout trains fastest on this device, measured on the round's first chunk.

cuDNN's (or oneDNN's) speed for vmap's grouped convolutions depends on the memory layout, the
device and the algorithm its heuristics choose, and im2col + GEMM (:mod:`.unfold`) trades
memory for dense matrix products, so the engine times every layout of
:data:`~simulations.batched.training.LAYOUTS` instead of guessing (on CUDA; a CPU uses
:func:`~simulations.batched.training.default_layout`).
"""

from __future__ import annotations

import contextlib
import time

import torch

from client_sdk.rounds import RoundPlan
from simulations.batched import training
from simulations.batched.training import LAYOUTS, ClientBatch

# layouts whose convolutions are cuDNN's on CUDA (unfold's are cuBLAS matrix products)
CUDNN_LAYOUTS = ("grouped", "channels-last", "packed")
BENCHMARK_SUFFIX = "+cudnn-benchmark"


@contextlib.contextmanager
def cudnn_benchmark(on: bool):
    """``torch.backends.cudnn.benchmark`` set to ``on`` for the block, then restored."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


# Clients pick_layout trains per candidate (CPU, CUDA). On a GPU a few hundred tutorial-CNN
# clients (2560 images a step) leave it mostly waiting on kernel launches, which would favour
# the layout with the fewest kernels, not the fastest one at the thousands of clients a round
# holds. 1024 took about 0.35 s per candidate at the last H100 run's speed (70 ms a step for
# 1000 clients), run twice each (warm-up) in round 1 only.
PROBE_CLIENTS = (256, 1024)


def pick_layout(
    plan: RoundPlan, batch: ClientBatch, seeds: list[int], device: torch.device
) -> tuple[str, bool, dict[str, float]]:
    """Time up to :data:`PROBE_CLIENTS` clients in every layout on ``device``: the fastest
    layout, whether it ran with cuDNN's benchmark mode, and every time.

    cuDNN's (or oneDNN's) speed for vmap's grouped convolutions depends on the memory layout,
    the device and the algorithm cuDNN's heuristics choose (its benchmark mode times them all
    per shape instead, which pays with these static shapes when the heuristics choose badly),
    and im2col + GEMM (:mod:`.unfold`) trades memory for dense matrix products, so the engine
    measures instead of guessing (once per run; every candidate gives the same training up to
    float rounding). On CUDA the cuDNN layouts are timed with benchmark mode on too, named
    ``layout + BENCHMARK_SUFFIX``. A layout that cannot run the model has no time.
    """
    k = min(len(seeds), PROBE_CLIENTS[device.type == "cuda"])
    part = ClientBatch(batch.x[:k], batch.y[:k], batch.sizes[:k])
    candidates = [(layout, False) for layout in LAYOUTS]
    if device.type == "cuda":
        candidates += [(layout, True) for layout in CUDNN_LAYOUTS]
    times: dict[str, float] = {}
    failed: dict[str, Exception] = {}
    for layout, benchmark in candidates + candidates:  # the first pass of each warms up
        name = layout + (BENCHMARK_SUFFIX if benchmark else "")
        if layout in failed:
            continue
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        try:
            with cudnn_benchmark(benchmark):
                training.train_clients(plan, part, seeds[:k], device, layout=layout)
        except (RuntimeError, TypeError, ValueError) as err:  # e.g. a model that .view()s
            if isinstance(err, torch.cuda.OutOfMemoryError):
                raise
            failed[layout] = err
            continue
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times[name] = time.perf_counter() - started
    if not times:
        raise failed["grouped"]
    best = min(times, key=times.__getitem__)
    return best.removesuffix(BENCHMARK_SUFFIX), best.endswith(BENCHMARK_SUFFIX), times
