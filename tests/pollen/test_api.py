"""pollen.simulate: the Python API runs what the CLI runs, with the same checks, and takes
what a flag cannot (a Task object, a Flower strategy object, callbacks)."""

import numpy as np
import pytest
from flwr.serverapp.strategy import FedAvgM
from torch import nn

import pollen
from client_sdk import OptimizerSpec, Task, from_arrays
from client_sdk.tasks.references import IN_PROCESS, reference_to

RNG = np.random.default_rng(0)
X = RNG.normal(size=(1200, 10)).astype(np.float32)
Y = X[:, :3].argmax(axis=1).astype(np.int64)
TASK = Task(
    name="toy",
    model_fn=lambda: nn.Linear(10, 3),
    data=from_arrays(X, Y),
    optimizer=OptimizerSpec(lr=0.1),
)


def test_a_task_object_a_strategy_object_and_on_round(tmp_path):
    rows, seen = [], []

    def mean_loss(records, weights):
        seen.append(len(records))
        return {"mean-loss": float(np.mean([r["train-loss"] for r in records]))}

    summary = pollen.simulate(
        TASK,
        clients=8,
        rounds=3,
        out=tmp_path,
        engine="batched",
        partition="dirichlet:0.5",
        strategy=FedAvgM(server_momentum=0.5),
        lr_schedule="cosine",
        train_metrics_aggr_fn=mean_loss,
        on_round=rows.append,
    )
    assert [r["round"] for r in rows] == [0, 1, 2, 3] and seen == [8, 8, 8]
    assert "train_mean-loss" in rows[-1] and summary["final_accuracy"] > rows[0]["accuracy"]
    assert summary["settings"]["lr_schedule"] == "cosine"
    assert summary["task"] == reference_to(TASK) == "tests.pollen.test_api:TASK"


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"lr": float("nan")}, "lr"),
        ({"rounds": 0}, "rounds"),
        ({"quant_bits": 3}, "quant_bits"),
        ({"partition": "dirichlet:-1"}, "partition"),
        ({"client_gpus": -1.0}, "client_gpus"),
        ({"no_such_setting": 1}, "no_such_setting"),
        ({"lr_schedule": "step:0:1"}, "lr_schedule"),
    ],
)
def test_bad_keywords_raise_one_settings_error_naming_them(tmp_path, kwargs, key):
    with pytest.raises(pollen.SettingsError) as err:
        pollen.simulate("digits", clients=4, out=tmp_path, engine="batched", **kwargs)
    assert err.value.key == key and "\n" not in str(err.value)


def test_a_task_made_in_a_function_runs_in_process_only(tmp_path):
    local = Task(name="local", model_fn=lambda: nn.Linear(10, 3), data=from_arrays(X, Y))
    assert reference_to(local) == f"{IN_PROCESS}:local"  # stable: a new process can resume it
    with pytest.raises(pollen.SettingsError, match="engine='batched'"):
        pollen.simulate(local, clients=4, rounds=1, out=tmp_path, engine="flower")
    summary = pollen.simulate(local, clients=4, rounds=1, out=tmp_path)  # auto: batched
    assert summary["engine"] == "batched" and summary["rounds"] == 1


def test_the_keywords_are_the_declared_settings_with_their_defaults():
    import inspect

    from pollen.api import simulate
    from pollen.settings import keyword_for, simulate_settings
    from wire import CodecSpec

    params = inspect.signature(simulate).parameters
    for entry in simulate_settings():
        if entry.name not in ("task", "strategy", "partition"):
            assert params[keyword_for(entry.key)].default == entry.default, entry.key
    assert params["quant_chunk"].default == CodecSpec().quant_chunk
    assert params["rounds"].default == 3 and params["clients"].default == 50
    assert "num_server_rounds" not in params and "min_available_nodes" not in params
