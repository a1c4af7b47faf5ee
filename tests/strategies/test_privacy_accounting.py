"""Gaussian accounting over sampled rounds: known values from TF Privacy and dp-accounting."""

from __future__ import annotations

import math

import dp_accounting as dp
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant as rdp

from strategies.privacy.accounting import (
    ORDERS,
    Ledger,
    PrivacyError,
    RoundPlan,
    adaptive_clip_noise,
    calibrate_noise,
    calibrate_rest,
    epsilon,
    epsilon_by_round,
    rdp_of_round,
)


@pytest.mark.parametrize(
    ("n", "batch", "noise", "epochs", "delta", "expected"),
    [
        # tensorflow/privacy, compute_dp_sgd_privacy_test.py, Test0 and Test1 (Poisson sampling,
        # steps = epochs * n / batch; both optimal orders, 19 and 13, are in ORDERS)
        (60_000, 150, 1.3, 15, 1e-5, 0.7242234026109595),
        (100_000, 100, 1.0, 30, 1e-7, 1.4154988495444842),
    ],
)
def test_poisson_matches_tf_privacy(n, batch, noise, epochs, delta, expected):
    plan = RoundPlan(
        population=n, per_round=batch, rounds=epochs * n // batch, delta=delta, sampling="poisson"
    )
    assert epsilon(noise, plan) == pytest.approx(expected, abs=1e-6)


def test_calibration_inverts_tf_privacy_value():
    # the same Test0 read backwards (tensorflow/privacy compute_noise_from_budget_test: noise 1.3)
    plan = RoundPlan(population=60_000, per_round=150, rounds=6000, delta=1e-5, sampling="poisson")
    z = calibrate_noise(0.7242234026109595, plan)
    assert z == pytest.approx(1.3, rel=2e-3)
    assert epsilon(z, plan) <= 0.7242234026109595


def test_full_participation_is_the_plain_gaussian():
    # dp-accounting rdp_privacy_accountant_test.test_compute_epsilon_delta_gaussian: multiplier
    # 4.530877117 is exactly (1, 1e-6)-DP over a fine grid of orders; fixed sampling of all N
    # clients is that Gaussian on replace-one sensitivity 2C, so z = 2 * 4.530877117. ORDERS is a
    # coarser grid than the test's, so epsilon is at least 1 and within 2% of it.
    plan = RoundPlan(population=10, per_round=10, rounds=1, delta=1e-6)
    eps = epsilon(2 * 4.530877117, plan)
    assert 1.0 - 1e-9 <= eps <= 1.02
    curve = rdp_of_round(2 * 4.530877117, plan)
    assert np.allclose(curve, np.asarray(ORDERS) / (2 * 4.530877117**2))


def test_fixed_sampling_is_dp_accounting_without_replacement_at_half_the_multiplier():
    plan = RoundPlan(population=1000, per_round=50, rounds=40, delta=1e-5)
    accountant = rdp.RdpAccountant(list(ORDERS), dp.NeighboringRelation.REPLACE_ONE)
    one_round = dp.SampledWithoutReplacementDpEvent(1000, 50, dp.GaussianDpEvent(0.6))
    accountant.compose(dp.SelfComposedDpEvent(one_round, 40))
    assert epsilon(1.2, plan) == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-12)
    # replace-one costs more than Poisson's add/remove at the same rate and multiplier
    poisson = RoundPlan(population=1000, per_round=50, rounds=40, delta=1e-5, sampling="poisson")
    assert epsilon(1.2, plan) > epsilon(1.2, poisson)


def test_epsilon_by_round_and_ledger_agree():
    plan = RoundPlan(population=500, per_round=20, rounds=6, delta=1e-4)
    history = epsilon_by_round(2.0, plan)
    assert len(history) == 6 and all(b > a for a, b in zip(history, history[1:], strict=False))
    assert history[-1] == pytest.approx(epsilon(2.0, plan), rel=1e-12)
    ledger = Ledger(plan)
    for _ in range(6):
        ledger.spend(2.0)
    assert ledger.history == pytest.approx(history, rel=1e-12)
    assert ledger.last_round() == pytest.approx(history[-1] - history[-2])
    assert epsilon(2.0, plan, rounds=0) == 0.0


def test_calibration_meets_the_target_with_the_least_noise():
    plan = RoundPlan(population=1000, per_round=50, rounds=30, delta=1e-5)
    z = calibrate_noise(3.0, plan)
    assert epsilon(z, plan) <= 3.0 < epsilon(z * 0.99, plan)


