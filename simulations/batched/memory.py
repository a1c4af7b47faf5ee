"""How many clients the batched engine trains per kernel, and how much memory that took.

K starts from an estimate (parameters, gradients, optimizer state and saved activations per
client, times a safety factor) against the device's free memory; on CUDA the peak actually
measured after each chunk replaces the estimate, and an out-of-memory error halves K and retries.
Written by hand: no library plans vmap batch sizes.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

SAFETY = 2.0  # headroom over the estimate (allocator fragmentation, temporaries)
FREE_FRACTION = 0.8  # share of free memory the engine lets itself use
# Clients per chunk on CPU: the fastest K for the tutorial CNN on the 2-core machine (larger K
# falls out of cache; benchmarks/README.md).
CPU_DEFAULT_CAP = 50
# Clients encoded together (quantized, masked, bit-packed: .encoder, .secure), per device
# type: on a CPU a small block's tensors stay in cache (whole chunks of fresh tensors encoded
# slower than numpy's client-by-client encoder; benchmarks/README.md); a GPU takes more.
ENCODE_BLOCK = {"cpu": 32, "cuda": 1024}


def encode_block(device: torch.device) -> int:
    """Clients per encoding block on ``device`` (:data:`ENCODE_BLOCK`; the CPU's elsewhere)."""
    return ENCODE_BLOCK.get(device.type, ENCODE_BLOCK["cpu"])


def available_bytes(device: torch.device) -> int:
    """Free memory on ``device``: CUDA's free bytes, or MemAvailable for the host."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def activation_bytes_per_sample(model: nn.Module, example: np.ndarray, im2col: bool = False) -> int:
    """Bytes of every module's output for one example (what autograd keeps for backward);
    with ``im2col``, also each ungrouped convolution's unfolded columns (the unfold layout)."""
    total = 0

    def hook(module, _inputs, output):
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.nbytes
            if im2col and isinstance(module, nn.Conv2d) and module.groups == 1:
                window = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                total += window * output.shape[-2] * output.shape[-1] * output.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(torch.from_numpy(np.asarray(example[:1], dtype=np.float32)))
    finally:
        for handle in handles:
            handle.remove()
    return total


@dataclass
class MemoryPlanner:
    """Chooses K; remembers the peak memory of the run."""

    device: torch.device
    fixed_k: int = 0  # --clients-per-batch; 0 = plan from free memory
    per_client_bytes: float = 0.0
    peak_bytes: int = 0
    history: list[int] = field(default_factory=list)

    def estimate(self, model: nn.Module, example: np.ndarray, batch_size: int, n_max: int) -> None:
        """First guess of one client's footprint: 6 model copies + data + activations."""
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        data = n_max * int(np.prod(example.shape[1:])) * 4 + n_max * 8
        # on CUDA the engine may pick the unfold layout, whose columns the first chunk must fit
        unfold = self.device.type == "cuda"
        activations = 3 * batch_size * activation_bytes_per_sample(model, example, unfold)
        self.per_client_bytes = max(
            self.per_client_bytes, SAFETY * (6 * params + data + activations)
        )

    def clients_per_chunk(self, waiting: int) -> int:
        if self.fixed_k > 0:
            return min(self.fixed_k, waiting)
        budget = FREE_FRACTION * available_bytes(self.device)
        k = int(budget // max(self.per_client_bytes, 1.0))
        if self.device.type != "cuda":
            k = min(k, CPU_DEFAULT_CAP)
        return max(1, min(k, waiting))

    def start_chunk(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device)
        return 0

    def end_chunk(self, k: int, allocated_before: int) -> None:
        """Record the chunk's peak; on CUDA, learn the true per-client footprint from it."""
        self.history.append(k)
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
            self.peak_bytes = max(self.peak_bytes, peak)
            used = max(peak - allocated_before, 1)
            self.per_client_bytes = 1.25 * used / k
        else:
            # ru_maxrss is in KiB on Linux: the process's peak resident memory
            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def shrink_after_oom(self, k: int) -> int:
        self.per_client_bytes *= 2
        if self.fixed_k:
            self.fixed_k = max(1, k // 2)
        return max(1, k // 2)
