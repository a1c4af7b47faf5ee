"""Central DP aggregation, by hand on the 3-parameter model: clipped equal-weight mean, the noise's
spread (seeded, 5 standard errors), the adaptive clip tracking the median norm (Andrew et al.
2021), the ledger's epsilon per round, and Flower's FedAvg stepping from the noisy mean."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from strategies.aggregators import Update
from strategies.privacy.accounting import PrivacyError, RoundPlan, epsilon_by_round
from strategies.privacy.central import AdaptiveClip, CentralDp, DpMeanAggregator, update_norm
from tests.helpers.replies import GLOBAL, float32_arrays
from tests.messages import message

DELTAS = [np.array(d, np.float32) for d in ([1.0, 0.0, -1.0], [0.0, 3.0, 0.0], [2.0, -2.0, 4.0])]
PLAN = RoundPlan(population=100, per_round=3, rounds=5, delta=1e-3)


def _update(node, delta, n=5):
    content = RecordDict(
        {
            "arrays": float32_arrays({"w": GLOBAL["w"] + delta}),
            "metrics": MetricRecord({"num-examples": n, "train-loss": 0.5}),
        }
    )
    reply = message(content, src=node, dst=1, message_type=MessageType.TRAIN)
    return Update([reply], {"w": delta}, float(n), [float(n)], [{"num-examples": n}])


def _aggregator(clip=2.0, sum_stddev=0.0, seed=0):
    return DpMeanAggregator(
        dict(GLOBAL),
        clip=clip,
        sum_stddev=sum_stddev,
        count_stddev=0.0,
        rng=np.random.default_rng(seed),
    )


def test_clipped_equal_weight_mean_by_hand():
    agg = _aggregator()
    for node, delta in enumerate(DELTAS, start=1):
        agg.add(_update(node, delta, n=node * 100))  # example counts do not weigh under DP
    # norms sqrt(2) (kept), 3 -> [0, 2, 0], sqrt(24) -> [2, -2, 4] * 2 / sqrt(24)
    s = 2 / math.sqrt(24)
    expected = (np.array([1, 0, -1]) + np.array([0, 2, 0]) + np.array([2, -2, 4]) * s) / 3
    assert agg.count == 3 and agg.unclipped == 1
    assert np.allclose(agg.noisy_mean()["w"], expected, atol=1e-6)
    (msg,) = agg.strategy_input()
    arrays, _ = FedAvg().aggregate_train(1, [msg])  # Flower's step from the noisy mean
    assert np.allclose(arrays["w"].numpy(), GLOBAL["w"] + expected, atol=1e-6)


def test_noise_spread_is_z_clip_over_count():
    agg = _aggregator(clip=2.0, sum_stddev=3.0, seed=1)
    for node, delta in enumerate(DELTAS, start=1):
        agg.add(_update(node, delta))
    clean = _aggregator()
    for node, delta in enumerate(DELTAS, start=1):
        clean.add(_update(node, delta))
    base = clean.noisy_mean()["w"]
    draws = np.array([agg.noisy_mean()["w"] - base for _ in range(4000)]).ravel()
    expected = 3.0 / 3
    assert abs(draws.std() - expected) < 5 * expected / math.sqrt(2 * draws.size)


def test_pooled_uploads_are_refused():
    agg = _aggregator()
    pooled = _update(1, DELTAS[0])
    pooled.replies.append(pooled.replies[0])
    with pytest.raises(PrivacyError, match="pooled"):
        agg.add(pooled)


def test_ledger_reports_epsilon_per_round():
    dp = CentralDp(noise_multiplier=1.5, clip=2.0, plan=PLAN, noise_seed=3)
    expected = epsilon_by_round(1.5, PLAN)
    for r in range(3):
        agg = dp.aggregator(dict(GLOBAL))
        for node, delta in enumerate(DELTAS, start=1):
            agg.add(_update(node, delta))
        agg.strategy_input()
        metrics = dp.finish_round()
        assert metrics["dp-epsilon"] == pytest.approx(expected[r], rel=1e-12)
        assert metrics["dp-clip"] == 2.0
    assert dp.ledger.epsilon == pytest.approx(expected[2])
    dp.aggregator(dict(GLOBAL))
    assert dp.finish_round() == {}  # a round that released nothing spends nothing
    assert len(dp.ledger.history) == 3


def test_adaptive_clip_tracks_the_median_norm():
    rng = np.random.default_rng(4)
    plan = RoundPlan(population=1000, per_round=50, rounds=80, delta=1e-4)
    dp = CentralDp(noise_multiplier=1.0, clip=0.1, plan=plan, adaptive=AdaptiveClip(), noise_seed=5)
    norms = np.linspace(1.0, 3.0, 50)  # median 2.0
    for _ in range(80):
        agg = dp.aggregator(dict(GLOBAL))
        for node, norm in enumerate(norms, start=1):
            direction = rng.normal(size=3).astype(np.float32)
            agg.add(_update(node, direction / np.linalg.norm(direction) * norm))
        agg.strategy_input()
        dp.finish_round()
    assert 1.6 < dp.clip < 2.4
    assert dp.sum_multiplier > dp.noise_multiplier  # the count query took its share


def test_secret_noise_by_default():
    a = CentralDp(noise_multiplier=1.0, clip=1.0, plan=PLAN)
    b = CentralDp(noise_multiplier=1.0, clip=1.0, plan=PLAN)
    assert a._rng.normal() != b._rng.normal()


def test_update_norm_spans_tensors():
    assert update_norm({"a": np.array([3.0]), "b": np.array([[4.0]])}) == 5.0


@pytest.mark.parametrize(
    "kwargs",
    [{"clip": 0.0}, {"clip": float("nan")}, {"noise_multiplier": -1.0}, {"clip": "1"}],
)
def test_hostile_settings_are_typed_errors(kwargs):
    with pytest.raises(PrivacyError):
        CentralDp(**({"noise_multiplier": 1.0, "clip": 1.0, "plan": PLAN} | kwargs))
    with pytest.raises(PrivacyError):
        AdaptiveClip(target_quantile=1.5)


def test_wire_strategy_round_with_central_dp():
    # two encoded client replies through the adapter: decoded, clipped to 2, equally weighted,
    # noised (seeded), Flower's FedAvg steps from it; epsilon lands in the round's metrics and
    # the clients' train metrics are withheld (not opted in)
    from strategies import StrategySettings, build_strategy
    from tests.helpers.replies import configured, train_reply

    plan = RoundPlan(population=2, per_round=2, rounds=3, delta=1e-3)
    dp = CentralDp(noise_multiplier=1.0, clip=2.0, plan=plan, noise_seed=9)
    strategy, msgs = configured(privacy=dp)
    assert len(msgs) == 2 and not strategy.pooling
    replies = [
        train_reply(1, {"w": np.array([1.0, 0.0, -1.0], np.float32)}, n=1),
        train_reply(2, {"w": np.array([0.0, 3.0, 0.0], np.float32)}, n=300),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    clipped_mean = (np.array([1.0, 0.0, -1.0]) + np.array([0.0, 2.0, 0.0])) / 2
    replay = np.random.default_rng([9, 0x44505]).normal(0.0, 2.0, 3) / 2  # the same draws
    np.testing.assert_allclose(
        arrays["w"].numpy(), GLOBAL["w"] + clipped_mean + replay, rtol=0, atol=1e-5
    )
    assert dict(metrics) == {}
    logged = strategy.rounds[1].as_metrics()
    assert logged["dp_epsilon"] == pytest.approx(epsilon_by_round(1.0, plan)[0])
    assert logged["dp_clip"] == 2.0
    with pytest.raises(ValueError, match="central DP"):
        build_strategy(StrategySettings(name="krum", privacy=dp))


def test_a_poisson_round_divides_by_the_expected_cohort_and_releases_noise_when_empty():
    # Poisson sampling (McMahan et al. 2018's fixed denominator): the mean's denominator is the
    # expected cohort m, not the clients that replied; a round that drew nobody still moves the
    # model by its noise / m and is spent in the ledger (the subsampled Gaussian on an empty
    # sample), and it does not count as a stalled round
    from strategies.stats import stall_reason
    from tests.helpers.replies import configured

    agg = _aggregator(clip=10.0)
    agg.denominator = 2.0
    for node, delta in enumerate(DELTAS):
        agg.add(_update(node + 1, delta))
    np.testing.assert_allclose(agg.noisy_mean()["w"], sum(DELTAS) / 2.0, atol=1e-6)

    plan = RoundPlan(population=8, per_round=1, rounds=3, delta=1e-3, sampling="poisson")
    dp = CentralDp(noise_multiplier=1.0, clip=2.0, plan=plan, noise_seed=9)
    strategy, msgs = configured(privacy=dp, nodes=8, fraction_train=0.125, seed=2)
    assert msgs == [] and strategy.rounds[1].sampled == 0  # seed 2 draws nobody in round 1
    arrays, metrics = strategy.aggregate_train(1, [])
    replay = np.random.default_rng([9, 0x44505]).normal(0.0, 2.0, 3) / 1.0
    np.testing.assert_allclose(arrays["w"].numpy(), GLOBAL["w"] + replay, rtol=0, atol=1e-5)
    assert dict(metrics) == {}
    logged = strategy.rounds[1].as_metrics()
    assert logged["dp_epsilon"] == pytest.approx(epsilon_by_round(1.0, plan)[0])
    assert stall_reason(strategy.rounds, 1, 1) is None


def test_an_empty_poisson_round_never_noises_frozen_tensors():
    """Frozen layers are neither trained nor uploaded: a round that drew nobody adds its noise
    to the trained tensors only, and the frozen ones stay exactly as sent."""
    reference = {"frozen.w": np.ones(3, np.float32), "head.w": np.zeros(2, np.float32)}
    plan = RoundPlan(population=8, per_round=2, rounds=3, delta=1e-3, sampling="poisson")
    dp = CentralDp(noise_multiplier=1.0, clip=2.0, plan=plan, noise_seed=1)
    agg = dp.aggregator(reference, frozen=("frozen.",))
    assert list(agg.noisy_mean()) == ["head.w"]
    assert list(dp.aggregator(reference).noisy_mean()) == ["frozen.w", "head.w"]
