"""The Gaussian-moments bound for the sampled distributed discrete Gaussian
(:mod:`strategies.privacy.ddg_accounting`, bound 2): its two premises checked numerically, the
bound against dp-accounting's sampled Gaussian, and what it buys at small epsilon."""

from __future__ import annotations

import math

import dp_accounting as dp
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant as rdp
from scipy import special

from strategies.privacy import accounting
from strategies.privacy.ddg_accounting import (
    GAUSSIAN_ORDERS,
    ORDERS,
    ddg_rdp,
    ddg_round_rdp,
    gaussian_moments_rdp,
    sum_closeness,
    tau,
    wor_subsampled_rdp,
)
from strategies.privacy.distributed import calibrate_multiplier
from wire.dp import DEFAULT_BETA, rounded_l2_bound


def _discrete_gaussian(stddev: float, radius: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(-radius, radius + 1)
    p = np.exp(-(x.astype(np.float64) ** 2) / (2 * stddev**2))
    return x, p / p.sum()


@pytest.mark.parametrize("center", [0.0, 0.5])
def test_integer_shifts_give_the_discrete_gaussian_the_gaussians_moments(center):
    """E_R[(P/R)^a (Q/R)^b] for N_Z centred at mu_p, mu_q and R at 0 is the continuous
    Gaussian's exp((c^2 - a mu_p^2 - b mu_q^2) / (2 s^2)), c = a mu_p + b mu_q, whenever c is an
    integer; a half-integer centre breaks it (the premise is the integers', not the shape's)."""
    s = 0.5  # small: far from the continuous Gaussian, where the identity is not trivial
    x = np.arange(-80, 81)
    log_r = -(x**2) / (2 * s**2)
    log_r -= special.logsumexp(log_r)
    mu_p, mu_q = 2 + center, -1 + center

    def log_ratio(mu):  # log P/R for P centred at mu
        return (2 * x * mu - mu**2) / (2 * s**2)

    for a, b in [(2, 0), (3, 0), (2, 1), (3, -1), (4, 2), (1, -2)]:
        c = a * mu_p + b * mu_q
        theirs = (c**2 - a * mu_p**2 - b * mu_q**2) / (2 * s**2)
        ours = special.logsumexp(log_r + a * log_ratio(mu_p) + b * log_ratio(mu_q))
        if center == 0.0:
            assert ours == pytest.approx(theirs, abs=1e-9)
        elif c != round(c):
            assert abs(ours - theirs) > 1e-3


@pytest.mark.parametrize("stddev, clients", [(0.6, 2), (0.6, 5), (0.8, 3), (1.0, 4), (1.5, 2)])
def test_a_sum_of_shares_is_within_tau_of_one_discrete_gaussian(stddev, clients):
    """Proposition 14 (Kairouz, Liu & Steinke 2021) as the bound reads it: every probability of
    the sum of ``clients`` shares N_Z(0, s^2) is within a factor 1 -+ tau of N_Z(0, n s^2)'s."""
    radius = int(40 * stddev * math.sqrt(clients)) + 10
    _, share = _discrete_gaussian(stddev, radius)
    total = share
    for _ in range(clients - 1):
        total = np.convolve(total, share)
    half = (len(total) - 1) // 2
    _, one = _discrete_gaussian(stddev * math.sqrt(clients), half)
    window = slice(half - int(12 * stddev * math.sqrt(clients)), half + 1 + int(12 * stddev))
    ratio = total[window] / one[window]
    t = tau(stddev, clients)
    assert np.all(np.abs(ratio - 1) <= t)
    assert sum_closeness(stddev, clients, 1) == pytest.approx(-math.log1p(-t))
    assert sum_closeness(0.3, 20, 10) == math.inf  # tau >= 1: this bound says nothing


def test_the_bound_is_the_sampled_gaussians_plus_the_sums_closeness():
    n, s, l2, d = 50, 40.0, 300.0, 4096
    z = math.sqrt(n) * s / l2
    accountant = rdp.RdpAccountant(list(GAUSSIAN_ORDERS), dp.NeighboringRelation.REPLACE_ONE)
    accountant.compose(dp.SampledWithoutReplacementDpEvent(500, 50, dp.GaussianDpEvent(z)))
    ours = gaussian_moments_rdp(l2=l2, local_stddev=s, clients=n, dim=d, population=500, sampled=50)
    at = [ORDERS.index(o) for o in GAUSSIAN_ORDERS]
    assert tau(s, n) < 1e-300 and np.allclose(ours[at], accountant.rdp, rtol=1e-12)
    assert np.all(np.isinf(np.delete(ours, at)))  # order 256: the general bound alone
    small = gaussian_moments_rdp(
        l2=l2, local_stddev=0.7, clients=n, dim=d, population=500, sampled=50
    )
    a = np.asarray(GAUSSIAN_ORDERS, dtype=np.float64)
    t = sum_closeness(0.7, n, d)
    assert 0 < t < math.inf
    z_small = math.sqrt(n) * 0.7 / l2
    plain = rdp.RdpAccountant(list(GAUSSIAN_ORDERS), dp.NeighboringRelation.REPLACE_ONE)
    plain.compose(dp.SampledWithoutReplacementDpEvent(500, 50, dp.GaussianDpEvent(z_small)))
    assert np.allclose(small[at], plain.rdp + (2 * a - 1) * t / (a - 1), rtol=1e-12)


def test_a_round_takes_the_smaller_bound_at_each_order():
    kwargs = dict(clip=1.0, scale=300.0, dim=4096, clients=50, population=500, sampled=50)
    for s in (0.4, 250.0):  # tau >= 1 (the general bound alone); tau ~ 0 at z ~ 2.9
        curve = ddg_round_rdp(local_stddev=s, **kwargs)
        single = rounded_l2_bound(300.0, 4096, DEFAULT_BETA)
        l2, l1 = 2 * single, 2 * min(math.sqrt(4096) * single, single**2)
        base = ddg_rdp(np.arange(max(ORDERS) + 1), l2, l1, s, 50, kwargs["dim"])
        general = np.array([wor_subsampled_rdp(base, a, 0.1) for a in ORDERS])
        moments = gaussian_moments_rdp(
            l2=l2, local_stddev=s, clients=50, dim=kwargs["dim"], population=500, sampled=50
        )
        assert np.array_equal(curve, np.minimum(general, moments))
        if s < 1:
            assert np.array_equal(curve, general)
        else:
            assert np.all(curve[1:40] < general[1:40])  # order 2 is the same term in both


def test_at_epsilon_1_distributed_needs_about_central_dps_noise():
    """The benchmark's plan (50 of 500 clients a round, 15 rounds, delta 1e-5): 16 bits per
    coordinate calibrate within 1% of central DP's multiplier (the rounding's inflated norm);
    Theorem 9 alone asked about five times central's."""
    plan = accounting.RoundPlan(population=500, per_round=50, rounds=15, delta=1e-5)
    central = accounting.calibrate_noise(1.0, plan)
    distributed = calibrate_multiplier(1.0, plan, clip=1.0, bits=16, values=9_610)
    assert central <= distributed <= 1.01 * central
