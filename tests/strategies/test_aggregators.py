"""Aggregators, checked by hand on a 3-parameter model: the streaming mean is Flower's FedAvg,
a pool is its members, the secure sum is the plain sum, and no reply that came in is changed."""

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum, QFedAvg

from strategies import SecAggSettings, StrategySettings, build_strategy
from strategies.aggregators import (
    CollectAll,
    MeanAggregator,
    SecureSum,
    Update,
    aggregator_for,
    needs_only_mean,
)
from strategies.registry import PER_UPDATE_STRATEGIES, STRATEGY_CLASSES, SUM_STRATEGIES
from strategies.secagg import SecAggSession
from strategies.stats import RoundStats
from strategies.validation import ReplyLimits
from tests.helpers.replies import GLOBAL, configured, float32_arrays, train_reply
from tests.messages import message
from tests.strategies.fake_grid import QueryAnsweringGrid
from tests.strategies.secagg_grid import SecAggGrid
from wire.secagg_vector import SecAggVectorSpec

# three clients' updates of GLOBAL = [1, 2, 3] and their weights; by hand:
# mean update = (1*[1,0,-1] + 3*[0,3,0] + 4*[2,-2,4]) / 8 = [9, 1, 15] / 8
DELTAS = [np.array(d, np.float32) for d in ([1.0, 0.0, -1.0], [0.0, 3.0, 0.0], [2.0, -2.0, 4.0])]
COUNTS = [1, 3, 4]
MEAN_MODEL = [2.125, 2.125, 4.875]  # GLOBAL + [1.125, 0.125, 1.875]


def _local_reply(node, delta, n):
    """A plain Flower reply holding the client's local model, as FedAvg's own clients send."""
    content = RecordDict(
        {
            "arrays": float32_arrays({"w": GLOBAL["w"] + delta}),
            "metrics": MetricRecord({"num-examples": n, "train-loss": 0.5}),
        }
    )
    return message(content, src=node, dst=1, message_type=MessageType.TRAIN)


def _update(node, delta, n):
    reply = _local_reply(node, delta, n)
    return Update([reply], {"w": delta}, float(n), [float(n)], [{"num-examples": n}])


def _snapshot(replies):
    """Everything a reply holds, by value (arrays as bytes), and its content object."""
    out = []
    for msg in replies:
        records = {}
        for key, record in msg.content.items():
            if isinstance(record, ArrayRecord):
                records[key] = {k: v.numpy().tobytes() for k, v in record.items()}
            else:
                records[key] = {
                    k: (list(v) if isinstance(v, list) else v) for k, v in record.items()
                }
        out.append((id(msg.content), records))
    return out


def test_the_streaming_mean_is_flowers_fedavg_over_the_same_replies():
    mean = MeanAggregator(GLOBAL)
    for node, (delta, n) in enumerate(zip(DELTAS, COUNTS, strict=True), start=1):
        mean.add(_update(node, delta, n))
    arrays, _ = FedAvg().aggregate_train(1, mean.strategy_input())
    flower, _ = FedAvg().aggregate_train(
        1, [_local_reply(i + 1, d, n) for i, (d, n) in enumerate(zip(DELTAS, COUNTS, strict=True))]
    )
    np.testing.assert_allclose(arrays["w"].numpy(), MEAN_MODEL, rtol=0, atol=1e-6)
    np.testing.assert_allclose(arrays["w"].numpy(), flower["w"].numpy(), rtol=0, atol=1e-6)
    assert mean.total == 8.0


def test_a_pool_partial_equals_its_members():
    # clients 1 and 2 pooled: their weighted mean [1, 9, -1] / 4 with total weight 4
    partial = (COUNTS[0] * DELTAS[0] + COUNTS[1] * DELTAS[1]) / (COUNTS[0] + COUNTS[1])
    np.testing.assert_array_equal(partial, [0.25, 2.25, -0.25])
    members = [_local_reply(1, DELTAS[0], 1), _local_reply(2, DELTAS[1], 3)]
    pooled = MeanAggregator(GLOBAL)
    pooled.add(Update(members, {"w": partial}, 4.0, [1.0, 3.0], [{}, {}]))
    pooled.add(_update(3, DELTAS[2], 4))
    one_by_one = MeanAggregator(GLOBAL)
    for node, (delta, n) in enumerate(zip(DELTAS, COUNTS, strict=True), start=1):
        one_by_one.add(_update(node, delta, n))
    assert pooled.total == one_by_one.total == 8.0
    np.testing.assert_allclose(pooled.mean.result()["w"], MEAN_MODEL, rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        pooled.mean.result()["w"], one_by_one.mean.result()["w"], rtol=0, atol=1e-6
    )


def test_collect_all_hands_flower_each_local_model():
    every = CollectAll(GLOBAL)
    for node, (delta, n) in enumerate(zip(DELTAS, COUNTS, strict=True), start=1):
        every.add(_update(node, delta, n))
    inputs = every.strategy_input()
    assert [m.metadata.src_node_id for m in inputs] == [1, 2, 3]
    arrays, _ = FedMedian().aggregate_train(1, inputs)
    # locals [2,2,2], [1,5,3], [3,0,7]: the coordinate-wise median
    np.testing.assert_array_equal(arrays["w"].numpy(), [2.0, 2.0, 3.0])


