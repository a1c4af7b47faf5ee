"""Pooled uploads on the server: a whole, correctly weighted pool equals its members' updates."""

import logging

import numpy as np
import pytest
from flwr.app import ConfigRecord, MessageType, MetricRecord, RecordDict

from strategies import SecAggSettings, StrategySettings, build_strategy
from tests.helpers.replies import GLOBAL
from tests.helpers.replies import configured as _configured
from tests.helpers.replies import float32_arrays as _arrays
from tests.helpers.replies import train_reply as _reply
from tests.messages import message
from tests.strategies.fake_grid import QueryAnsweringGrid
from wire import (
    PAYLOAD_FIELD,
    POOL_ID_FIELD,
    POOL_MEMBER_BYTES_FIELD,
    POOL_SIZE_FIELD,
    POOL_WEIGHT_FIELD,
    POOLING_CONFIG_KEY,
    UPDATE_RECORD_KEY,
    encode_update,
)

DELTAS = [np.array(d, np.float32) for d in ([1.0, 0.0, -1.0], [0.0, 3.0, 0.5], [2.0, -1.0, 0.0])]
COUNTS = [1, 3, 2]


def _pool(
    nodes, deltas, counts, *, pool_id="p1", server_round=1, size=None, weight=None, member=None
):
    """Replies of one pool as the batched engine sends them: the first carries the mean
    (``member``: the pool-member-bytes field, a quantized update's size)."""
    mean = sum(np.float64(n) * d for n, d in zip(counts, deltas, strict=True)) / sum(counts)
    payload = encode_update({"w": mean.astype(np.float32)}, server_round=server_round)
    replies = []
    for i, (node, n) in enumerate(zip(nodes, counts, strict=True)):
        record = ConfigRecord({POOL_ID_FIELD: pool_id})
        if i == 0:
            record[PAYLOAD_FIELD] = payload
            record[POOL_SIZE_FIELD] = len(nodes) if size is None else size
            record[POOL_WEIGHT_FIELD] = float(sum(counts)) if weight is None else weight
            if member is not None:
                record[POOL_MEMBER_BYTES_FIELD] = member
        metrics = MetricRecord(
            {"num-examples": n, "train-loss": 0.1 * node, "partition-id": node - 1}
        )
        content = RecordDict({UPDATE_RECORD_KEY: record, "metrics": metrics})
        replies.append(message(content, src=node, dst=1, message_type=MessageType.TRAIN))
    return replies, len(payload)


def test_mean_strategies_allow_pooling_and_the_others_do_not():
    _, msgs = _configured("fedavg")
    assert msgs[0].content["config"][POOLING_CONFIG_KEY] is True
    for name, kw in [
        ("fedmedian", {}),
        ("krum", {"num_malicious": 0}),
        ("fedavg", {"clip_norm": 1.0}),
        ("fedavg", {"secure": SecAggSettings()}),
    ]:
        strategy = build_strategy(StrategySettings(name=name, **kw))
        assert not strategy.pooling, (name, kw)


def test_a_pool_aggregates_like_its_members_sent_one_by_one():
    one_by_one, _ = _configured(nodes=3)
    replies = [
        _reply(i + 1, {"w": d}, n=n) for i, (d, n) in enumerate(zip(DELTAS, COUNTS, strict=True))
    ]
    for r, node in zip(replies, (1, 2, 3), strict=True):
        r.content["metrics"]["train-loss"] = 0.1 * node
    expected, expected_metrics = one_by_one.aggregate_train(1, replies)

    pooled, _ = _configured(nodes=3)
    pool, payload_bytes = _pool([1, 2], DELTAS[:2], COUNTS[:2])
    single = _reply(3, {"w": DELTAS[2]}, n=COUNTS[2])
    single.content["metrics"]["train-loss"] = 0.3
    arrays, metrics = pooled.aggregate_train(1, [single, *pool])
    np.testing.assert_allclose(arrays["w"].numpy(), expected["w"].numpy(), rtol=0, atol=1e-6)
    assert metrics["train-loss"] == pytest.approx(expected_metrics["train-loss"], abs=1e-12)
    stats = pooled.rounds[1].as_metrics()
    assert stats["accepted_updates"] == 3 and stats["pooled_updates"] == 2
    assert stats["rejected_updates"] == 0
    # every member counts the float32 payload it would have sent, the single its own
    assert stats["upload_bytes_total"] == 2 * payload_bytes + len(
        single.content[UPDATE_RECORD_KEY][PAYLOAD_FIELD]
    )


