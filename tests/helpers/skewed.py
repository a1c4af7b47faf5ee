"""Clients of skewed sizes, an optimizer counting its rows, and the unequal-size cases."""

import dataclasses

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MessageType, RecordDict

from client_sdk import ClientData, OptimizerSpec, model_arrays
from client_sdk.rounds import plan_round
from simulations.partitioners import parse_partition
from tests.messages import message


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


def round_3_plan(task, config):
    """The SDK's plan for round 3 of ``task`` under ``config``."""
    arrays = model_arrays(task.build_model(seed=1))
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "config": ConfigRecord({"server-round": 3, "seed": 4, **config}),
        }
    )
    return plan_round(task, message(content, src=0, dst=5, message_type=MessageType.TRAIN))


def skewed_clients(task, sizes):
    """Clients of ``task`` with the given sizes, cut (or tiled) from one client's data."""
    partitioner = parse_partition("iid") if task.name == "digits" else None
    data = task.data.client_data(0, 1, partitioner=partitioner, seed=0)
    out = []
    for k, n in enumerate(sizes):
        pick = (np.arange(n) + 7 * k) % len(data.y_train)
        out.append(ClientData(data.x_train[pick], data.y_train[pick], data.x_test, data.y_test))
    return out


def counting(spec):
    """``spec`` as a :class:`CountingOptimizer`."""
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