def test_the_secure_sum_is_the_plain_weighted_mean_within_quantization():
    settings = SecAggSettings(bits=16, clip=4.0, max_weight=8)
    nodes = [11, 12, 13]
    grid = SecAggGrid({node: np.zeros(4, np.uint32) for node in nodes})
    stats = RoundStats(server_round=1)
    session = SecAggSession(settings, 1, grid, stats)
    record = session.setup(nodes, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    for node, delta, n in zip(nodes, DELTAS, COUNTS, strict=True):
        grid.vectors[node], _ = session.spec.quantize(delta, n, rng)
    replies = grid.send_and_receive(grid.train_messages(record))
    secure = SecureSum(session, GLOBAL, shapes={"w": (3,)}, masks=None, limits=ReplyLimits())
    secure.sum_replies(replies)
    step = 2 * settings.clip / session.spec.levels  # one quantization level
    assert secure.total == 8 and stats.accepted == 3
    np.testing.assert_allclose(secure.deltas["w"], [1.125, 0.125, 1.875], rtol=0, atol=step)
    arrays, _ = FedAvg().aggregate_train(1, secure.strategy_input())
    np.testing.assert_allclose(arrays["w"].numpy(), MEAN_MODEL, rtol=0, atol=step)


@pytest.mark.parametrize("name", ["fedavg", "krum", "qfedavg"])
def test_no_reply_is_changed_by_aggregation(name):
    strategy, _ = configured(name, nodes=3, num_malicious=0)
    replies = [
        train_reply(i + 1, {"w": d}, n=n)
        for i, (d, n) in enumerate(zip(DELTAS, COUNTS, strict=True))
    ]
    before = _snapshot(replies)
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and strategy.rounds[1].accepted == 3
    assert _snapshot(replies) == before


def test_no_reply_is_changed_by_a_secure_round():
    secure = SecAggSettings(bits=16, clip=4.0, max_weight=8, share_metrics=True)
    strategy = build_strategy(StrategySettings(name="fedavg", secure=secure))
    nodes = [11, 12, 13]
    grid = SecAggGrid({node: np.zeros(4, np.uint32) for node in nodes})
    messages = list(
        strategy.configure_train(1, float32_arrays(GLOBAL), ConfigRecord({"task": "t"}), grid)
    )
    rng = np.random.default_rng(2)
    spec = SecAggVectorSpec(bits=16, clip=4.0, max_weight=8, clients=3)  # as the session's
    for node, delta, n in zip(nodes, DELTAS, COUNTS, strict=True):
        grid.vectors[node], _ = spec.quantize(delta, n, rng)
    replies = grid.send_and_receive(messages)
    before = _snapshot(replies)
    arrays, _ = strategy.aggregate_train(1, replies)
    step = 2 * spec.clip / spec.levels
    np.testing.assert_allclose(arrays["w"].numpy(), MEAN_MODEL, rtol=0, atol=step)
    assert _snapshot(replies) == before


def test_needing_only_the_mean_is_one_capability_of_the_strategy_class():
    assert SUM_STRATEGIES == ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedavgm")
    assert set(PER_UPDATE_STRATEGIES) == set(STRATEGY_CLASSES) - set(SUM_STRATEGIES)
    for name, cls in STRATEGY_CLASSES.items():
        strategy = build_strategy(StrategySettings(name=name))
        assert type(strategy.inner) is cls
        assert strategy.needs_mean_only == needs_only_mean(cls) == (name in SUM_STRATEGIES)
    assert not any(needs_only_mean(c) for c in (Krum, FedMedian, FedTrimmedAvg, QFedAvg))

    class MyFedAvg(FedAvg):  # a user's class may aggregate otherwise: it gets every update
        pass

    assert isinstance(aggregator_for(MyFedAvg(), GLOBAL, pools=True), CollectAll)
    assert isinstance(aggregator_for(FedAvg(), GLOBAL, pools=True), MeanAggregator)
    with pytest.raises(ValueError, match="needs each update"):
        build_strategy(StrategySettings(inner=MyFedAvg(), secure=SecAggSettings()))


def test_a_user_strategy_of_an_unknown_class_gets_every_update_and_the_same_model():
    class MyFedAvg(FedAvg):
        pass

    mine = build_strategy(StrategySettings(inner=MyFedAvg()))
    grid = QueryAnsweringGrid({1: 0, 2: 1, 3: 2})
    mine.configure_train(1, float32_arrays(GLOBAL), ConfigRecord({"task": "t"}), grid)
    assert not mine.pooling
    replies = [
        train_reply(i + 1, {"w": d}, n=n)
        for i, (d, n) in enumerate(zip(DELTAS, COUNTS, strict=True))
    ]
    arrays, metrics = mine.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), MEAN_MODEL, rtol=0, atol=1e-6)
    assert metrics["train-loss"] == pytest.approx(0.5)
