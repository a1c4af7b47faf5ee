"""Device tiers, availability and the round deadline, in both engines."""

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from typer.testing import CliRunner

from client_sdk import model_arrays
from client_sdk.tasks import get_task
from pollen.cli import app
from server import MODEL_FILE, read_metrics
from simulations.batched import BatchedGrid
from simulations.heterogeneity import (
    DEFAULT_TIERS,
    DeviceTier,
    Heterogeneity,
    HeterogeneityError,
    HeterogeneousGrid,
    load_tiers,
)
from simulations.runner import SimulationSettings, simulate
from simulations.settings import SimulationRunSettings as RunSettings
from tests.helpers.simulated import iid_data as simulated_client_data
from wire import PAYLOAD_FIELD, POOLING_CONFIG_KEY, UPDATE_RECORD_KEY


def test_virtual_clock_adds_download_compute_and_upload():
    tier = DeviceTier("t", share=1.0, step_s=0.1, uplink_mbps=4.0, downlink_mbps=8.0)
    assert tier.seconds(1_000_000, 10, 500_000) == pytest.approx(3.0)  # 1 s + 1 s + 1 s


def test_tiers_and_availability_follow_their_shares_reproducibly():
    model = Heterogeneity(availability=0.7, seed=3)
    tiers = [model.tier_of(pid).name for pid in range(10_000)]
    for tier in DEFAULT_TIERS:
        assert tiers.count(tier.name) / 10_000 == pytest.approx(tier.share, abs=0.02)
    assert tiers == [Heterogeneity(seed=3).tier_of(pid).name for pid in range(10_000)]
    online = np.mean([model.online(pid, 5) for pid in range(10_000)])
    assert online == pytest.approx(0.7, abs=0.02)
    assert [model.online(p, 5) for p in range(50)] != [model.online(p, 6) for p in range(50)]


def test_tier_files_load_and_bad_ones_say_what_is_expected(tmp_path):
    good = tmp_path / "tiers.json"
    good.write_text(
        json.dumps([{"name": "x", "share": 1, "step_s": 0.5, "uplink_mbps": 1, "downlink_mbps": 2}])
    )
    assert load_tiers(str(good))[0].step_s == 0.5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"name": "x", "speed": 1}]))
    with pytest.raises(HeterogeneityError, match="step_s"):
        load_tiers(str(bad))
    with pytest.raises(HeterogeneityError, match="availability"):
        Heterogeneity(availability=0)


def _train(grid, **extra):
    arrays = model_arrays(get_task("digits").build_model(0))
    config = {
        **extra,
        "task": "digits",
        "seed": 0,
        "num-partitions": 4,
        "server-round": 1,
    }
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "config": ConfigRecord(config),
        }
    )
    return [Message(content, nid, MessageType.TRAIN) for nid in grid.get_node_ids()]


def test_a_deadline_nobody_meets_drops_every_update_and_the_server_waits_it_out():
    inner = BatchedGrid(task=get_task, data=simulated_client_data, num_nodes=4)
    grid = HeterogeneousGrid(inner, Heterogeneity(deadline_s=0.001))
    assert list(grid.send_and_receive(_train(inner))) == []
    metrics = grid.round_metrics()
    assert metrics["straggler_clients"] == 4 and metrics["simulated_round_s"] == 0.001
    assert grid.round_metrics() == {}
    query = Message(
        RecordDict({"config": ConfigRecord({})}), inner.get_node_ids()[0], MessageType.QUERY
    )
    assert len(list(grid.send_and_receive([query]))) == 1  # only train replies are clocked


def test_the_wrapped_engine_sends_each_update_alone_so_that_any_member_can_be_dropped():
    inner = BatchedGrid(task=get_task, data=simulated_client_data, num_nodes=4)
    grid = HeterogeneousGrid(inner, Heterogeneity(deadline_s=1e6))
    messages = _train(inner, **{POOLING_CONFIG_KEY: True})
    replies = list(grid.send_and_receive(messages))
    assert len(replies) == 4 and inner.stats.pooled_clients == 0
    assert all(PAYLOAD_FIELD in r.content[UPDATE_RECORD_KEY] for r in replies)
    assert POOLING_CONFIG_KEY not in messages[0].content["config"]


