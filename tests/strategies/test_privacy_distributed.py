"""Distributed discrete Gaussian accounting (Kairouz, Liu & Steinke 2021) and its sampling bound.

The paper's bound is checked by the values its statements pin down: Theorem 1's tau and rounding
bound by hand, the single discrete Gaussian (n = 1, Canonne, Kamath & Steinke 2020 Theorem 4),
the continuous-Gaussian limit for large shares, and Wang et al.'s Theorem 9 against dp-accounting's
Theorem 27 (the same expression above order 256, a tighter one below).
"""

from __future__ import annotations

import math

import dp_accounting as dp
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant as rdp

from strategies.privacy import accounting
from strategies.privacy.accounting import PrivacyError
from strategies.privacy.ddg_accounting import (
    calibrate_local_stddev,
    ddg_epsilon,
    ddg_rdp,
    ddg_round_rdp,
    tau,
    wor_subsampled_rdp,
)
from strategies.privacy.ddg_accounting import epsilon_of as ddg_epsilon_of
from strategies.privacy.distributed import (
    DistributedDp,
    calibrate_multiplier,
    noise_shares,
    planned_round_rdp,
)
from strategies.secagg import SecAggFailed, SecAggSession, SecAggSettings
from strategies.stats import RoundStats
from tests.strategies.secagg_grid import SecAggGrid
from wire.dp import DEFAULT_BETA, clip_l2, rounded_l2_bound


def test_tau_by_hand():
    assert tau(0.5, 1) == 0.0
    assert tau(0.5, 2) == pytest.approx(10 * math.exp(-(math.pi**2) / 4), rel=1e-12)
    # n = 3: k = 1, 2 -> 10 (exp(-2 pi^2 s^2 / 2) + exp(-2 pi^2 s^2 2/3)) at s = 0.6
    s2 = 0.36
    expected = 10 * (math.exp(-(math.pi**2) * s2) + math.exp(-4 * math.pi**2 * s2 / 3))
    assert tau(0.6, 3) == pytest.approx(expected, rel=1e-12)


def test_rounding_bound_by_hand():
    # scaled clip 100 in 1024 coordinates: plain rounding adds sqrt(d) = 32; conditional rounding
    # with beta = e^-0.5 (sqrt(2 ln(1/beta)) = 1) gives sqrt(100^2 + 1024/4 + (100 + 16))
    assert rounded_l2_bound(100.0, 1024, 0.0) == 132.0
    assert rounded_l2_bound(100.0, 1024, DEFAULT_BETA) == pytest.approx(math.sqrt(10_372), 1e-12)
    with pytest.raises(ValueError):
        rounded_l2_bound(100.0, 1024, 1.5)


def test_one_client_is_the_discrete_gaussian():
    # Canonne, Kamath & Steinke 2020, Theorem 4: N_Z(0, s^2) on sensitivity D is D^2/(2 s^2)-zCDP
    orders = np.arange(2, 40)
    assert np.allclose(ddg_rdp(orders, 3.0, 9.0, 2.0, 1, 100), orders * 9.0 / 8.0, rtol=1e-14)


def test_large_shares_reach_the_continuous_gaussian_of_the_summed_variance():
    orders = np.arange(2, 40)
    n, s, d2 = 100, 10.0, 50.0
    assert tau(s, n) < 1e-300
    assert np.allclose(ddg_rdp(orders, d2, d2 * 10, s, n, 1000), orders * d2**2 / (2 * n * s**2))
    # small shares pay for the sum not being a discrete Gaussian
    assert np.all(ddg_rdp(orders, 1.0, 1.0, 0.3, n, 1000) > orders / (2 * n * 0.09))


@pytest.mark.parametrize("q", [0.01, 0.2])
def test_theorem_9_matches_dp_accounting_above_order_256_and_bounds_it_below(q):
    sigma = 1.5
    orders = [2, 8, 32, 128, 512]
    base = np.arange(513) / (2 * sigma**2)  # the Gaussian's replace-one RDP
    accountant = rdp.RdpAccountant(orders, dp.NeighboringRelation.REPLACE_ONE)
    accountant.compose(
        dp.SampledWithoutReplacementDpEvent(1000, int(q * 1000), dp.GaussianDpEvent(sigma))
    )
    theirs = accountant.rdp
    ours = np.array([wor_subsampled_rdp(base, a, q) for a in orders])
    assert ours[-1] == pytest.approx(theirs[-1], rel=1e-9)
    assert np.all(ours[:-1] >= theirs[:-1] * (1 - 1e-12))
    assert np.all(ours <= base[orders])


