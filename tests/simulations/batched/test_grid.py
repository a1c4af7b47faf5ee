"""BatchedGrid as a Flower Grid: message handling, fallbacks and errors, with real training."""

import dataclasses
import logging

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from torch import nn

from client_sdk import model_arrays
from client_sdk.tasks import get_task
from client_sdk.upload import stored_residual
from simulations.batched import BatchedGrid
from simulations.batched.memory import SAFETY, MemoryPlanner
from tests.helpers.simulated import iid_data as simulated_client_data
from tests.helpers.simulated import split_data
from wire import (
    PAYLOAD_FIELD,
    POOL_ID_FIELD,
    POOL_MEMBER_BYTES_FIELD,
    POOL_WEIGHT_FIELD,
    POOLING_CONFIG_KEY,
    UPDATE_RECORD_KEY,
    UpdateRejected,
    decode_update,
)

CONFIG = {"task": "digits", "seed": 0, "num-partitions": 4, "server-round": 1}


def _grid(task=get_task, nodes=4, partition="iid", **kw):
    return BatchedGrid(task=task, data=split_data(partition), num_nodes=nodes, **kw)


def _train_messages(grid, task, config=None):
    arrays = ArrayRecord({k: Array(v) for k, v in model_arrays(task.build_model(0)).items()})
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({**CONFIG, **(config or {})})})
    return [Message(content, nid, MessageType.TRAIN) for nid in grid.get_node_ids()]


def test_push_then_pull_answers_every_message_once():
    grid = _grid()
    queries = [
        Message(RecordDict({"config": ConfigRecord({})}), nid, MessageType.QUERY)
        for nid in grid.get_node_ids()
    ]
    ids = list(grid.push_messages(queries))
    replies = list(grid.pull_messages(ids))
    assert sorted(int(r.content["node-info"]["partition-id"]) for r in replies) == [0, 1, 2, 3]
    assert {r.metadata.reply_to_message_id for r in replies} == set(ids)
    assert list(grid.pull_messages(ids)) == []


def test_train_replies_decode_and_every_client_is_vectorized():
    grid = _grid()
    replies = list(grid.send_and_receive(_train_messages(grid, get_task("digits"))))
    assert len(replies) == 4 and not any(r.has_error() for r in replies)
    for reply in replies:
        update = decode_update(reply.content[UPDATE_RECORD_KEY][PAYLOAD_FIELD], expected_round=1)
        assert any(np.abs(t).max() > 0 for t in update.tensors)
    assert grid.stats.vectorized_clients == 4 and grid.stats.looped_clients == 0
    assert grid.memory.peak_bytes > 0 and grid.stats.chunk_sizes == [4]


def test_error_feedback_keeps_each_nodes_residual_in_its_own_context():
    grid = _grid()
    messages = _train_messages(grid, get_task("digits"), {"quant-bits": 2, "error-feedback": True})
    replies = list(grid.send_and_receive(messages))
    norms = [r.content["metrics"]["residual-norm"] for r in replies]
    assert all(n > 0 for n in norms) and len(set(norms)) == 4


def test_a_batchnorm_model_falls_back_to_the_per_client_loop_with_the_reason(caplog):
    base = get_task("digits")
    task = dataclasses.replace(
        base,
        model_fn=lambda: nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.Linear(16, 10)),
    )
    grid = _grid(task=task)
    with caplog.at_level(logging.WARNING):
        replies = list(grid.send_and_receive(_train_messages(grid, task)))
    assert len(replies) == 4 and not any(r.has_error() for r in replies)
    assert grid.stats.looped_clients == 4 and grid.stats.vectorized_clients == 0
    assert "BatchNorm" in grid.stats.fallback_reason and "BatchNorm" in caplog.text


def test_a_client_whose_data_fails_answers_with_an_error_and_the_rest_train():
    def data(context, config):
        if context.node_config["partition-id"] == 2:
            raise ValueError("disk full on this device")
        return simulated_client_data(context, config)

    grid = BatchedGrid(task=get_task, data=data, num_nodes=4)
    replies = list(grid.send_and_receive(_train_messages(grid, get_task("digits"))))
    failed = [r for r in replies if r.has_error()]
    assert len(replies) == 4 and len(failed) == 1
    assert "disk full" in failed[0].error.reason


def test_a_message_to_an_unknown_node_gets_an_error_reply():
    grid = _grid()
    msg = Message(RecordDict({"config": ConfigRecord({})}), 12345, MessageType.QUERY)
    (reply,) = grid.send_and_receive([msg])
    assert reply.has_error() and "not connected" in reply.error.reason


def test_chunks_follow_clients_per_batch():
    grid = _grid(nodes=5, clients_per_batch=2)
    messages = _train_messages(grid, get_task("digits"), {"num-partitions": 5})
    assert len(list(grid.send_and_receive(messages))) == 5
    assert grid.stats.chunk_sizes == [2, 2, 1]


