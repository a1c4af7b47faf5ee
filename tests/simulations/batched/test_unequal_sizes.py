"""Unequal client sizes: the shrinking schedule against the padded one it replaced.

Since the batched engine trains each chunk with the clients still training only (and forms
chunks by client size), every client must end exactly where the padded schedule (every client
computed at every step, finished ones with zero weight) left it, on skewed sizes.
"""

import dataclasses

import numpy as np
import pytest
import torch

from client_sdk.tasks import get_task
from client_sdk.tasks.sizes import client_sizes
from simulations.batched.training import stack_clients, train_clients
from tests.helpers.skewed import CASES
from tests.helpers.skewed import counting as _counting
from tests.helpers.skewed import round_3_plan as _plan
from tests.helpers.skewed import skewed_clients as _skewed

CPU = torch.device("cpu")


@pytest.mark.parametrize("case", CASES)
def test_shrinking_schedule_gives_the_padded_schedules_updates(case):
    name, changes, config = CASES[case]
    task = dataclasses.replace(get_task(name), **changes)
    counting = _counting(task.optimizer)
    task = dataclasses.replace(task, optimizer=counting)
    plan = _plan(task, config)
    # Dirichlet(0.3)-skewed sizes, shuffled so the chunk is not in size order
    sizes = client_sizes("dirichlet:0.3", 12, 9, seed=5)
    sizes = np.random.default_rng(1).permutation(np.minimum(sizes, 60))
    data = _skewed(task, sizes.tolist())
    seeds = [plan.seed_for(pid) for pid in range(len(data))]
    batch = stack_clients(data, CPU, channels_last=name.startswith("tutorial"))
    shrunk = train_clients(plan, batch, seeds, CPU)
    shrunk_rows = list(counting.rows)
    counting.rows.clear()
    padded = train_clients(plan, batch, seeds, CPU, shrink=False)
    for name_, tensor in padded.local.items():
        worst = float((tensor - shrunk.local[name_]).abs().max())
        assert worst <= 1e-6, (case, name_, worst)
    for a, b in zip(shrunk.stats, padded.stats, strict=True):
        assert (a.steps, a.num_examples) == (b.steps, b.num_examples)
        assert a.mean_loss == pytest.approx(b.mean_loss, rel=1e-6)
    # compute follows the real client steps: sum of steps rows, not K x the longest client
    steps = np.array([s.steps for s in padded.stats])
    assert sum(shrunk_rows) == steps.sum() < len(steps) * steps.max() == sum(counting.rows)


def test_equal_sizes_train_as_one_block():
    task = get_task("digits")
    plan = _plan(task, {})
    data = _skewed(task, [20] * 4)
    batch = stack_clients(data, CPU)
    a = train_clients(plan, batch, [1, 2, 3, 4], CPU)
    b = train_clients(plan, batch, [1, 2, 3, 4], CPU, shrink=False)
    assert all(torch.equal(a.local[n], b.local[n]) for n in a.local)