def test_full_participation_with_fine_scale_is_the_gaussian_accounting():
    # q = 1 and a scale where rounding adds little: the DDG epsilon is the Gaussian's with
    # z = sqrt(n) s / (clip * scale), up to the inflated norm and integer orders
    n, clip, scale, dim = 20, 1.0, 1e4, 16
    s = 4.0 * clip * scale / math.sqrt(n)
    ours = ddg_epsilon(
        rounds=10,
        delta=1e-5,
        clip=clip,
        scale=scale,
        dim=dim,
        local_stddev=s,
        clients=n,
        population=n,
        sampled=n,
    )
    plan = accounting.RoundPlan(population=n, per_round=n, rounds=10, delta=1e-5)
    assert ours == pytest.approx(accounting.epsilon(4.0, plan), rel=0.02)


def test_dropouts_cost_privacy_and_sampling_amplifies():
    kwargs = dict(clip=1.0, scale=100.0, dim=1024, local_stddev=50.0, population=1000)
    all_there = ddg_epsilon(rounds=50, delta=1e-5, clients=50, sampled=50, **kwargs)
    half_left = ddg_epsilon(rounds=50, delta=1e-5, clients=25, sampled=50, **kwargs)
    assert half_left > all_there
    everyone = ddg_epsilon(
        rounds=50, delta=1e-5, clients=50, sampled=50, **kwargs | {"population": 50}
    )
    assert everyone > all_there


def test_calibration_meets_the_target_and_refuses_the_impossible():
    kwargs = dict(clip=1.0, scale=100.0, dim=1024, clients=50, population=1000, sampled=50)
    s = calibrate_local_stddev(3.0, rounds=100, delta=1e-5, **kwargs)
    assert ddg_epsilon(rounds=100, delta=1e-5, local_stddev=s, **kwargs) <= 3.0
    assert ddg_epsilon(rounds=100, delta=1e-5, local_stddev=s * 0.99, **kwargs) > 3.0
    with pytest.raises(PrivacyError, match="cannot be met .* 100 rounds"):
        calibrate_local_stddev(1e-9, rounds=100, delta=1e-5, max_stddev=1e3, **kwargs)


def test_recalibrating_the_rounds_left_keeps_the_total_within_the_target():
    """A resumed run (server.federation.recalibrate_privacy): 4 rounds spent at the 4-round
    plan's multiplier, then 6 more planned; the rest gets more noise, the total meets 3."""
    values = 2000
    plan = accounting.RoundPlan(population=500, per_round=50, rounds=4, delta=1e-5)
    z = calibrate_multiplier(3.0, plan, clip=1.0, bits=16, values=values)
    ddp = DistributedDp(noise_multiplier=z, clip=1.0, bits=16, plan=plan)
    for server_round in range(1, 5):
        ddp.vector_spec(50, kept=values, server_round=server_round, sampled=50)
        ddp.summed(50)
    assert ddp.epsilon == pytest.approx(3.0, rel=2e-3)
    with pytest.raises(PrivacyError, match="6 rounds left cannot stay within"):
        ddp.recalibrate(2.0, 6, values)  # already spent more than 2
    later = ddp.recalibrate(3.5, 6, values)
    assert later > z and ddp.noise_multiplier == later
    assert ddp.projected(later, 6, values) <= 3.5 < ddp.projected(later * 0.99, 6, values)


@pytest.mark.parametrize(
    "bad",
    [
        {"clip": float("nan")},
        {"scale": -1.0},
        {"local_stddev": "2"},
        {"dim": 0},
        {"clients": True},
        {"sampled": 5000},
        {"sampled": 10},  # fewer drawn than noise shares summed
    ],
)
def test_hostile_settings_are_typed_errors(bad):
    kwargs = dict(
        clip=1.0, scale=100.0, dim=64, local_stddev=5.0, clients=20, population=100, sampled=20
    )
    with pytest.raises(PrivacyError):
        ddg_round_rdp(**(kwargs | bad))