def test_memory_planner_caps_cpu_chunks_and_halves_after_oom():
    planner = MemoryPlanner(torch.device("cpu"))
    planner.estimate(get_task("tutorial-cnn").build_model(0), np.zeros((1, 3, 32, 32)), 10, 50)
    assert 1 <= planner.clients_per_chunk(10_000) <= 50
    assert planner.clients_per_chunk(3) == 3
    before = planner.per_client_bytes
    assert planner.shrink_after_oom(40) == 20 and planner.per_client_bytes == 2 * before
    fixed = MemoryPlanner(torch.device("cpu"), fixed_k=8)
    assert fixed.clients_per_chunk(100) == 8 and fixed.shrink_after_oom(8) == 4
    assert fixed.clients_per_chunk(100) == 4


def test_on_cuda_the_first_estimate_makes_room_for_the_unfold_layouts_columns():
    model, example = get_task("tutorial-cnn").build_model(0), np.zeros((1, 3, 32, 32))
    cpu, cuda = MemoryPlanner(torch.device("cpu")), MemoryPlanner(torch.device("cuda"))
    for planner in (cpu, cuda):
        planner.estimate(model, example, 10, 50)
    # per image: conv1 unfolds 3*5*5 values at 28x28 outputs, conv2 6*5*5 at 10x10 (float32)
    columns = 4 * (3 * 25 * 28 * 28 + 6 * 25 * 10 * 10)
    assert cuda.per_client_bytes - cpu.per_client_bytes == SAFETY * 3 * 10 * columns


@pytest.mark.parametrize("nodes", [1, 3])
def test_node_ids_are_reproducible_from_the_seed(nodes):
    assert list(_grid(nodes=nodes, seed=5).get_node_ids()) == list(
        _grid(nodes=nodes, seed=5).get_node_ids()
    )


