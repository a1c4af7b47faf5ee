"""Which activation layout trains fastest on this device, measured on the run's first image chunk
(:class:`LayoutTuner`).

cuDNN's (or oneDNN's) speed for vmap's grouped convolutions depends on the memory layout, the
device and the algorithm its heuristics choose, and im2col + GEMM (:mod:`.unfold`) trades
memory for dense matrix products, so the engine times every layout of
:data:`~simulations.batched.training.LAYOUTS` instead of guessing (on CUDA; a CPU uses
:func:`~simulations.batched.training.default_layout`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

import torch

from client_sdk.client_round import RoundPlan
from simulations.batched import training
from simulations.batched.training import KERNELS, LAYOUTS, ClientBatch, default_layout

log = logging.getLogger(__name__)

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
# holds. 1024 costs a few training steps per candidate (benchmarks/README.md), run twice each
# (warm-up) in round 1 only.
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
    part = batch.head(k)
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


@dataclass
class LayoutTuner:
    """The activation layout the engine trains in, chosen once per run.

    At the first chunk, :func:`~simulations.batched.training.default_layout` (``POLLEN_LAYOUT``,
    or "packed" on a CPU); where it leaves the choice open (CUDA), ``layout`` stays None until
    :meth:`layout_for` times every layout on that chunk's images (:func:`pick_layout`), or
    picks "grouped" for inputs that are not images. :meth:`give_up_kernels` switches to vmap's
    own rules when Pollen's kernels cannot run the Task.
    """

    device: torch.device
    layout: str | None = None  # None: not chosen yet
    cudnn_benchmark: bool = False  # CUDA: the layout trains fastest in cuDNN's benchmark mode
    timings: dict[str, float] = field(default_factory=dict)  # pick_layout's, in seconds
    defaulted: bool = False  # default_layout was read

    def stored_channels_last(self) -> bool:
        """Whether a chunk's images are stacked channels-last (what the packed kernels read)."""
        self._default()
        return self.layout == "packed"

    def layout_for(self, plan: RoundPlan, batch: ClientBatch, seeds: list[int]) -> str:
        """The layout to train ``batch`` in (timing every layout first, once, on CUDA)."""
        self._default()
        if self.layout is None and batch.images:
            layout, self.cudnn_benchmark, times = pick_layout(plan, batch, seeds, self.device)
            self.timings = {name: round(t, 4) for name, t in times.items()}
            log.info("batched engine: layout %s (timed: %s)", layout, times)
            self.layout = layout
        elif self.layout is None:
            self.layout = "grouped"
        return self.layout

    def give_up_kernels(self, batch: ClientBatch, err: Exception) -> bool:
        """After ``err`` from Pollen's kernels on ``batch``'s images: use vmap's own rules
        ("grouped") and say so (True); False when no kernel of Pollen's ran."""
        if self.layout not in KERNELS or not batch.images:
            return False
        log.warning(
            "batched engine: the %s kernels could not run the Task (%s: %s); "
            "using vmap's own batching rules",
            self.layout,
            type(err).__name__,
            err,
        )
        self.layout = "grouped"
        return True

    def _default(self) -> None:
        if not self.defaulted:
            # a POLLEN_LAYOUT naming no layout is refused here (ValueError), at every chunk
            self.layout = default_layout(self.device) or None
            self.defaulted = True
