"""Skewed client sizes of the generated-data tutorial CNN (client_sdk/tasks/sizes.py)."""

import numpy as np
import pytest

from client_sdk import TaskConfigError
from client_sdk.tasks import get_task
from client_sdk.tasks.sizes import SizeSpecError, client_sizes


@pytest.mark.parametrize("spec", ["dirichlet:0.3", "pareto:2"])
def test_sizes_are_skewed_around_the_mean_and_reproducible(spec):
    sizes = client_sizes(spec, 50, 2000, seed=0)
    assert sizes.dtype == np.int64 and sizes.min() >= 1
    assert 40 < sizes.mean() < 65  # about SAMPLES on average
    assert sizes.max() > 8 * np.median(sizes)  # a long right tail
    np.testing.assert_array_equal(sizes, client_sizes(spec, 50, 2000, seed=0))
    assert not np.array_equal(sizes, client_sizes(spec, 50, 2000, seed=1))


def test_each_client_generates_its_own_count():
    task = get_task("tutorial-cnn:20:dirichlet:0.3")
    want = client_sizes("dirichlet:0.3", 20, 30, seed=2)
    for pid in (0, 7, 29):
        data = task.data.client_data(pid, 30, partitioner=None, seed=2)
        assert len(data.y_train) == len(data.x_train) == want[pid]
    assert task.name == "tutorial-cnn-20-dirichlet-0.3"


@pytest.mark.parametrize("spec", ["dirichlet:0", "pareto:1", "zipf:2", "dirichlet:x", "pareto:nan"])
def test_malformed_size_specs_are_refused_with_the_syntax(spec):
    with pytest.raises(SizeSpecError, match="dirichlet|pareto"):
        client_sizes(spec, 50, 10, seed=0)
    with pytest.raises(TaskConfigError):
        get_task(f"tutorial-cnn:50:{spec}")