class _ViewingCNN(nn.Module):
    """A CNN that ``.view()``s its activations, which the packed layout cannot give it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 5)
        self.fc = nn.Linear(4 * 14 * 14, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.fc(h.view(h.shape[0], -1))


def test_image_tasks_train_packed_and_a_model_the_kernels_cannot_run_uses_vmaps_rules(caplog):
    cnn = get_task("tutorial-cnn:6")
    config = {"task": "tutorial-cnn:6"}
    grid = _grid(task=cnn, partition="natural")
    replies = list(grid.send_and_receive(_train_messages(grid, cnn, config)))
    assert not any(r.has_error() for r in replies) and grid.stats.layout == "packed"

    viewing = dataclasses.replace(cnn, model_fn=_ViewingCNN)
    grid = _grid(task=viewing, partition="natural")
    with caplog.at_level(logging.WARNING):
        replies = list(grid.send_and_receive(_train_messages(grid, viewing, config)))
    assert len(replies) == 4 and not any(r.has_error() for r in replies)
    assert grid.stats.layout == "grouped" and "view size" in caplog.text
    assert grid.stats.vectorized_clients == 4 and grid.stats.looped_clients == 0


def test_the_unfold_layout_runs_a_viewing_cnn_and_trains_as_vmaps_rules_do(monkeypatch, caplog):
    viewing = dataclasses.replace(get_task("tutorial-cnn:6"), model_fn=_ViewingCNN)
    config = {"task": "tutorial-cnn:6"}
    losses = {}
    for layout in ("grouped", "unfold"):
        monkeypatch.setenv("POLLEN_LAYOUT", layout)
        grid = _grid(task=viewing, partition="natural")
        with caplog.at_level(logging.WARNING):
            replies = list(grid.send_and_receive(_train_messages(grid, viewing, config)))
        assert not any(r.has_error() for r in replies) and grid.stats.layout == layout
        losses[layout] = [r.content["metrics"]["train-loss"] for r in replies]
    assert "could not run" not in caplog.text
    assert losses["unfold"] == pytest.approx(losses["grouped"], rel=1e-5)


def test_a_layout_override_that_names_no_layout_is_refused(monkeypatch):
    monkeypatch.setenv("POLLEN_LAYOUT", "diagonal")
    grid = _grid()
    with pytest.raises(ValueError, match="POLLEN_LAYOUT='diagonal': use one of grouped"):
        list(grid.send_and_receive(_train_messages(grid, get_task("digits"))))


def _pools(replies):
    return [r.content[UPDATE_RECORD_KEY].get(POOL_ID_FIELD) for r in replies]


def test_a_chunk_is_pooled_only_when_the_server_allows_it():
    task = get_task("digits")
    allowed = {POOLING_CONFIG_KEY: True}
    grid = _grid(clients_per_batch=3)
    replies = list(grid.send_and_receive(_train_messages(grid, task, allowed)))
    ids = _pools(replies)
    assert None not in ids and len(set(ids)) == 2  # chunks of 3 and 1 clients, one pool each
    assert sum(PAYLOAD_FIELD in r.content[UPDATE_RECORD_KEY] for r in replies) == 2
    assert grid.stats.pooled_clients == 4 and grid.stats.vectorized_clients == 4
    quantized = {**allowed, "quant-bits": 8}  # pooled on CUDA by default, here when asked
    for pool_quantized, pooled in ((None, 0), (False, 0), (True, 4)):
        grid = _grid(pool_quantized=pool_quantized)
        replies = list(grid.send_and_receive(_train_messages(grid, task, quantized)))
        assert grid.stats.pooled_clients == pooled == 4 * (None not in _pools(replies))
    for config in ({}, {**allowed, "topk": 0.1}):  # not allowed; top-k (the SDK's encoder)
        grid = _grid(pool_quantized=True)
        assert _pools(grid.send_and_receive(_train_messages(grid, task, config))) == [None] * 4
        assert grid.stats.pooled_clients == 0
    grid = _grid(pool_uploads=False)
    assert _pools(grid.send_and_receive(_train_messages(grid, task, allowed))) == [None] * 4


def _flat(payload: bytes) -> np.ndarray:
    return np.concatenate([t.ravel() for t in decode_update(payload).tensors]).astype(np.float64)


def _server_view(replies) -> tuple[np.ndarray, list[int]]:
    """The weighted mean of the decoded updates (a pool's carrier holds it), the bytes counted."""
    sizes = [r.content["metrics"]["upload-bytes"] for r in replies]
    records = [r.content[UPDATE_RECORD_KEY] for r in replies]
    carriers = [u for u in records if POOL_WEIGHT_FIELD in u]
    if carriers:
        assert len(carriers) == 1 and POOL_MEMBER_BYTES_FIELD in carriers[0]
        return _flat(carriers[0][PAYLOAD_FIELD]), sizes
    weights = [r.content["metrics"]["num-examples"] for r in replies]
    total = sum(w * _flat(u[PAYLOAD_FIELD]) for w, u in zip(weights, records, strict=True))
    return total / sum(weights), sizes


def test_a_quantized_pool_carries_the_mean_the_server_would_decode_and_the_same_residuals():
    """4-bit + error feedback, two rounds: pooled against one payload per client."""
    task = get_task("digits")
    config = {POOLING_CONFIG_KEY: True, "quant-bits": 4, "error-feedback": True}
    pooled, single = _grid(pool_quantized=True), _grid()  # a CPU pools them only when asked
    for server_round in (1, 2):  # the second round adds the residuals the first one kept
        config["server-round"] = server_round
        ours = list(pooled.send_and_receive(_train_messages(pooled, task, config)))
        theirs = list(single.send_and_receive(_train_messages(single, task, config)))
        mean, sizes = _server_view(ours)
        reference, payload_sizes = _server_view(theirs)
        assert np.abs(mean - reference).max() <= 1e-6
        assert sizes == payload_sizes and len(set(sizes)) == 1  # each counts its own payload
        for mine, ref in zip(ours, theirs, strict=True):
            for key in ("residual-carried", "residual-norm", "train-loss"):
                assert mine.content["metrics"][key] == ref.content["metrics"][key]
        for nid in pooled.get_node_ids():
            ours_state, theirs_state = pooled._contexts[nid].state, single._contexts[nid].state
            a, b = stored_residual(ours_state), stored_residual(theirs_state)
            assert list(a) == list(b) and all(a[n].tobytes() == b[n].tobytes() for n in b)
    assert pooled.stats.pooled_clients == 8 and single.stats.pooled_clients == 0


def test_a_chunk_whose_updates_are_not_finite_sends_each_payload_for_the_server_to_judge():
    grid = _grid()
    config = {POOLING_CONFIG_KEY: True, "lr": 1e38}  # diverges to inf/nan
    replies = list(grid.send_and_receive(_train_messages(grid, get_task("digits"), config)))
    assert _pools(replies) == [None] * 4 and grid.stats.pooled_clients == 0
    payloads = [r.content[UPDATE_RECORD_KEY][PAYLOAD_FIELD] for r in replies]
    with pytest.raises(UpdateRejected, match="non-finite"):
        decode_update(payloads[0], expected_round=1)


def test_top_k_updates_are_encoded_by_the_sdk_and_counted():
    grid = _grid()
    config = {"topk": 0.1, "quant-bits": 8}
    replies = list(grid.send_and_receive(_train_messages(grid, get_task("digits"), config)))
    assert grid.stats.sdk_encoded_clients == 4 == grid.stats.vectorized_clients
    for reply in replies:
        update = decode_update(reply.content[UPDATE_RECORD_KEY][PAYLOAD_FIELD], expected_round=1)
        assert [s["name"] for s in update.stages] == ["select", "topk", "quantize"]


def test_the_device_codec_sends_the_sdk_encoders_bytes_round_after_round():
    task = get_task("digits")
    config = {"quant-bits": 4, "error-feedback": True}
    grids = [_grid(), _grid(encode_on_device=False)]
    for server_round in (1, 2):  # round 2 adds the residuals round 1 left in each node's state
        sent = [
            {
                r.metadata.src_node_id: r.content[UPDATE_RECORD_KEY][PAYLOAD_FIELD]
                for r in grid.send_and_receive(
                    _train_messages(grid, task, {**config, "server-round": server_round})
                )
            }
            for grid in grids
        ]
        assert sent[0] == sent[1] and len(sent[0]) == 4
    assert grids[0].stats.sdk_encoded_clients == 0 and grids[1].stats.sdk_encoded_clients == 8