def test_an_offline_client_is_sent_nothing_and_its_state_stays_as_it_was():
    inner = BatchedGrid(task=get_task, data=simulated_client_data, num_nodes=4)
    model = Heterogeneity(availability=0.5, seed=1)
    grid = HeterogeneousGrid(inner, model)
    asked, send = [], inner.send_and_receive

    def counting(messages, **kwargs):
        messages = list(messages)
        asked.extend(m.metadata.message_type for m in messages)
        return send(messages, **kwargs)

    inner.send_and_receive = counting
    pids = {nid: ctx.node_config["partition-id"] for nid, ctx in inner._contexts.items()}
    online = {nid for nid, pid in pids.items() if model.online(pid, 1)}
    assert 0 < len(online) < 4  # this seed takes some nodes offline in round 1
    messages = _train(inner, **{"quant-bits": 4, "error-feedback": True})
    replies = list(grid.send_and_receive(messages))
    assert {r.metadata.src_node_id for r in replies} == online
    assert inner.stats.vectorized_clients == len(online)  # the offline ones did no work
    for nid, context in inner._contexts.items():  # only online nodes keep a residual
        assert (len(context.state) > 0) == (nid in online), nid
    assert grid.round_metrics()["offline_clients"] == 4 - len(online)
    assert asked.count(MessageType.QUERY) == 4 and asked.count(MessageType.TRAIN) == len(online)
    # partitions were asked once: the next round sends no queries
    again = list(grid.send_and_receive(_train(inner)))
    assert len(again) == len(online) and asked.count(MessageType.QUERY) == 4


def test_without_a_deadline_known_partitions_keep_pooling():
    inner = BatchedGrid(task=get_task, data=simulated_client_data, num_nodes=4)
    grid = HeterogeneousGrid(inner, Heterogeneity(availability=0.5, seed=1))
    replies = list(grid.send_and_receive(_train(inner, **{POOLING_CONFIG_KEY: True})))
    assert inner.stats.pooled_clients == len(replies) > 0


def test_both_engines_drop_the_same_clients_and_agree_on_the_model(tmp_path):
    def run(engine):
        settings = SimulationSettings(
            run=RunSettings(num_server_rounds=3, min_available_nodes=10, partition="iid"),
            clients=10,
            out_dir=tmp_path / engine,
            engine=engine,
            device_tiers="default",
            availability=0.8,
            deadline=2.0,
        )
        summary = simulate(settings)
        with np.load(tmp_path / engine / MODEL_FILE) as saved:
            model = {k: saved[k] for k in saved.files}
        return summary, read_metrics(tmp_path / engine / "metrics.jsonl")[1:], model

    flower, flower_rows, flower_model = run("flower")
    batched, batched_rows, batched_model = run("batched")
    keys = (
        "accepted_updates",
        "dropped_clients",
        "offline_clients",
        "straggler_clients",
        "simulated_round_s",
    )
    assert [[r[k] for k in keys] for r in flower_rows] == [
        [r[k] for k in keys] for r in batched_rows
    ]
    assert flower["offline_clients"] > 0 and flower["straggler_clients"] > 0
    assert batched["pooled_client_updates"] == 0  # a dropped member cannot hide in a pool
    assert flower["simulated_time_s"] == batched["simulated_time_s"] == pytest.approx(6.0)
    assert (
        max(float(np.abs(flower_model[k] - batched_model[k]).max()) for k in flower_model) <= 1e-4
    )


def test_bad_heterogeneity_flags_name_the_flag(tmp_path):
    result = CliRunner().invoke(app, ["simulate", "--availability", "1.5", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--availability" in result.output
    result = CliRunner().invoke(
        app, ["simulate", "--device-tiers", "nope.json", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "--device-tiers" in result.output
