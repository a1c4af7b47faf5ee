"""The two tasks of benchmarks/privacy.py: a run's shape (clients, cohort, rounds, clip) per task.

``blobs`` is generated offline by scikit-learn's ``make_classification`` (Guyon's Madelon
design: clusters on the vertices of a hypercube), seeded, so Pollen's runs and the plain-Flower
baseline see the same points.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from torch import nn

from client_sdk import OptimizerSpec, Task, from_arrays
from client_sdk.tasks import get_task


def blobs_model() -> nn.Module:
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5))


@lru_cache(maxsize=1)
def blobs_task() -> Task:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=20_000,
        n_features=20,
        n_informative=10,
        n_redundant=4,
        n_classes=5,
        n_clusters_per_class=2,
        class_sep=1.0,
        random_state=0,
    )
    return Task(
        name="blobs",
        model_fn=blobs_model,
        data=from_arrays(x.astype(np.float32), y.astype(np.int64), test_fraction=0.2),
        optimizer=OptimizerSpec(name="sgd", lr=0.1, momentum=0.9),
        local_epochs=2,
        batch_size=16,
    )


@dataclass(frozen=True)
class TaskSpec:
    name: str
    reference: str  # a built-in task name, or "blobs"
    partition: str
    clients: int
    per_round: int
    rounds: int
    clip: float  # dp-clip of every DP row (and of Flower's wrapper)

    @property
    def task(self) -> Task | str:
        return blobs_task() if self.reference == "blobs" else self.reference

    def task_object(self) -> Task:
        return blobs_task() if self.reference == "blobs" else get_task(self.reference)

    def describe(self, rounds: int) -> str:
        return (
            f"{self.clients} clients ({self.partition}), {self.per_round} per round (fixed-size, "
            f"without replacement), {rounds} rounds, FedAvg, clip {self.clip:g}"
        )


TASKS = {
    "digits": TaskSpec("digits", "digits", "iid", 500, 50, 15, 1.0),
    "blobs": TaskSpec("blobs", "blobs", "dirichlet:0.5", 500, 50, 15, 1.0),
}
