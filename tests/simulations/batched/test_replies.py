"""The batched engine's replies: pooled means against the per-client payloads they replace."""

import numpy as np
import pytest
import torch
from flwr.app import MessageType, RecordDict

from client_sdk.tasks import get_task
from client_sdk.training import TrainStats
from simulations.batched.chunk_job import ChunkJob
from simulations.batched.deltas import POOL_BLOCK, flat_deltas, pooled_delta
from simulations.batched.replies import (
    REPLY_PATHS,
    ReplyOptions,
    chunk_replies,
    pooled_replies,
    vectorized_replies,
)
from simulations.batched.training import TrainedChunk, stack_clients, train_clients
from tests.helpers.batched import CPU
from tests.helpers.batched import client_data as _clients
from tests.helpers.batched import round_plan as _plan
from tests.messages import message, node_context
from wire import (
    PAYLOAD_FIELD,
    POOL_ID_FIELD,
    POOL_SIZE_FIELD,
    POOL_WEIGHT_FIELD,
    POOLING_CONFIG_KEY,
    UPDATE_RECORD_KEY,
    decode_update,
)


def _trained_digits(k=5):
    task = get_task("digits")
    plan = _plan(task, {}, prune=True)
    chunk = train_clients(plan, stack_clients(_clients(task, k=k), CPU), list(range(k)), CPU)
    return plan, chunk


def _weighted_mean(rows, counts):
    weights = np.asarray(counts, np.float64)[:, None]
    return (rows.astype(np.float64) * weights).sum(0) / weights.sum()


def _assert_float32_close(mean, rows, counts):
    """Equal up to float32 rounding of the weighted terms (a wrong weight is off by ~1e-3)."""
    atol = 1e-7 * float(np.abs(rows).max())
    np.testing.assert_allclose(mean, _weighted_mean(rows, counts), rtol=1e-6, atol=atol)


def test_the_pooled_delta_is_the_weighted_mean_of_the_clients_deltas():
    plan, chunk = _trained_digits()
    rows, specs = flat_deltas(chunk, plan, CPU)
    mean, pooled_specs, total = pooled_delta(chunk, plan, CPU)
    counts = [s.num_examples for s in chunk.stats]
    assert len(set(counts)) > 1 and total == sum(counts) and pooled_specs == specs
    assert mean.dtype == np.float32 and mean.shape == rows.shape[1:]  # pruned values left out
    _assert_float32_close(mean, rows, counts)


def test_pooled_sums_span_several_blocks_exactly_enough():
    """More clients than one float32 block: blocks are summed in float64 (StreamingMean's way)."""
    plan, _ = _trained_digits(k=1)
    k = 3 * POOL_BLOCK + 5
    rng = np.random.default_rng(0)
    local = {
        name: torch.from_numpy(g + rng.normal(scale=1e-3, size=(k, *g.shape)).astype(np.float32))
        for name, g in plan.global_arrays.items()
    }
    counts = rng.integers(1, 80, size=k).tolist()
    chunk = TrainedChunk(local, [TrainStats(0.1, n, 1) for n in counts])
    rows, _ = flat_deltas(chunk, plan, CPU)
    mean, _, _ = pooled_delta(chunk, plan, CPU)
    _assert_float32_close(mean, rows, counts)


def _requests(k):
    content = RecordDict()
    return [message(content, src=0, dst=10 + i, message_type=MessageType.TRAIN) for i in range(k)]


def test_one_reply_carries_the_pool_and_every_member_keeps_its_metrics():
    plan, chunk = _trained_digits()
    contexts = [node_context(i, 5, node_id=10 + i) for i in range(5)]
    requests = _requests(5)
    pooled = pooled_replies(ChunkJob(plan, requests, contexts, chunk, CPU))
    single = vectorized_replies(ChunkJob(plan, requests, contexts, chunk, CPU))
    carrier = pooled[0].content[UPDATE_RECORD_KEY]
    counts = [s.num_examples for s in chunk.stats]
    assert carrier[POOL_SIZE_FIELD] == 5 and carrier[POOL_WEIGHT_FIELD] == sum(counts)
    assert {r.content[UPDATE_RECORD_KEY][POOL_ID_FIELD] for r in pooled} == {carrier[POOL_ID_FIELD]}
    assert all(PAYLOAD_FIELD not in r.content[UPDATE_RECORD_KEY] for r in pooled[1:])
    update = decode_update(carrier[PAYLOAD_FIELD], masks=plan.masks, expected_round=2)
    rows, specs = flat_deltas(chunk, plan, CPU)
    tensors = update.as_dict()
    values = np.concatenate(
        [
            tensors[s.name][plan.masks.masks[s.name]]
            if s.name in plan.masks.masks
            else tensors[s.name].ravel()
            for s in specs
        ]
    )
    _assert_float32_close(values, rows, counts)
    for p, s in zip(pooled, single, strict=True):
        assert p.metadata.reply_to_message_id == s.metadata.reply_to_message_id
        # same metrics as the per-client reply, upload bytes included (same float32 size)
        assert dict(p.content["metrics"]) == dict(s.content["metrics"])


def test_a_pool_whose_mean_is_not_finite_is_not_built():
    plan, chunk = _trained_digits()
    name = next(iter(chunk.local))
    chunk.local[name][3].view(-1)[0] = float("nan")
    contexts = [node_context(i, 5) for i in range(5)]
    assert pooled_replies(ChunkJob(plan, _requests(5), contexts, chunk, CPU)) is None


def test_the_reply_paths_are_tried_from_the_least_to_the_most_per_client_work():
    names = [path.name for path in REPLY_PATHS]
    assert names == [
        "pooled",
        "float32",
        "pooled-quantized",
        "quantized",
        "secure",
        "sdk",
    ]


@pytest.mark.parametrize(
    ("config", "options", "want"),
    [
        ({}, ReplyOptions(pool=False), (0, 0)),  # float32 rows
        ({POOLING_CONFIG_KEY: True}, ReplyOptions(), (5, 0)),  # one pool
        ({POOLING_CONFIG_KEY: True}, ReplyOptions(pool=False), (0, 0)),  # the engine said no
        ({"quant-bits": 4}, ReplyOptions(), (0, 0)),  # the device codec
        ({"quant-bits": 4}, ReplyOptions(on_device=False), (0, 5)),  # the SDK's encoder
        ({"topk": 0.5}, ReplyOptions(), (0, 5)),
        ({POOLING_CONFIG_KEY: True}, ReplyOptions(hook=lambda d, c, cfg: d), (0, 5)),
    ],
)
def test_each_chunk_takes_the_first_path_that_applies(config, options, want):
    task = get_task("digits")
    plan = _plan(task, config)
    chunk = train_clients(plan, stack_clients(_clients(task, k=5), CPU), list(range(5)), CPU)
    contexts = [node_context(i, 5, node_id=10 + i) for i in range(5)]
    built = chunk_replies(ChunkJob(plan, _requests(5), contexts, chunk, CPU), options)
    assert (built.pooled, built.by_sdk) == want and len(built.replies) == 5
    assert not any(r.has_error() for r in built.replies)
