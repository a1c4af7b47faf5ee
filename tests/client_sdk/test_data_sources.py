"""Data adapters: arrays, a lazily read torch Dataset, and a Hugging Face Dataset split by a
flwr-datasets partitioner; each client's part is disjoint and the union is the training set."""

import numpy as np
import pytest
import torch

from client_sdk import TaskConfigError
from client_sdk.data_sources import HuggingFaceData, TorchDatasetData, from_arrays
from client_sdk.task import has_natural_partition
from simulations.partitioners import parse_partition

N, CLASSES, CLIENTS = 400, 4, 8


def _xy(seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, size=N)
    x = rng.normal(size=(N, 1, 4, 4)).astype(np.float32) + y[:, None, None, None]
    return x, y


def _clients(data, partition, num=CLIENTS):
    splitter = None if partition == "natural" else parse_partition(partition)
    return [data.client_data(i, num, partitioner=splitter, seed=3) for i in range(num)]


@pytest.mark.parametrize("partition", ["iid", "dirichlet:0.3", "shards:2"])
def test_from_arrays_splits_by_any_pollen_partitioner(partition):
    x, y = _xy()
    data = from_arrays(x, y, test_fraction=0.25)
    parts = _clients(data, partition)
    assert sum(p.num_train for p in parts) == 300  # 25% held out for the server
    assert all(p.x_train.dtype == np.float32 and p.y_train.dtype == np.int64 for p in parts)
    assert all(p.x_train.shape[1:] == (1, 4, 4) and len(p.y_test) >= 1 for p in parts)
    rows = np.concatenate([p.x_train.reshape(len(p.x_train), -1) for p in parts])
    assert len(np.unique(rows, axis=0)) == 300  # disjoint parts
    x_test, y_test = data.central_test(num_partitions=CLIENTS, seed=3)
    assert len(y_test) == 100 and not has_natural_partition(data)
    if partition == "shards:2":
        assert all(len(np.unique(p.y_train)) <= 2 for p in parts)


def test_from_arrays_checks_what_it_is_given():
    x, y = _xy()
    with pytest.raises(TaskConfigError, match="one value per example"):
        from_arrays(x, y[:-1])
    with pytest.raises(TaskConfigError, match="numeric array"):
        from_arrays(np.array([{"a": 1}] * N, dtype=object), y)
    with pytest.raises(TaskConfigError, match="both x_test and y_test"):
        from_arrays(x, y, x_test=x)
    regression = from_arrays(x, y.astype(np.float32) / 3)
    part = regression.client_data(0, 2, partitioner=parse_partition("iid"), seed=0)
    assert part.y_train.dtype == np.float32


class CountingDataset(torch.utils.data.Dataset):
    """A map-style Dataset that records which items were read."""

    def __init__(self, x, y, with_targets=True):
        self.x, self.y, self.reads = x, y, set()
        if with_targets:
            self.targets = torch.as_tensor(y)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        self.reads.add(i)
        return torch.as_tensor(self.x[i]), int(self.y[i])


def test_a_torch_dataset_is_read_only_where_a_client_needs_it():
    x, y = _xy()
    dataset = CountingDataset(x, y)
    data = TorchDatasetData(dataset=dataset, test_every=5)
    part = data.client_data(2, CLIENTS, partitioner=parse_partition("dirichlet:0.5"), seed=1)
    assert 0 < len(dataset.reads) < N // 2  # this client's items and a few test items only
    assert part.x_train.dtype == np.float32 and part.x_train.shape[1:] == (1, 4, 4)
    assert set(np.unique(part.y_train)) <= set(y.tolist())
    union = sum(
        data.client_data(i, CLIENTS, partitioner=parse_partition("iid"), seed=1).num_train
        for i in range(CLIENTS)
    )
    assert union == N - N // 5  # every 5th item is the server's
    x_test, y_test = data.central_test(num_partitions=CLIENTS, seed=1)
    assert len(y_test) == N // 5


def test_a_torch_dataset_without_targets_reads_labels_once():
    x, y = _xy()
    data = TorchDatasetData(dataset=CountingDataset(x, y, with_targets=False))
    part = data.client_data(0, 4, partitioner=parse_partition("iid"), seed=0)
    assert part.num_train == 80


def test_a_hugging_face_dataset_split_by_a_flwr_datasets_partitioner():
    datasets = pytest.importorskip("datasets")
    partitioners = pytest.importorskip("flwr_datasets.partitioner")
    x, y = _xy()
    train = datasets.Dataset.from_dict({"x": x[:320].tolist(), "label": y[:320].tolist()})
    test = datasets.Dataset.from_dict({"x": x[320:].tolist(), "label": y[320:].tolist()})
    for make in (
        lambda n: partitioners.IidPartitioner(n),
        lambda n: partitioners.DirichletPartitioner(n, partition_by="label", alpha=0.3, seed=0),
        lambda n: partitioners.ShardPartitioner(
            n, partition_by="label", num_shards_per_partition=2
        ),
        lambda n: partitioners.PathologicalPartitioner(
            n, partition_by="label", num_classes_per_partition=2, seed=0
        ),
    ):
        data = HuggingFaceData(dataset=train, test=test, flwr_partitioner=make)
        assert has_natural_partition(data)
        parts = _clients(data, "natural")
        assert sum(p.num_train for p in parts) <= 320 and all(p.num_train for p in parts)
        assert parts[0].x_train.dtype == np.float32 and parts[0].x_train.shape[1:] == (1, 4, 4)
        with pytest.raises(TaskConfigError, match="natural"):
            data.client_data(0, CLIENTS, partitioner=parse_partition("iid"), seed=0)
    pollen_split = HuggingFaceData(dataset=train, test=test)
    parts = _clients(pollen_split, "dirichlet:0.5")
    assert sum(p.num_train for p in parts) == 320 and not has_natural_partition(pollen_split)
    assert len(pollen_split.central_test(num_partitions=CLIENTS, seed=0)[1]) == 80


def test_float_targets_are_split_by_their_deciles():
    x, y = _xy()
    target = (y + np.random.default_rng(1).normal(size=N) * 0.1).astype(np.float32)
    data = from_arrays(x, target)
    parts = _clients(data, "shards:1")  # one decile per client: narrow target ranges
    assert all(np.ptp(p.y_train) < np.ptp(target) / 2 for p in parts)
    assert parts[0].y_train.dtype == np.float32
