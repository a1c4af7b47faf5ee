"""Server-side hooks: per-round client learning rates, more of Flower's strategies by name, any
Flower strategy object, and metric aggregation functions."""

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAvgM

from server import RunSettings
from server.app import build_server_app
from simulations.batched import run_server_app
from strategies import StrategySettings, build_strategy
from strategies.schedules import LrSchedule, ScheduleError, parse_schedule
from tests.helpers.replies import GLOBAL
from tests.helpers.replies import float32_arrays as _arrays
from tests.helpers.replies import train_reply as _reply
from tests.hostile import HostileGrid
from tests.strategies.fake_grid import QueryAnsweringGrid


def test_schedules_by_round():
    assert parse_schedule("constant").factor(7, 10) == 1.0
    step = parse_schedule("step:2:0.5")
    assert [step.factor(r, 10) for r in (1, 2, 3, 4, 5)] == [1, 1, 0.5, 0.5, 0.25]
    cosine = parse_schedule("cosine")
    assert cosine.factor(1, 10) == 1.0 and cosine.factor(6, 10) == pytest.approx(0.5)
    assert parse_schedule("exp:0.9").factor(3, 10) == pytest.approx(0.81)
    for bad in ("step:0:0.5", "step:2", "exp:2", "cosine:3", "linear", "exp:nan", "step:a:b"):
        with pytest.raises(ScheduleError):
            parse_schedule(bad)


def test_the_round_config_carries_the_scheduled_rate():
    strategy = build_strategy(
        StrategySettings(client_lr=0.1, lr_schedule=LrSchedule(kind="cosine"), num_rounds=4)
    )
    grid = QueryAnsweringGrid({1: 0, 2: 1})
    rates = []
    for server_round in (1, 2, 3, 4):
        msgs = list(strategy.configure_train(server_round, _arrays(GLOBAL), ConfigRecord(), grid))
        rates.append(msgs[0].content["config"]["lr"])
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * r / 4)) for r in range(4)]
    assert rates == pytest.approx(expected)
    constant = build_strategy(StrategySettings(client_lr=0.1))
    msgs = list(constant.configure_train(1, _arrays(GLOBAL), ConfigRecord(), grid))
    assert "lr" not in msgs[0].content["config"]  # the clients keep their own


def test_a_flower_strategy_object_and_a_metrics_aggregation_function():
    seen = []

    def worst_loss(records, weights):
        seen.append(weights)
        return {"worst-loss": max(r["train-loss"] for r in records)}

    strategy = build_strategy(
        StrategySettings(inner=FedAvgM(server_momentum=0.5), train_metrics_aggr_fn=worst_loss)
    )
    assert isinstance(strategy.inner, FedAvgM) and strategy.needs_mean_only
    list(strategy.configure_train(1, _arrays(GLOBAL), ConfigRecord(), QueryAnsweringGrid({1: 0})))
    delta = {"w": np.array([0.5, 0.0, 0.0], np.float32)}
    arrays, metrics = strategy.aggregate_train(1, [_reply(1, delta, n=2)])
    assert dict(metrics) == {"worst-loss": 0.5} and seen == [[2.0]]
    np.testing.assert_allclose(arrays["w"].numpy(), GLOBAL["w"] + delta["w"])  # first step


@pytest.mark.parametrize(
    "strategy, extra",
    [
        ("fedavgm", {}),
        ("fedadagrad", {}),
        ("qfedavg", {"qffl_q": 0.5}),
        ("bulyan", {}),
        ("fedavg", {"lr_schedule": "step:1:0.5"}),
    ],
)
def test_each_strategy_runs_a_real_federation(tmp_path, strategy, extra):
    settings = RunSettings(
        task="digits",
        num_server_rounds=2,
        strategy=strategy,
        min_available_nodes=5,
        num_partitions=5,
        local_epochs=1,
        **extra,
    )
    grid = HostileGrid(_client_app(), 5, honest=set(range(1, 6)))
    run_server_app(build_server_app(settings, out_dir=tmp_path), grid)
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 3 and all('"accepted_updates": 5' in r for r in rows[1:])
    final = np.load(tmp_path / "final_model.npz")
    assert all(np.isfinite(final[k]).all() for k in final.files)


def _client_app():
    from client_sdk import build_client_app
    from client_sdk.tasks import get_task
    from tests.helpers.simulated import iid_data

    return build_client_app(get_task, iid_data)
