import numpy as np
import pytest

from client_sdk import TaskConfigError
from client_sdk.tasks import get_task, natural_partition
from client_sdk.tasks.digits import load_digits_pool
from client_sdk.tasks.synthetic import CLASSES, DIM, SyntheticData
from simulations.partitioners import DirichletPartitioner, IidPartitioner


def test_digits_pool_is_the_bundled_dataset_split_80_20():
    pool = load_digits_pool()
    assert pool.x_train.shape == (1437, 64) and pool.x_test.shape == (360, 64)
    assert pool.x_train.dtype == np.float32 and 0 <= pool.x_train.min() and pool.x_train.max() <= 1
    assert set(np.unique(pool.y_test)) == set(range(10))


def test_digits_clients_split_the_pool_without_overlap():
    data = get_task("digits").data
    parts = [data.client_data(i, 4, partitioner=IidPartitioner(), seed=3) for i in range(4)]
    assert sum(p.num_train for p in parts) == 1437
    rows = np.concatenate([p.x_train for p in parts])
    assert len(np.unique(rows, axis=0)) == len(np.unique(load_digits_pool().x_train, axis=0))
    assert all(len(p.y_test) >= 1 for p in parts)


def test_digits_needs_a_partitioner_and_a_valid_partition_id():
    data = get_task("digits").data
    with pytest.raises(TaskConfigError):
        data.client_data(0, 4, partitioner=None, seed=0)
    with pytest.raises(TaskConfigError):
        data.client_data(4, 4, partitioner=DirichletPartitioner(0.5), seed=0)


def test_synthetic_client_data_depends_only_on_seed_and_client():
    gen = SyntheticData(alpha=1, beta=1)
    a = gen.client_data(3, 10, partitioner=None, seed=1)
    b = gen.client_data(3, 500, partitioner=None, seed=1)
    c = gen.client_data(3, 10, partitioner=None, seed=2)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train[:1], c.x_train[:1])
    assert a.x_train.shape[1] == DIM and a.y_train.max() < CLASSES


def test_synthetic_input_heterogeneity_grows_with_beta():
    """beta spreads the clients' input means apart (FedProx Sec. 5.1)."""

    def spread(beta: float) -> float:
        gen = SyntheticData(alpha=1.0, beta=beta)
        means = [gen.generate(k, seed=0)[0].mean() for k in range(40)]
        return float(np.std(means))

    assert spread(5.0) > 2 * spread(0.0)


def test_synthetic_clients_have_different_label_distributions():
    gen = SyntheticData(alpha=1.0, beta=1.0)
    hists = [np.bincount(gen.generate(k, seed=0)[1], minlength=CLASSES) for k in range(20)]
    dominant = {int(np.argmax(h)) for h in hists}
    assert len(dominant) >= 4


def test_synthetic_refuses_a_partitioner_and_central_test_is_union_of_client_tests():
    gen = get_task("synthetic:0.5,0.5").data
    with pytest.raises(TaskConfigError, match="natural"):
        gen.client_data(0, 3, partitioner=IidPartitioner(), seed=0)
    x, y = gen.central_test(num_partitions=3, seed=0)
    assert len(y) == sum(
        len(gen.client_data(i, 3, partitioner=None, seed=0).y_test) for i in range(3)
    )
    assert natural_partition("synthetic:0.5,0.5") and not natural_partition("digits")
