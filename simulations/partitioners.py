"""Split a pooled dataset's labels among simulated clients.

- IID: a seeded permutation cut into near-equal parts.
- Dirichlet(alpha) over labels (Hsu, Qi & Brown 2019; the NIID-Bench variant of Li et al.,
  ICDE 2022, which stops feeding clients that already hold an average share).
- Label shards, k classes per client (NIID-Bench's "#C=k"; McMahan et al. 2017 use shards
  to the same end): each client gets k distinct labels, each label's examples are split evenly
  among the clients that hold it (a label no client holds, possible only when
  clients * k < #classes, is left out).

Each returns one index array per client, uses only the ``numpy.random.Generator`` passed in, and
checks a minimum number of examples per client.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from client_sdk import Partitioner


class PartitionError(ValueError):
    """A partition spec is malformed or cannot give every client enough examples; ``key``
    names the setting (``partition`` unless a caller says otherwise)."""

    def __init__(self, why: str, key: str = "partition") -> None:
        super().__init__(why)
        self.key = key


def _check_min(parts: list[np.ndarray], min_samples: int, what: str) -> list[np.ndarray]:
    smallest = min(len(p) for p in parts)
    if smallest < min_samples:
        raise PartitionError(
            f"{what} gives a client only {smallest} examples (minimum {min_samples}); "
            "use fewer clients, a larger alpha, or a lower minimum"
        )
    return parts


@dataclass(frozen=True)
class IidPartitioner:
    min_samples: int = 1

    def __call__(self, labels: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
        _check_clients(labels, n)
        parts = [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), n)]
        return _check_min(parts, self.min_samples, "an IID split")


@dataclass(frozen=True)
class DirichletPartitioner:
    alpha: float
    min_samples: int = 1
    max_tries: int = 100

    def __post_init__(self) -> None:
        if not (math.isfinite(self.alpha) and self.alpha > 0):  # NaN and Inf draw NaN shares
            raise PartitionError(f"Dirichlet alpha must be a finite number > 0, got {self.alpha}")

    def __call__(self, labels: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
        _check_clients(labels, n)
        classes = np.unique(labels)
        cap = len(labels) / n
        smallest = 0
        for _ in range(self.max_tries):
            parts: list[list[np.ndarray]] = [[] for _ in range(n)]
            sizes = np.zeros(n, dtype=np.int64)
            for label in classes:
                idx = rng.permutation(np.flatnonzero(labels == label))
                share = rng.dirichlet(np.full(n, self.alpha))
                share = share * (sizes < cap)
                share = share / share.sum() if share.sum() > 0 else np.full(n, 1.0 / n)
                cuts = (np.cumsum(share) * len(idx)).astype(np.int64)[:-1]
                for client, chunk in enumerate(np.split(idx, cuts)):
                    parts[client].append(chunk)
                    sizes[client] += len(chunk)
            smallest = int(sizes.min())
            if smallest >= self.min_samples:
                return [np.sort(np.concatenate(p)) for p in parts]
        raise PartitionError(
            f"Dirichlet({self.alpha}) over {n} clients left a client with {smallest} examples "
            f"(minimum {self.min_samples}) after {self.max_tries} draws; use fewer clients, "
            "a larger alpha, or a lower minimum"
        )


@dataclass(frozen=True)
class ShardPartitioner:
    classes_per_client: int
    min_samples: int = 1

    def __post_init__(self) -> None:
        if self.classes_per_client < 1:
            raise PartitionError(
                f"shards need k >= 1 classes per client, got {self.classes_per_client}"
            )

    def __call__(self, labels: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
        _check_clients(labels, n)
        classes = np.unique(labels)
        k = self.classes_per_client
        if k > len(classes):
            raise PartitionError(
                f"shards:{k} asks for more classes than the {len(classes)} present"
            )
        # Deal labels from a seeded permutation, k consecutive ones per client: each client's k
        # labels are distinct, and every label is held by someone once n * k >= #classes.
        order = rng.permutation(classes)
        holders: dict[int, list[int]] = {int(c): [] for c in classes}
        for client in range(n):
            for j in range(k):
                holders[int(order[(client * k + j) % len(classes)])].append(client)
        parts: list[list[np.ndarray]] = [[] for _ in range(n)]
        for label, owners in holders.items():
            if not owners:  # fewer client slots than labels: this label is left out
                continue
            idx = rng.permutation(np.flatnonzero(labels == label))
            for client, chunk in zip(owners, np.array_split(idx, len(owners)), strict=True):
                parts[client].append(chunk)
        return _check_min(
            [np.sort(np.concatenate(p)) for p in parts], self.min_samples, f"shards:{k}"
        )


def _check_clients(labels: np.ndarray, n: int) -> None:
    if n < 1:
        raise PartitionError(f"need at least 1 client, got {n}")
    if n > len(labels):
        raise PartitionError(f"{n} clients but only {len(labels)} examples to share")


def parse_partition(spec: str, *, min_samples: int = 1) -> Partitioner | None:
    """``iid`` | ``dirichlet:ALPHA`` | ``shards:K`` | ``natural`` (None: the task splits itself)."""
    kind, _, arg = spec.partition(":")
    if kind == "natural" and not arg:
        return None
    if kind == "iid" and not arg:
        return IidPartitioner(min_samples=min_samples)
    try:
        if kind == "dirichlet":
            return DirichletPartitioner(alpha=float(arg), min_samples=min_samples)
        if kind == "shards":
            return ShardPartitioner(classes_per_client=int(arg), min_samples=min_samples)
    except ValueError as err:
        if isinstance(err, PartitionError):
            raise
        raise PartitionError(f"partition {spec!r}: {arg!r} is not a number") from None
    raise PartitionError(
        f"unknown partition {spec!r}; use iid, dirichlet:ALPHA, shards:K or natural"
    )
