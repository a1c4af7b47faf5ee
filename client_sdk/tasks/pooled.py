"""A federated data source over one pooled dataset, split among clients by a partitioner."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from client_sdk.task import ClientData, Partitioner, TaskConfigError, check_partition_id


@dataclass(frozen=True)
class Pool:
    """A pooled dataset: the clients' training pool and the server's central test set."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    split_labels: np.ndarray | None = None  # what a partitioner splits by (default: y_train)


@dataclass(frozen=True, kw_only=True)
class PooledData:
    """Partition ``load()``'s training pool among clients; deal the test pool out round-robin.

    Every client computes the same seeded partition of the whole pool and keeps its own part,
    so no coordinator is needed and a run is reproducible from its seed. A client's local test
    set (for federated evaluation) is every ``num_partitions``-th example of a seeded
    permutation of the test pool, and at least one example; clients never train on it.
    """

    load: Callable[[], Pool]

    def client_data(
        self,
        partition_id: int,
        num_partitions: int,
        *,
        partitioner: Partitioner | None,
        seed: int,
    ) -> ClientData:
        if partitioner is None:
            raise TaskConfigError("a pooled dataset needs a partitioner (iid, dirichlet, shards)")
        check_partition_id(partition_id, num_partitions)
        pool = self.load()
        labels = pool.y_train if pool.split_labels is None else pool.split_labels
        parts = partitioner(labels, num_partitions, np.random.default_rng([seed, 1]))
        train = np.asarray(parts[partition_id])
        n_test = len(pool.y_test)
        order = np.random.default_rng([seed, 2]).permutation(n_test)
        test = (
            order[partition_id::num_partitions]
            if partition_id < n_test
            else order[partition_id % n_test : partition_id % n_test + 1]
        )
        return ClientData(
            x_train=pool.x_train[train],
            y_train=pool.y_train[train],
            x_test=pool.x_test[test],
            y_test=pool.y_test[test],
        )

    def central_test(self, *, num_partitions: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        pool = self.load()
        return pool.x_test, pool.y_test
