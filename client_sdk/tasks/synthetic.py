"""Built-in task: multinomial logistic regression on FedProx's Synthetic(alpha, beta) data.

Generator from Li et al., "Federated Optimization in Heterogeneous Networks" (MLSys 2020),
Sec. 5.1: client k draws u_k ~ N(0, alpha), B_k ~ N(0, beta); its model W_k, b_k ~ N(u_k, 1); its
input mean v_k ~ N(B_k, 1); x ~ N(v_k, Sigma) with Sigma_jj = j^-1.2; y = argmax(W_k x + b_k).
Sample counts follow the paper's power law (lognormal(4, 2) + 50, capped here). As in the
reference code, alpha and beta are standard deviations. beta controls how much the clients'
inputs differ; alpha shifts every logit of a client by the same amount, so (in the reference
generator as here) it changes the clients' model parameters but not which label wins. Each
client's data depends only on (seed, client id), so a client generates its own partition and
nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from torch import nn

from client_sdk.task import (
    ClientData,
    OptimizerSpec,
    Partitioner,
    Task,
    TaskConfigError,
    check_natural_partition,
)

DIM, CLASSES = 60, 10


@dataclass(frozen=True, kw_only=True)
class SyntheticData:
    """Synthetic(alpha, beta): a natural partition, one generated dataset per client."""

    natural_partition: ClassVar[bool] = True  # each client generates its own data
    alpha: float = 1.0
    beta: float = 1.0
    max_samples: int = 1000
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        if not (0 <= self.alpha <= 1e3 and 0 <= self.beta <= 1e3):  # NaN fails too
            raise TaskConfigError(
                f"Synthetic alpha and beta must be in [0, 1000], got {self.alpha}, {self.beta}"
            )

    def generate(self, client: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """All samples of one client (train and test before the split)."""
        rng = np.random.default_rng([seed, 11, client])
        n = min(int(rng.lognormal(4, 2)) + 50, self.max_samples)
        u = rng.normal(0, self.alpha)
        big_b = rng.normal(0, self.beta)
        w = rng.normal(u, 1, (CLASSES, DIM))
        b = rng.normal(u, 1, CLASSES)
        v = rng.normal(big_b, 1, DIM)
        std = np.arange(1, DIM + 1, dtype=np.float64) ** (-1.2 / 2)
        x = rng.normal(v, std, (n, DIM))
        # einsum without BLAS: a BLAS call in the ServerApp thread after a Ray run has been
        # seen to hang in OpenBLAS on this 2-core machine; the sizes here are tiny anyway.
        y = np.argmax(np.einsum("nd,cd->nc", x, w, optimize=False) + b, axis=1)
        return x.astype(np.float32), y.astype(np.int64)

    def _split(self, client: int, seed: int) -> ClientData:
        x, y = self.generate(client, seed)
        n_test = max(1, int(round(len(y) * self.test_fraction)))
        return ClientData(
            x_train=x[n_test:], y_train=y[n_test:], x_test=x[:n_test], y_test=y[:n_test]
        )

    def client_data(
        self,
        partition_id: int,
        num_partitions: int,
        *,
        partitioner: Partitioner | None,
        seed: int,
    ) -> ClientData:
        check_natural_partition("Synthetic(alpha, beta)", partitioner, partition_id, num_partitions)
        return self._split(partition_id, seed)

    def central_test(self, *, num_partitions: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """The union of every client's local test split."""
        parts = [self._split(k, seed) for k in range(num_partitions)]
        return (
            np.concatenate([p.x_test for p in parts]),
            np.concatenate([p.y_test for p in parts]),
        )


def synthetic_task(alpha: float = 1.0, beta: float = 1.0) -> Task:
    return Task(
        name=f"synthetic-{alpha:g}-{beta:g}",
        model_fn=lambda: nn.Linear(DIM, CLASSES),
        data=SyntheticData(alpha=alpha, beta=beta),
        optimizer=OptimizerSpec(name="sgd", lr=0.01),
        local_epochs=1,
        batch_size=10,
    )
