"""Unequal client sizes: the shrinking schedule against the padded one it replaced.

Since the batched engine trains each chunk with the clients still training only (and forms
chunks by client size), every client must end exactly where the padded schedule (every client
computed at every step, finished ones with zero weight) left it, on skewed sizes.
"""

import dataclasses

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MessageType, RecordDict

from client_sdk import ClientData, OptimizerSpec, model_arrays
from client_sdk.rounds import plan_round
from client_sdk.tasks import get_task
from client_sdk.tasks.sizes import client_sizes
from simulations.batched.training import stack_clients, train_clients
from simulations.partitioners import parse_partition
from tests.messages import message

CPU = torch.device("cpu")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CountingOptimizer(OptimizerSpec):
    """The Task's optimizer, counting the client rows each of its steps updates."""

    rows: list = dataclasses.field(default_factory=list, compare=False)

    def build(self, params, *, lr=None):
        optimizer = super().build(params, lr=lr)
        optimizer.register_step_pre_hook(
            lambda opt, args, kwargs: self.rows.append(opt.param_groups[0]["params"][0].shape[0])
        )
        return optimizer


def _plan(task, config):
    arrays = model_arrays(task.build_model(seed=1))
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "config": ConfigRecord({"server-round": 3, "seed": 4, **config}),
        }
    )
    return plan_round(task, message(content, src=0, dst=5, message_type=MessageType.TRAIN))


def _skewed(task, sizes):
    """Clients of ``task`` with the given sizes, cut (or tiled) from one client's data."""
    partitioner = parse_partition("iid") if task.name == "digits" else None
    data = task.data.client_data(0, 1, partitioner=partitioner, seed=0)
    out = []
    for k, n in enumerate(sizes):
        pick = (np.arange(n) + 7 * k) % len(data.y_train)
        out.append(ClientData(data.x_train[pick], data.y_train[pick], data.x_test, data.y_test))
    return out


def _counting(spec):
    return CountingOptimizer(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)})


CASES = {
    # task, task changes, round config
    "digits-sgd-momentum": ("digits", {"optimizer": OptimizerSpec(lr=0.05, momentum=0.9)}, {}),
    "digits-adamw-2-epochs": (
        "digits",
        {"optimizer": OptimizerSpec(name="adamw", lr=0.01, weight_decay=0.01)},
        {"local-epochs": 2},
    ),
    "digits-fedprox": ("digits", {}, {"proximal-mu": 0.1, "batch-size": 4}),
    "cnn-packed": ("tutorial-cnn:40", {}, {}),
}


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
