"""Built-in task: Flower's tutorial CNN on CIFAR-shaped generated data (a speed benchmark).

The model is the CNN of Flower's PyTorch tutorial (LeCun-style: two 5x5 convolutions, three
linear layers, 62,006 parameters). Each client holds ``samples`` random 3x32x32 images with
random labels drawn from ``torch.Generator().manual_seed(partition_id)`` when the run seed is 0,
exactly the data of ``shared/bench/flower_baseline.py``, so simulation engines can be compared
with plain Flower on the same work. With ``sizes`` (``dirichlet:ALPHA`` or ``pareto:A``, see
:mod:`client_sdk.tasks.sizes`) client i holds its own skewed count instead, ``samples`` on
average. Labels are random: accuracy stays near 10 %; the task measures throughput, not learning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from client_sdk.task import (
    ClientData,
    OptimizerSpec,
    Partitioner,
    Task,
    TaskConfigError,
    check_natural_partition,
)
from client_sdk.tasks.sizes import SizeSpecError, client_sizes, parse_sizes

CLASSES, TEST_SAMPLES, CENTRAL_TEST_SAMPLES = 10, 10, 500


class TutorialCNN(nn.Module):
    """The CNN of Flower's "Get started with Flower and PyTorch" tutorial."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def _images(seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(count, 3, 32, 32, generator=generator)
    y = torch.randint(0, CLASSES, (count,), generator=generator)
    return x.numpy(), y.numpy()


MAX_SAMPLES = 100_000  # images a client generates (1.2 GB of float32 32x32 RGB)


@dataclass(frozen=True, kw_only=True)
class GeneratedImages:
    """A natural partition: each client generates its own ``samples`` images from its id."""

    natural_partition: ClassVar[bool] = True  # each client generates its own data
    samples: int = 50
    sizes: str = ""  # "": every client ``samples``; else a skewed distribution (.sizes)

    def __post_init__(self) -> None:
        if not 1 <= self.samples <= MAX_SAMPLES:
            raise TaskConfigError(
                f"tutorial-cnn needs 1 to {MAX_SAMPLES} samples per client (12 KiB each), got "
                f"{self.samples}"
            )
        if self.sizes:
            try:
                parse_sizes(self.sizes)
            except SizeSpecError as err:
                raise TaskConfigError(str(err)) from None

    def client_data(
        self,
        partition_id: int,
        num_partitions: int,
        *,
        partitioner: Partitioner | None,
        seed: int,
    ) -> ClientData:
        check_natural_partition("tutorial-cnn", partitioner, partition_id, num_partitions)
        count = self.samples
        if self.sizes:
            count = int(client_sizes(self.sizes, self.samples, num_partitions, seed)[partition_id])
        x, y = _images(partition_id + (seed << 32), count)
        x_test, y_test = _images(-(partition_id + 1) - (seed << 32), TEST_SAMPLES)
        return ClientData(x_train=x, y_train=y, x_test=x_test, y_test=y_test)

    def central_test(self, *, num_partitions: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return _images((1 << 62) + seed, CENTRAL_TEST_SAMPLES)


def tutorial_cnn_task(samples: int = 50, sizes: str = "") -> Task:
    return Task(
        name=f"tutorial-cnn-{samples}" + (f"-{sizes.replace(':', '-')}" if sizes else ""),
        model_fn=TutorialCNN,
        data=GeneratedImages(samples=samples, sizes=sizes),
        optimizer=OptimizerSpec(name="sgd", lr=0.01, momentum=0.9),
        local_epochs=1,
        batch_size=10,
    )
