"""The chunk runner: chunks as the planner says, K halved after running out of memory, every
client answered once, largest clients first."""

import dataclasses
import logging

import pytest
import torch
from flwr.app import MessageType, RecordDict

from client_sdk.tasks import get_task
from simulations.batched.caches import ClientCaches
from simulations.batched.chunks import ChunkRunner
from simulations.batched.layouts import LayoutTuner
from simulations.batched.memory import MemoryPlanner
from simulations.batched.replies import ReplyOptions
from simulations.batched.secure import SecureRound
from simulations.batched.stats import EngineStats
from simulations.batched.training import NotVectorizable
from tests.helpers.batched import CPU
from tests.helpers.batched import round_plan as _plan
from tests.helpers.simulated import split_data
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
