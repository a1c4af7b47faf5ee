"""The batched engine's caches: each client's data, and stacked chunks of it on the device.

Client data is generated (or loaded) once per run and kept on the host; a chunk's stack
(unpadded) is kept on the device while it fits the budget, so a chunk of the same clients finds
its data there in the next round (chunks are formed in a stable order, :mod:`.chunks`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from flwr.app import ConfigRecord, Context

from client_sdk import ClientData, RoundPlan
from simulations.batched.training import ClientBatch, stack_clients
from wire import keys

# Without a budget given, the stacked chunks may take this share of the free device memory
# (CUDA), or of HOST_BYTES on a CPU.
DEVICE_SHARE, HOST_BYTES = 0.3, 2 << 30


def data_key(plan: RoundPlan) -> tuple:
    """What a client's data depends on in the round config: the task, seed and partition count
    (how the data is split is the run's own, fixed in the grid's data function)."""
    c = plan.config
    return tuple(c.get(key) for key in (keys.TASK, keys.SEED, keys.NUM_PARTITIONS))


class ClientCaches:
    """Client data by (data key, node) and device batches by (data key, layout, partitions)."""

    def __init__(
        self,
        data: Callable[[Context, ConfigRecord], ClientData],
        device: torch.device,
        budget_bytes: int | None = None,
    ) -> None:
        self._data = data
        self.device = device
        self.budget_bytes = budget_bytes  # None: see DEVICE_SHARE
        self._clients: dict[tuple, ClientData] = {}
        self._batches: dict[tuple, ClientBatch] = {}
        self.batch_bytes = 0

    def client_data(self, key: tuple, node: int, context: Context, plan: RoundPlan) -> ClientData:
        """Node ``node``'s data for ``plan`` (generated on first use)."""
        if (key, node) not in self._clients:
            self._clients[key, node] = self._data(context, plan.config)
        return self._clients[key, node]

    def device_batch(
        self, plan: RoundPlan, pids: list[int], data: list[ClientData], *, channels_last: bool
    ) -> ClientBatch:
        """The chunk of partitions ``pids`` stacked on the device (cached while it fits)."""
        key = (*data_key(plan), channels_last, *pids)
        if key in self._batches:
            return self._batches[key]
        batch = stack_clients(data, self.device, channels_last=channels_last, task=plan.task)
        if self.batch_bytes + batch.nbytes <= self._budget():
            self._batches[key] = batch
            self.batch_bytes += batch.nbytes
        return batch

    def drop_batches(self) -> None:
        """Free the device batches (after running out of device memory)."""
        self._batches.clear()
        self.batch_bytes = 0

    def _budget(self) -> int:
        if self.budget_bytes is not None:
            return self.budget_bytes
        if self.device.type == "cuda":
            return int(DEVICE_SHARE * torch.cuda.mem_get_info(self.device)[0])
        return int(DEVICE_SHARE * HOST_BYTES)
