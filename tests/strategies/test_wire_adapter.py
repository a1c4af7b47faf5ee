import logging

import numpy as np
import pytest
from flwr.app import (
    ConfigRecord,
    Error,
    Message,
    MessageType,
    RecordDict,
)

from strategies import StrategySettings, build_strategy
from tests.helpers.replies import GLOBAL
from tests.helpers.replies import configured as _configured
from tests.helpers.replies import float32_arrays as _arrays
from tests.helpers.replies import train_reply as _reply
from tests.messages import message
from tests.strategies.fake_grid import QueryAnsweringGrid
from wire import PAYLOAD_FIELD, UPDATE_RECORD_KEY


def test_golden_fedavg_of_two_clients():
    strategy, msgs = _configured()
    assert len(msgs) == 2 and strategy.rounds[1].download_bytes_per_client == 12
    replies = [
        _reply(1, {"w": np.array([1.0, 0.0, -1.0], np.float32)}, n=1),
        _reply(2, {"w": np.array([0.0, 3.0, 0.0], np.float32)}, n=3),
    ]
    sent = sum(len(r.content.config_records[UPDATE_RECORD_KEY][PAYLOAD_FIELD]) for r in replies)
    arrays, metrics = strategy.aggregate_train(1, replies)
    # locals: [2,2,2] (weight 1) and [1,5,3] (weight 3) -> [5/4, 17/4, 11/4]
    np.testing.assert_allclose(arrays["w"].numpy(), [1.25, 4.25, 2.75], rtol=0, atol=1e-6)
    assert metrics["train-loss"] == pytest.approx(0.5)
    stats = strategy.rounds[1].as_metrics()
    assert stats["accepted_updates"] == 2 and stats["rejected_updates"] == 0
    assert stats["upload_bytes_total"] == sent


def test_bad_updates_are_logged_counted_and_the_round_goes_on(caplog):
    strategy, _ = _configured(nodes=5)
    good = _reply(1, {"w": np.ones(3, np.float32)}, n=2)
    wrong_shape = _reply(2, {"w": np.ones(4, np.float32)}, n=2)
    stale = _reply(3, {"w": np.ones(3, np.float32)}, n=2, server_round=0)
    garbage = _reply(4, None, n=2, payload=b"\x00" * 40)
    failed = Message(
        Error(code=0, reason="boom"),
        reply_to=message(RecordDict(), src=1, dst=5, message_type=MessageType.TRAIN),
    )
    with caplog.at_level(logging.WARNING):
        arrays, _ = strategy.aggregate_train(1, [good, wrong_shape, stale, garbage, failed])
    np.testing.assert_array_equal(arrays["w"].numpy(), GLOBAL["w"] + 1)
    stats = strategy.rounds[1].as_metrics()
    assert (
        stats["accepted_updates"] == 1
        and stats["rejected_updates"] == 3
        and stats["failed_clients"] == 1
    )
    assert [r["reason"] for r in stats["rejections"]] == [
        "shape-mismatch",
        "round-mismatch",
        "bad-magic",
    ]
    assert "rejected update from node 2 (shape-mismatch)" in caplog.text


def test_non_positive_weight_is_rejected():
    strategy, _ = _configured()
    arrays, metrics = strategy.aggregate_train(1, [_reply(1, {"w": np.ones(3, np.float32)}, n=0)])
    assert arrays is None and metrics is None
    assert strategy.rounds[1].rejected[0].reason == "bad-weight"


def test_aggregate_is_bitwise_independent_of_reply_order():
    rng = np.random.default_rng(0)
    deltas = [{"w": rng.normal(size=3).astype(np.float32)} for _ in range(12)]
    results = []
    for order in (range(12), reversed(range(12)), rng.permutation(12)):
        strategy, _ = _configured(nodes=12)
        replies = [_reply(i + 1, deltas[i], n=int(i % 5 + 1)) for i in map(int, order)]
        results.append(strategy.aggregate_train(1, replies)[0]["w"].numpy())
    assert all(np.array_equal(results[0], r) for r in results[1:])


