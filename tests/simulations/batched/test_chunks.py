"""The chunk runner: chunks as the planner says, K halved after running out of memory, every
client answered once, largest clients first."""

import dataclasses
import logging

import numpy as np
import pytest
import torch
from flwr.app import MessageType, RecordDict
from torch import nn

from client_sdk.tasks import get_task
from client_sdk.tasks.sizes import client_sizes
from simulations.batched.caches import ClientCaches
from simulations.batched.chunks import ChunkPlan, ChunkRunner, chunk_cost, plan_chunks
from simulations.batched.layouts import LayoutTuner
from simulations.batched.memory import MemoryPlanner
from simulations.batched.replies import ReplyOptions
from simulations.batched.secure import SecureRound
from simulations.batched.stats import EngineStats
from simulations.batched.training import NotVectorizable
from tests.helpers.batched import CPU
from tests.helpers.batched import round_plan as _plan
from tests.helpers.simulated import split_data
from tests.helpers.skewed import skewed_clients
from tests.messages import message, node_context
from wire import PAYLOAD_FIELD, UPDATE_RECORD_KEY, decode_update

CONFIG = {"task": "digits", "num-partitions": 5}
simulated_client_data = split_data("dirichlet:0.5")


class RunsOutAboveTwo(ClientCaches):
    """A device that holds at most two clients' batches: larger chunks run out of memory."""

    def device_batch(self, plan, pids, data, *, channels_last):
        if len(pids) > 2:
            raise torch.cuda.OutOfMemoryError(f"{len(pids)} clients do not fit")
        return super().device_batch(plan, pids, data, channels_last=channels_last)