def test_a_secure_round_sums_the_survivors_only_down_to_the_uploads_its_noise_was_sized_for():
    """A real SecAgg+ round (the SDK's client steps, in memory) carrying distributed-DP vectors
    at dp-dropout-tolerance 1/3: six clients share keys, so each noise share is sized for four
    uploads. Two vanish: the server unmasks the four survivors' sum, decodes their clipped
    mean, and spends the round for four shares, exactly the plan's worst case (more survivors
    would spend less). Three vanish: the three uploads are not unmasked and nothing is spent."""
    plan = accounting.RoundPlan(population=40, per_round=6, rounds=2, delta=1e-4)
    kept, rng = 500, np.random.default_rng(4)

    def run(drop: int):
        dp_ = DistributedDp(
            noise_multiplier=1e-4, clip=1.0, bits=20, plan=plan, run_seed=3, dropout_tolerance=1 / 3
        )
        spec = dp_.vector_spec(6, kept=kept, server_round=1, sampled=6)
        assert dp_.min_uploads == 4
        updates = rng.normal(0, 0.02, size=(6, kept)).astype(np.float32)
        updates[0] *= 20  # clipped
        nodes = list(range(101, 107))
        grid = SecAggGrid(
            {n: spec.quantize(u, 1, rng)[0] for n, u in zip(nodes, updates, strict=True)}
        )
        grid.drop_at_train = set(nodes[6 - drop :])
        session = SecAggSession(SecAggSettings(degree=5), 1, grid, RoundStats(server_round=1))
        session.spec_for = lambda alive: spec if alive == 6 else None
        record = session.setup(nodes, np.random.default_rng(1))
        session.min_uploads = dp_.min_uploads  # as the wire adapter does
        replies = grid.send_and_receive(grid.train_messages(record))
        if drop > 2:
            with pytest.raises(SecAggFailed, match="fewer than the 4 the distributed DP noise"):
                session.aggregate(replies, spec.vector_size(kept))
            assert session.unmasked == 0
            return dp_
        mean, count = spec.weighted_mean(session.aggregate(replies, spec.vector_size(kept)))
        survivors = [clip_l2(u, 1.0)[0] for u in updates[: 6 - drop]]
        assert count == session.unmasked == 6 - drop
        assert np.abs(mean - np.mean(survivors, axis=0)).max() < 1e-4  # z = 1e-4: noise ~2e-5
        return dp_.summed(session.unmasked)

    full, dropped = run(0), run(2)
    assert dropped["dp-survivors"] == 4 and full["dp-survivors"] == 6
    worst = planned_round_rdp(1e-4, plan, clip=1.0, bits=20, values=kept, tolerance=1 / 3)
    assert dropped["dp-epsilon"] == pytest.approx(ddg_epsilon_of(worst, plan.delta), rel=1e-12)
    assert dropped["dp-epsilon-round"] > full["dp-epsilon-round"] > 0
    assert {"dp-epsilon", "dp-delta", "dp-clip", "dp-scale", "dp-bits"} <= set(full)
    assert run(3).epsilon == 0.0


@pytest.mark.parametrize(
    ("alive", "tolerance", "shares"),
    [(6, 0.0, 6), (6, 0.1, 6), (10, 0.1, 9), (9, 1 / 3, 6), (7, 0.5, 4), (1, 0.5, 1)],
)
def test_noise_shares_leave_at_most_the_tolerated_fraction_out(alive, tolerance, shares):
    assert noise_shares(alive, tolerance) == shares


@pytest.mark.parametrize("bad", [-0.1, 0.51, float("nan"), True, "0.1", None])
def test_a_dropout_tolerance_outside_zero_to_half_is_refused(bad):
    plan = accounting.RoundPlan(population=40, per_round=6, rounds=2, delta=1e-4)
    with pytest.raises(PrivacyError, match="dp-dropout-tolerance"):
        DistributedDp(noise_multiplier=1.0, clip=1.0, bits=16, plan=plan, dropout_tolerance=bad)


def test_no_unmasked_round_spends_more_than_the_planned_worst_case_where_shares_are_small():
    """10,000 of 10^6 clients a round at 16 bits: each share's stddev is under 1 integer unit,
    where Theorem 1's tau grows with the number of shares. With tau taken at the clients alive,
    every number of uploads the server unmasks (9,000-10,000, and fewer alive) spends at most
    the planned round at each order; with tau at the survivors, all 10,000 uploading would
    spend more than the 9,000 the noise was sized for."""
    plan = accounting.RoundPlan(population=10**6, per_round=10_000, rounds=100, delta=1e-7)
    sized = dict(clip=1.0, bits=16, values=1000, tolerance=0.1)
    z = 5.2154  # the multiplier calibrated for epsilon 4 over these rounds
    planned = planned_round_rdp(z, plan, **sized)
    dp_ = DistributedDp(noise_multiplier=z, clip=1.0, bits=16, plan=plan, dropout_tolerance=0.1)
    for alive, survivors in [(10_000, 9_000), (10_000, 9_500), (10_000, 10_000), (9_500, 9_500)]:
        spec = dp_.vector_spec(alive, kept=1000, server_round=1, sampled=10_000)
        assert math.sqrt(spec.local_variance) < 1.0
        dp_.curve = np.zeros(len(planned))
        dp_.summed(survivors)
        assert np.all(dp_.curve <= planned * (1 + 1e-12)), (alive, survivors)
    spec = dp_.vector_spec(10_000, kept=1000, server_round=1, sampled=10_000)
    kwargs = dict(
        clip=1.0,
        scale=spec.scale,
        dim=spec.rotated_length,
        local_stddev=math.sqrt(spec.local_variance),
        population=10**6,
        sampled=10_000,
    )
    sized_for = ddg_round_rdp(clients=9_000, **kwargs)  # tau at the survivors, both
    all_uploaded = ddg_round_rdp(clients=10_000, **kwargs)
    assert np.any(all_uploaded > sized_for)