@pytest.mark.parametrize("name", ["fedprox", "fedadam", "fedyogi"])
def test_flower_strategies_run_on_decoded_updates(name):
    strategy, msgs = _configured(name=name)
    if name == "fedprox":
        assert msgs[0].content["config"]["proximal-mu"] == pytest.approx(0.01)
    replies = [_reply(n, {"w": np.full(3, 0.5, np.float32)}, n=1) for n in (1, 2)]
    arrays, _ = strategy.aggregate_train(1, replies)
    new = arrays["w"].numpy()
    assert np.all(new > GLOBAL["w"])  # every strategy moves along the common delta
    if name != "fedprox":
        assert not np.allclose(new, GLOBAL["w"] + 0.5)  # a server optimizer, not plain averaging


def test_evaluation_is_skipped_when_fraction_is_zero_and_sampled_otherwise():
    grid = QueryAnsweringGrid({1: 0, 2: 1, 3: 2})
    off = build_strategy(StrategySettings(fraction_evaluate=0.0))
    assert list(off.configure_evaluate(1, _arrays(GLOBAL), ConfigRecord(), grid)) == []
    on = build_strategy(StrategySettings(fraction_evaluate=0.5))
    msgs = list(on.configure_evaluate(1, _arrays(GLOBAL), ConfigRecord(), grid))
    assert len(msgs) == 1 and msgs[0].metadata.message_type == MessageType.EVALUATE


def _robust_round(name, deltas, **kw):
    strategy, _ = _configured(name=name, nodes=len(deltas), **kw)
    replies = [_reply(i + 1, {"w": np.full(3, d, np.float32)}, n=1) for i, d in enumerate(deltas)]
    return strategy.aggregate_train(1, replies)[0]["w"].numpy() - GLOBAL["w"]


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("fedmedian", {}, 1.0),  # median of 0, 1, 2, 100, -50 is 1
        ("fedtrimmedavg", {"trim_beta": 0.2}, 1.0),  # drop -50 and 100: mean of 0, 1, 2
        # f = 1 (5 updates >= 2f + 3): scores sum the 2 nearest; 1 is closest to 0 and 2
        ("krum", {"num_malicious": 1}, 1.0),
        ("multikrum", {"num_malicious": 1, "multikrum_select": 3}, 1.0),  # mean of 0, 1, 2
    ],
)
def test_robust_strategies_ignore_outlying_updates(name, kwargs, expected):
    delta = _robust_round(name, [0.0, 1.0, 2.0, 100.0, -50.0], **kwargs)
    np.testing.assert_allclose(delta, expected, atol=1e-5)
    assert np.allclose(_robust_round("fedavg", [0.0, 1.0, 2.0, 100.0, -50.0]), 10.6, atol=1e-4)


@pytest.mark.parametrize(
    ("name", "kwargs", "needed"),
    [("krum", {"num_malicious": 2}, 7), ("bulyan", {"num_malicious": 0}, 3)],
)
def test_a_robust_round_with_too_few_updates_fails_and_keeps_the_model(name, kwargs, needed):
    """5 updates cannot tolerate 2 Krum attackers (Blanchard et al.: n > 2f + 2), and Bulyan
    needs 3 even with none: the round fails with its reason instead of aggregating anyway
    (Krum) or skipping with only Flower's log line (Bulyan)."""
    strategy, _ = _configured(name=name, nodes=5 if name == "krum" else 2, **kwargs)
    deltas = [0.0, 1.0, 2.0, 100.0, -50.0][: 5 if name == "krum" else 2]
    replies = [_reply(i + 1, {"w": np.full(3, d, np.float32)}, n=1) for i, d in enumerate(deltas)]
    assert strategy.aggregate_train(1, replies) == (None, None)
    failure = strategy.rounds[1].aggregation_failure
    assert failure == f"{name.capitalize()} needs {needed} updates, {len(deltas)} accepted"


def test_updates_longer_than_clip_norm_are_scaled_down():
    delta = _robust_round("fedavg", [0.0, 100.0], clip_norm=np.sqrt(3.0))
    np.testing.assert_allclose(delta, 0.5, atol=1e-5)  # (0 + clipped 1.0) / 2 per coordinate
