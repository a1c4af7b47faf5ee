"""Data adapters: a Task's federated data from arrays, a torch Dataset or a Hugging Face Dataset.

Every adapter is a :class:`~client_sdk.task.FederatedData`: ``client_data(partition_id,
num_partitions, partitioner=..., seed=...)`` returns one client's :class:`ClientData` and
``central_test(num_partitions=..., seed=...)`` the server's test set. The contract for what they
return: ``x`` float32 with whatever feature shape the model takes (``[n, ...]``), ``y`` int64
class labels ``[n]`` (float32 targets for a regression Task). A ``partitioner`` is Pollen's
``(labels, num_partitions, numpy Generator) -> one index array per client`` (iid,
dirichlet:ALPHA, shards:K, or your own with that signature); every client computes the same
seeded split and keeps its part, so no coordinator is needed.

- :func:`from_arrays`: in-memory arrays, split by any Pollen partitioner on ``y``.
- :class:`TorchDatasetData`: a map-style ``torch.utils.data.Dataset``; only the labels are read
  up front, and a client loads just its own items.
- :class:`HuggingFaceData`: a ``datasets.Dataset`` split by a ``flwr-datasets`` partitioner
  (IID, Dirichlet, Shard, Pathological, ...), or by Pollen's on its label column. With a
  ``flwr-datasets`` partitioner the split belongs to the data source (``natural_partition``),
  so the run's ``partition`` setting is ``natural``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from client_sdk.task import ClientData, Partitioner, TaskConfigError, check_partition_id
from client_sdk.tasks.pooled import Pool, PooledData


def _features(x: Any, what: str) -> np.ndarray:
    array = np.asarray(x)
    if array.dtype == object or array.ndim < 1:
        raise TaskConfigError(f"{what} must be a numeric array [n, ...], got {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)


def _targets(y: Any, n: int, what: str) -> np.ndarray:
    array = np.asarray(y)
    if array.shape[:1] != (n,):
        raise TaskConfigError(f"{what} must have one value per example ({n}), got {array.shape}")
    if np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        return array.astype(np.int64)
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)  # regression targets
    raise TaskConfigError(f"{what} must hold integer labels or float targets, got {array.dtype}")


def from_arrays(
    x: Any,
    y: Any,
    *,
    x_test: Any = None,
    y_test: Any = None,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    labels: Any = None,
) -> PooledData:
    """Clients' data from in-memory arrays, split by the run's partitioner on the labels ``y``.

    Without ``x_test``/``y_test`` a seeded ``test_fraction`` of the examples is held out as the
    server's test set (and dealt out to clients for federated evaluation). ``labels`` (one int
    per training example) is what a partitioner splits by instead of ``y``; for float targets
    (regression) it defaults to the target's deciles, so dirichlet/shards skew the clients'
    target ranges.
    """
    features = _features(x, "x")
    targets = _targets(y, len(features), "y")
    if (x_test is None) != (y_test is None):
        raise TaskConfigError("give both x_test and y_test, or neither")
    if x_test is None:
        if not 0 < test_fraction < 1:
            raise TaskConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
        order = np.random.default_rng(split_seed).permutation(len(features))
        cut = max(1, int(round(len(order) * test_fraction)))
        test, train = np.sort(order[:cut]), np.sort(order[cut:])
        pool = Pool(features[train], targets[train], features[test], targets[test])
    else:
        test_x = _features(x_test, "x_test")
        pool = Pool(features, targets, test_x, _targets(y_test, len(test_x), "y_test"))
    if len(pool.y_train) == 0 or len(pool.y_test) == 0:
        raise TaskConfigError("from_arrays needs at least one training and one test example")
    if labels is not None:
        if x_test is None:
            raise TaskConfigError("labels need x_test/y_test (they label the training examples)")
        split = _targets(labels, len(pool.y_train), "labels")
        pool = Pool(pool.x_train, pool.y_train, pool.x_test, pool.y_test, split.astype(np.int64))
    elif pool.y_train.dtype == np.float32:
        edges = np.quantile(pool.y_train, np.linspace(0, 1, 11)[1:-1])
        bins = np.searchsorted(edges, pool.y_train).astype(np.int64)
        pool = Pool(pool.x_train, pool.y_train, pool.x_test, pool.y_test, bins)
    return PooledData(load=lambda: pool)


def _stack(dataset: Any, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for i in indices:
        item_x, item_y = dataset[int(i)]
        xs.append(np.asarray(item_x, dtype=np.float32))
        ys.append(np.asarray(item_y))
    if not xs:
        return np.zeros((0,), np.float32), np.zeros((0,), np.int64)
    x = np.stack(xs)
    return x, _targets(np.stack(ys), len(x), "labels")


@dataclass(frozen=True, kw_only=True)
class TorchDatasetData:
    """A map-style torch Dataset (``dataset[i] -> (x, y)``) read lazily, client by client.

    ``labels`` (one per item) are what a partitioner splits; without them the dataset's
    ``targets`` attribute is used (torchvision's habit), else each item's ``y`` is read once.
    ``test`` is the server's test set (default: every ``test_every``-th item, held out).
    """

    dataset: Any
    labels: Any = None
    test: Any = None
    test_every: int = 5
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def _labels(self) -> np.ndarray:
        if "labels" not in self._cache:
            labels = self.labels
            if labels is None:
                labels = getattr(self.dataset, "targets", None)
            if labels is None:
                labels = [self.dataset[i][1] for i in range(len(self.dataset))]
            self._cache["labels"] = _targets(
                np.asarray(labels), len(self.dataset), "dataset labels"
            )
        return self._cache["labels"]

    def _split(self) -> tuple[np.ndarray, np.ndarray]:
        everything = np.arange(len(self.dataset))
        if self.test is not None:
            return everything, np.zeros(0, np.int64)
        held_out = everything % self.test_every == 0
        return everything[~held_out], everything[held_out]

    def client_data(
        self, partition_id: int, num_partitions: int, *, partitioner: Partitioner | None, seed: int
    ) -> ClientData:
        if partitioner is None:
            raise TaskConfigError("a torch Dataset needs a partitioner (iid, dirichlet, shards)")
        check_partition_id(partition_id, num_partitions)
        train, held_out = self._split()
        parts = partitioner(self._labels()[train], num_partitions, np.random.default_rng([seed, 1]))
        x, y = _stack(self.dataset, train[np.asarray(parts[partition_id])])
        test_source, test_items = (
            (self.test, np.arange(len(self.test)))
            if self.test is not None
            else (self.dataset, held_out)
        )
        mine = test_items[partition_id % max(len(test_items), 1) :: num_partitions][:256]
        x_test, y_test = _stack(test_source, mine[:1] if len(mine) == 0 else mine)
        return ClientData(x_train=x, y_train=y, x_test=x_test, y_test=y_test)

    def central_test(self, *, num_partitions: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        if self.test is not None:
            return _stack(self.test, range(len(self.test)))
        return _stack(self.dataset, self._split()[1])


@dataclass(frozen=True, kw_only=True)
class HuggingFaceData:
    """A Hugging Face ``datasets.Dataset`` with feature column ``x`` and label column ``y``.

    ``flwr_partitioner(num_partitions)`` returns a ``flwr_datasets`` partitioner (e.g.
    ``lambda n: DirichletPartitioner(n, partition_by="label", alpha=0.3, seed=0)``): the split
    is then the data source's own (run with partition ``natural``). Without it, Pollen's
    partitioner splits on the label column. ``test`` is the server's held-out Dataset.
    """

    dataset: Any
    test: Any
    x: str = "x"
    y: str = "label"
    flwr_partitioner: Callable[[int], Any] | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def natural_partition(self) -> bool:  # the flwr-datasets partitioner owns the split
        return self.flwr_partitioner is not None

    def _arrays(self, part: Any) -> tuple[np.ndarray, np.ndarray]:
        for column in (self.x, self.y):
            if column not in part.column_names:
                raise TaskConfigError(
                    f"the dataset has no column {column!r}; columns: {part.column_names}"
                )
        part = part.with_format("numpy")
        x = _features(part[self.x], f"column {self.x!r}")
        return x, _targets(part[self.y], len(x), f"column {self.y!r}")

    def _partitioner(self, num_partitions: int) -> Any:
        key = ("flwr", num_partitions)
        if key not in self._cache:
            partitioner = self.flwr_partitioner(num_partitions)  # type: ignore[misc]
            partitioner.dataset = self.dataset
            self._cache[key] = partitioner
        return self._cache[key]

    def client_data(
        self, partition_id: int, num_partitions: int, *, partitioner: Partitioner | None, seed: int
    ) -> ClientData:
        check_partition_id(partition_id, num_partitions)
        if self.flwr_partitioner is not None:
            if partitioner is not None:
                raise TaskConfigError(
                    "this dataset is split by its flwr-datasets partitioner: use partition "
                    "'natural'"
                )
            part = self._partitioner(num_partitions).load_partition(partition_id)
        else:
            if partitioner is None:
                raise TaskConfigError("give a partitioner, or a flwr_partitioner to the data")
            labels = np.asarray(self.dataset.with_format("numpy")[self.y])
            parts = partitioner(labels, num_partitions, np.random.default_rng([seed, 1]))
            part = self.dataset.select(np.asarray(parts[partition_id]).tolist())
        x, y = self._arrays(part)
        test_rows = list(range(partition_id % len(self.test), len(self.test), num_partitions))
        x_test, y_test = self._arrays(self.test.select(test_rows[:256]))
        return ClientData(x_train=x, y_train=y, x_test=x_test, y_test=y_test)

    def central_test(self, *, num_partitions: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return self._arrays(self.test)