class RecordsSizes(ClientCaches):
    """The train-set size of every client of every chunk stacked, in order."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sizes: list[int] = []

    def device_batch(self, plan, pids, data, *, channels_last):
        self.sizes += [len(d.y_train) for d in data]
        return super().device_batch(plan, pids, data, channels_last=channels_last)


def _runner(caches_type=ClientCaches, fixed_k=4):
    memory = MemoryPlanner(CPU, fixed_k=fixed_k)
    caches = caches_type(simulated_client_data, CPU)
    stats = EngineStats()
    tuner = LayoutTuner(CPU)
    runner = ChunkRunner(device=CPU, memory=memory, caches=caches, tuner=tuner, stats=stats)
    return runner, memory, stats


def _ready(plan, k=5):
    ready = []
    for pid in range(k):
        context = node_context(pid, k, node_id=100 + pid)
        msg = message(RecordDict(), src=0, dst=100 + pid, message_type=MessageType.TRAIN)
        ready.append((msg, context, simulated_client_data(context, plan.config)))
    return ready


def test_a_chunk_that_runs_out_of_memory_is_retried_with_half_the_clients(caplog):
    plan = _plan(get_task("digits"), CONFIG)
    runner, memory, stats = _runner(RunsOutAboveTwo)
    ready, outbox, secure = _ready(plan), {}, SecureRound()
    with caplog.at_level(logging.WARNING):
        runner.run(plan, ready, ReplyOptions(pool=False), secure, outbox)
    assert "out of GPU memory at K=4; retrying with 2" in caplog.text
    assert stats.chunk_sizes == [2, 2, 1] and memory.fixed_k == 2
    assert stats.vectorized_clients == 5 and secure.masks is None
    assert set(outbox) == {m.metadata.message_id for m, _, _ in ready}
    for msg, _, data in ready:
        reply = outbox[msg.metadata.message_id]
        assert reply.content["metrics"]["num-examples"] == data.num_train
        decode_update(reply.content[UPDATE_RECORD_KEY][PAYLOAD_FIELD], expected_round=2)


def test_chunks_hold_the_largest_clients_first():
    plan = _plan(get_task("digits"), CONFIG)
    runner, _, stats = _runner(RecordsSizes, fixed_k=2)
    runner.run(plan, _ready(plan), ReplyOptions(pool=False), SecureRound(), {})
    sizes = runner.caches.sizes
    assert len(set(sizes)) > 1 and stats.chunk_sizes == [2, 2, 1]
    assert sizes == sorted(sizes, reverse=True)


def test_a_loss_that_is_not_a_per_sample_mean_is_not_vectorizable():
    task = get_task("digits")
    summed = dataclasses.replace(task, loss_fn=lambda out, y: out.sum())
    plan = _plan(summed, CONFIG)
    runner, _, stats = _runner()
    outbox = {}
    with pytest.raises(NotVectorizable, match="not the mean of per-sample losses"):
        runner.run(plan, _ready(plan), ReplyOptions(), SecureRound(), outbox)
    assert outbox == {} and stats.vectorized_clients == 0


def test_one_chunk_of_equal_clients_or_one_thread_trains_in_order():
    steps = np.full(50, 5)
    for workers in (1, 2):  # the 50-client benchmark's round: one chunk, every thread
        assert plan_chunks(steps, 50, workers) == ChunkPlan([list(range(50))], False)
    tiny = plan_chunks(np.array([3, 1]), 1, 2)
    assert tiny == ChunkPlan([[0], [1]], False)  # the long chunk alone takes most of the time


def test_skewed_chunks_are_balanced_by_their_planned_steps():
    sizes = client_sizes("pareto:2", 50, 100, seed=0)
    steps = np.sort(-(-sizes // 10))[::-1]
    in_order = [list(range(0, 50)), list(range(50, 100))]
    assert chunk_cost(steps[in_order[0]]) > 3 * chunk_cost(steps[in_order[1]])
    assert not plan_chunks(steps, 50, 2).at_once  # two chunks: in order (benchmarks/README)
    in_order = [list(range(0, 25)), list(range(25, 50))]  # four chunks of 25 from here on
    chosen = plan_chunks(steps, 25, 2)
    assert chosen.at_once and plan_chunks(steps, 25, 2) == chosen  # deterministic
    assert sorted(i for c in chosen.chunks for i in c) == list(range(100))
    assert all(c == sorted(c) and len(c) <= 25 for c in chosen.chunks)
    costs = [chunk_cost(steps[c]) for c in chosen.chunks]  # the two costliest run at once
    assert costs == sorted(costs, reverse=True) and costs[0] < 1.1 * costs[1]
    assert costs[0] < 0.75 * chunk_cost(steps[in_order[0]])


def _cnn_ready(task, sizes):
    """Image clients of ``sizes`` for ``task``, and its round plan (minibatches of 10)."""
    plan = _plan(task, {"batch-size": 10, "local-epochs": 1})
    ready = [
        (
            message(RecordDict(), src=0, dst=100 + pid, message_type=MessageType.TRAIN),
            node_context(pid, len(sizes), node_id=100 + pid),
            data,
        )
        for pid, data in enumerate(skewed_clients(task, sizes))
    ]
    return plan, ready


def test_chunks_trained_at_once_answer_as_each_alone_on_one_thread():
    saved = torch.get_num_threads()
    plan, ready = _cnn_ready(get_task("tutorial-cnn:50"), [30] * 8)
    chosen = plan_chunks(np.full(8, 3), 2, 2)  # four chunks of equal work
    assert chosen == ChunkPlan([[0, 2], [4, 6], [1, 3], [5, 7]], True)
    try:
        torch.set_num_threads(2)
        runner, _, stats = _runner(fixed_k=2)
        at_once = {}
        runner.run(plan, ready, ReplyOptions(pool=False), SecureRound(), at_once)
        assert torch.get_num_threads() == 2
        assert stats.chunk_sizes == [len(c) for c in chosen.chunks]
        torch.set_num_threads(1)
        alone = {}
        for chunk in chosen.chunks:  # a run of one chunk's clients trains that chunk
            runner, _, stats = _runner(fixed_k=len(chunk))
            runner.run(
                plan, [ready[i] for i in chunk], ReplyOptions(pool=False), SecureRound(), alone
            )
            assert stats.chunk_sizes == [len(chunk)]
    finally:
        torch.set_num_threads(saved)
    assert set(alone) == set(at_once) == {m.metadata.message_id for m, _, _ in ready}
    for key, reply in alone.items():
        payload = reply.content[UPDATE_RECORD_KEY][PAYLOAD_FIELD]
        assert isinstance(payload, bytes)
        assert at_once[key].content[UPDATE_RECORD_KEY][PAYLOAD_FIELD] == payload


class _ViewingCNN(nn.Module):
    """A CNN that ``.view()``s its activations, which the packed kernels cannot give it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 5)
        self.fc = nn.Linear(2 * 28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.shape[0], -1))


def test_chunks_at_once_that_the_packed_kernels_cannot_run_train_with_vmaps_rules(caplog):
    viewing = dataclasses.replace(get_task("tutorial-cnn:50"), model_fn=_ViewingCNN)
    plan, ready = _cnn_ready(viewing, [30] * 8)
    saved, outbox = torch.get_num_threads(), {}
    try:
        torch.set_num_threads(2)  # four chunks at once (as above), each failing in the pool
        runner, _, stats = _runner(fixed_k=2)
        with caplog.at_level(logging.WARNING):
            runner.run(plan, ready, ReplyOptions(pool=False), SecureRound(), outbox)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)
    assert "view size" in caplog.text and stats.layout == "grouped"
    assert stats.chunk_sizes == [2] * 4 and stats.vectorized_clients == 8
    assert set(outbox) == {m.metadata.message_id for m, _, _ in ready}
