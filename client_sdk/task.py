"""The Task: a learning problem described once, run on devices, in Flower's engine and batched.

A :class:`Task` bundles a model factory, a loss, the federated data source, the local optimizer
and the local schedule. Frozen, keyword-only dataclasses, one per component (nanoGPT's
``GPTConfig`` habit).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from client_sdk import metrics
from client_sdk.metrics import MetricsFn

# labels, number of partitions, rng -> one index array per partition
Partitioner = Callable[[np.ndarray, int, np.random.Generator], list[np.ndarray]]


class TaskConfigError(ValueError):
    """A Task, optimizer or data request was configured with an impossible value."""


def has_natural_partition(data: object) -> bool:
    """Whether a data source comes split per client already (``natural_partition = True``)."""
    return getattr(data, "natural_partition", False) is True


def check_partition_id(partition_id: int, num_partitions: int) -> None:
    """Refuse a partition id outside [0, num_partitions)."""
    if not 0 <= partition_id < num_partitions:
        raise TaskConfigError(
            f"partition-id {partition_id} is outside [0, num-partitions={num_partitions})"
        )


def check_natural_partition(
    dataset: str, partitioner: Partitioner | None, partition_id: int, num_partitions: int
) -> None:
    """Refuse a partitioner for a dataset that is generated per client, and a bad partition id."""
    if partitioner is not None:
        raise TaskConfigError(
            f"{dataset} has a natural partition (one generated dataset per client); use "
            "partition 'natural' instead of iid/dirichlet/shards"
        )
    check_partition_id(partition_id, num_partitions)


@dataclass(frozen=True)
class ClientData:
    """One client's local data: train split and local test split (numpy, float32/int64)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def num_train(self) -> int:
        return int(len(self.y_train))


class FederatedData(Protocol):
    """Where a Task's data comes from: a client's partition and the server's test set.

    A source whose clients each hold (or generate) their own data sets a class attribute
    ``natural_partition = True``: it is then run with partition ``natural``, never split by a
    partitioner. Arrays: ``x`` float32 (any feature shape the model takes), ``y`` int64 class
    labels (or float32 targets for a regression Task).
    """

    def client_data(
        self,
        partition_id: int,
        num_partitions: int,
        *,
        partitioner: Partitioner | None,
        seed: int,
    ) -> ClientData: ...

    def central_test(self, *, num_partitions: int, seed: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True, kw_only=True)
class OptimizerSpec:
    """Local optimizer: SGD (with optional momentum) or AdamW (Loshchilov & Hutter 2019)."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.0  # SGD only
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW only

    def __post_init__(self) -> None:
        if self.name not in ("sgd", "adamw"):
            raise TaskConfigError(f"optimizer name must be 'sgd' or 'adamw', got {self.name!r}")
        if not self.lr > 0:
            raise TaskConfigError(f"optimizer lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise TaskConfigError(f"SGD momentum must be in [0, 1), got {self.momentum}")

    def build(
        self, params: Iterator[nn.Parameter], *, lr: float | None = None
    ) -> torch.optim.Optimizer:
        rate = self.lr if lr is None else lr
        if self.name == "sgd":
            return torch.optim.SGD(
                params, lr=rate, momentum=self.momentum, weight_decay=self.weight_decay
            )
        return torch.optim.AdamW(params, lr=rate, betas=self.betas, weight_decay=self.weight_decay)


@dataclass(frozen=True, kw_only=True)
class Task:
    """A federated learning problem, described once for every runtime."""

    name: str
    model_fn: Callable[[], nn.Module]
    data: FederatedData
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy
    # (outputs, targets) of a whole evaluation set -> {name: value}; client_sdk.metrics has
    # classification (accuracy, top-k), regression (mse, mae) and next_token (perplexity)
    metrics_fn: MetricsFn = metrics.accuracy
    primary_metric: str = "accuracy"  # what summaries and plots follow (or "loss")
    higher_is_better: bool = True
    # the server's central evaluation of the global model, replacing the default (loss and
    # metrics_fn on data.central_test): model -> {name: value}
    evaluate_fn: Callable[[nn.Module], Mapping[str, float]] | None = None
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    local_epochs: int = 1
    batch_size: int = 32
    frozen: tuple[str, ...] = ()  # parameter-name prefixes kept fixed (e.g. a backbone), never sent

    def __post_init__(self) -> None:
        if self.local_epochs < 1:
            raise TaskConfigError(f"local_epochs must be >= 1, got {self.local_epochs}")
        if self.batch_size < 1:
            raise TaskConfigError(f"batch_size must be >= 1, got {self.batch_size}")

    def build_model(self, seed: int) -> nn.Module:
        """The model with initial weights drawn from ``seed`` (global RNG state is restored)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.model_fn()