def test_the_rest_of_a_resumed_plan_keeps_the_total_within_the_target():
    """Spent 5 rounds at more noise than a 20-round plan at epsilon 3 needs, 15 more planned:
    the rest's multiplier is the least meeting 3 with the ledger counted (below the plan's:
    the 5 were cheaper); already past the target, the rest is refused."""
    plan = RoundPlan(population=1000, per_round=50, rounds=20, delta=1e-5)
    fresh = calibrate_noise(3.0, plan)
    ledger = Ledger(plan)
    for _ in range(5):
        ledger.spend(1.5 * fresh)
    z = calibrate_rest(lambda z: ledger.projected(z, 15), 3.0, 15)
    assert ledger.projected(z, 15) <= 3.0 < ledger.projected(z * 0.99, 15)
    assert z < fresh and ledger.projected(fresh, 15) < 3.0
    same = Ledger(plan)
    for _ in range(5):
        same.spend(fresh)
    assert same.projected(fresh, 15) == pytest.approx(epsilon(fresh, plan), rel=1e-12)
    assert ledger.projected(float("inf"), 15) == ledger.epsilon
    with pytest.raises(PrivacyError, match="15 rounds left cannot stay within .* 0.1"):
        calibrate_rest(lambda z: ledger.projected(z, 15), 0.1, 15)


def test_unreachable_target_is_refused_naming_the_settings():
    plan = RoundPlan(population=100, per_round=100, rounds=100_000, delta=1e-5)
    with pytest.raises(PrivacyError, match="dp-target-epsilon 0.001 .* cannot be met over 100000"):
        calibrate_noise(1e-3, plan)


def test_adaptive_clipping_split_keeps_the_total_privacy():
    # Andrew et al. 2021 Sec. 3.1: the update sum (z_delta) and the clipped-count bits (sensitivity
    # 1/2, stddev sigma_b) together are one Gaussian with multiplier z
    z, sigma_b = 1.0, 5.0
    z_delta = adaptive_clip_noise(z, sigma_b)
    assert z_delta > z
    composed = dp.ComposedDpEvent([dp.GaussianDpEvent(z_delta), dp.GaussianDpEvent(2 * sigma_b)])
    both = rdp.RdpAccountant(list(ORDERS))
    both.compose(composed)
    one = rdp.RdpAccountant(list(ORDERS))
    one.compose(dp.GaussianDpEvent(z))
    assert np.allclose(both.rdp, one.rdp, rtol=1e-12)
    with pytest.raises(PrivacyError, match="must exceed"):
        adaptive_clip_noise(1.0, 0.5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"population": 0},
        {"population": True},
        {"per_round": 2000},
        {"rounds": 2.5},
        {"delta": float("nan")},
        {"delta": 0.01},  # >= 1/N
        {"delta": "1e-5"},
        {"sampling": "shuffle"},
    ],
)
def test_hostile_plans_are_typed_errors(kwargs):
    args = {"population": 1000, "per_round": 10, "rounds": 5, "delta": 1e-5} | kwargs
    with pytest.raises(PrivacyError):
        RoundPlan(**args)


@pytest.mark.parametrize("bad", [float("nan"), -1.0, "1", None, True, math.inf])
def test_hostile_noise_and_targets_are_typed_errors(bad):
    plan = RoundPlan(population=1000, per_round=10, rounds=5, delta=1e-5)
    with pytest.raises(PrivacyError):
        epsilon(bad, plan)
    with pytest.raises(PrivacyError):
        calibrate_noise(bad, plan)


def test_no_noise_is_no_privacy():
    plan = RoundPlan(population=1000, per_round=10, rounds=5, delta=1e-5)
    assert epsilon(0.0, plan) == math.inf


def test_local_dp_gives_its_rest_the_recalibrated_noise():
    from strategies.privacy.local import LocalDp, local_plan
    from wire import keys

    dp = LocalDp(noise_multiplier=4.0, clip=0.5, plan=local_plan(10, 1e-5))
    for _ in range(3):
        dp.finish_round()
    target = 1.5 * dp.ledger.projected(4.0, 7)  # more budget than 4.0 would spend
    z = dp.recalibrate(target, 7)
    assert z < 4.0 and dp.ledger.projected(z, 7) <= target
    assert dp.round_config()[keys.DP_LOCAL_STDDEV] == pytest.approx(z * 0.5)
