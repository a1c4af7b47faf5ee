"""The long tail of a skewed chunk: once at most FEW_ROWS clients are still training, each runs
its own unbatched forward pass; they must end where the padded vmap schedule leaves them."""

import dataclasses

import pytest
import torch

from client_sdk.tasks import get_task
from simulations.batched.training import FEW_ROWS, stack_clients, train_clients
from tests.helpers.skewed import CASES
from tests.helpers.skewed import counting as _counting
from tests.helpers.skewed import round_3_plan as _plan
from tests.helpers.skewed import skewed_clients as _skewed

CPU = torch.device("cpu")


@pytest.mark.parametrize("case", CASES)
def test_the_few_clients_left_train_as_under_vmap(case):
    name, changes, config = CASES[case]
    task = dataclasses.replace(get_task(name), **changes)
    counting = _counting(task.optimizer)
    task = dataclasses.replace(task, optimizer=counting)
    plan = _plan(task, config)
    sizes = [9, 40, 3, 23]  # one client alone for its last steps, two before that
    data = _skewed(task, sizes)
    seeds = [plan.seed_for(pid) for pid in range(len(data))]
    batch = stack_clients(data, CPU, channels_last=name.startswith("tutorial"))
    tail = train_clients(plan, batch, seeds, CPU)
    rows = list(counting.rows)
    padded = train_clients(plan, batch, seeds, CPU, shrink=False)
    assert 1 in rows and 2 in rows and FEW_ROWS == 2  # the tail took the unbatched path
    for n, tensor in padded.local.items():
        worst = float((tensor - tail.local[n]).abs().max())
        assert worst <= 1e-6, (case, n, worst)
    for a, b in zip(tail.stats, padded.stats, strict=True):
        assert (a.steps, a.num_examples) == (b.steps, b.num_examples)
        assert a.mean_loss == pytest.approx(b.mean_loss, rel=1e-6)