def test_a_pool_of_quantized_updates_counts_each_members_own_payload():
    strategy, _ = _configured(nodes=2)
    pool, carrier_bytes = _pool([1, 2], DELTAS[:2], COUNTS[:2], member=77)
    arrays, _ = strategy.aggregate_train(1, pool)
    mean = (COUNTS[0] * DELTAS[0] + COUNTS[1] * DELTAS[1]) / sum(COUNTS[:2])
    np.testing.assert_allclose(arrays["w"].numpy(), GLOBAL["w"] + mean, atol=1e-6)
    stats = strategy.rounds[1].as_metrics()
    assert stats["upload_bytes_total"] == 2 * 77 != 2 * carrier_bytes
    assert stats["pooled_updates"] == 2


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"size": 3}, "counts 3 members but 2 replied"),
        ({"weight": 5.0}, "is not the sum of the members' 'num-examples'"),
        ({"server_round": 2}, "round"),
        ({"member": 0}, "pool-member-bytes must be a positive int, got 0"),
        ({"member": "12"}, "pool-member-bytes must be a positive int, got '12'"),
    ],
)
def test_a_broken_pool_is_rejected_member_by_member_and_the_round_goes_on(change, why, caplog):
    strategy, _ = _configured(nodes=3)
    pool, _ = _pool([1, 2], DELTAS[:2], COUNTS[:2], **change)
    single = _reply(3, {"w": DELTAS[2]}, n=COUNTS[2])
    with caplog.at_level(logging.WARNING):
        arrays, _ = strategy.aggregate_train(1, [*pool, single])
    np.testing.assert_allclose(arrays["w"].numpy(), GLOBAL["w"] + DELTAS[2], atol=1e-6)
    stats = strategy.rounds[1].as_metrics()
    assert stats["accepted_updates"] == 1 and stats["rejected_updates"] == 2
    assert {r["node_id"] for r in stats["rejections"]} == {1, 2}
    assert why in stats["rejections"][0]["detail"]
    assert "rejected 2 pooled updates" in caplog.text


def test_a_pool_with_a_missing_member_is_not_used():
    """A member dropped after pooling (its reply never came) is still inside the mean."""
    strategy, _ = _configured(nodes=3)
    pool, _ = _pool([1, 2, 3], DELTAS, COUNTS)
    arrays, _ = strategy.aggregate_train(1, pool[:2])
    assert arrays is None
    assert [r.reason for r in strategy.rounds[1].rejected] == ["bad-pool", "bad-pool"]


def test_a_pool_needs_exactly_one_carrier():
    strategy, _ = _configured(nodes=2)
    pool, _ = _pool([1, 2], DELTAS[:2], COUNTS[:2])
    del pool[0].content[UPDATE_RECORD_KEY][PAYLOAD_FIELD]
    assert strategy.aggregate_train(1, pool) == (None, None)
    assert "exactly one reply carrying the payload, got 0" in strategy.rounds[1].rejected[0].detail


def test_a_strategy_that_needs_every_update_refuses_pools():
    strategy = build_strategy(StrategySettings(name="fedmedian"))
    grid = QueryAnsweringGrid({1: 0, 2: 1})
    msgs = list(strategy.configure_train(1, _arrays(GLOBAL), ConfigRecord({"task": "t"}), grid))
    assert POOLING_CONFIG_KEY not in msgs[0].content["config"]
    pool, _ = _pool([1, 2], DELTAS[:2], COUNTS[:2])
    assert strategy.aggregate_train(1, pool) == (None, None)
    assert "needs every client's own update" in strategy.rounds[1].rejected[0].detail
