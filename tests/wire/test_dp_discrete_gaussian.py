"""The exact discrete Gaussian sampler (Canonne, Kamath & Steinke 2020, Algorithms 1-3).

Monte Carlo checks use fixed seeds and a 5-standard-error tolerance (a correct sampler fails one
with probability below 1e-6 per check; a seeded run is deterministic)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from wire.discrete_gaussian import (
    MAX_VARIANCE,
    bernoulli_exp,
    bernoulli_exp_fraction,
    discrete_gaussian,
    discrete_laplace,
    exact_variance,
)

N = 200_000


def pmf(variance: float, support: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(-support, support + 1)
    w = np.exp(-(x.astype(np.float64) ** 2) / (2 * variance))
    return x, w / w.sum()


def within(observed: float, expected: float, stderr: float) -> bool:
    return abs(observed - expected) <= 5 * stderr


@pytest.mark.parametrize(("num", "den"), [(1, 3), (1, 1), (0, 5), (7, 8)])
def test_bernoulli_exp_fraction_rate(num, den):
    rng = np.random.default_rng(11)
    draws = bernoulli_exp_fraction(rng, np.full(N, num), np.full(N, den))
    p = math.exp(-num / den)
    assert within(draws.mean(), p, math.sqrt(p * (1 - p) / N) + 1e-12)


def test_bernoulli_exp_with_a_whole_part():
    rng = np.random.default_rng(12)
    whole, num, den = np.full(N, 2), np.full(N, 1), np.full(N, 2)
    p = math.exp(-2.5)
    assert within(bernoulli_exp(rng, whole, num, den).mean(), p, math.sqrt(p * (1 - p) / N))


@pytest.mark.parametrize("t", [1, 3, 40])
def test_discrete_laplace_variance(t):
    rng = np.random.default_rng(13)
    x = discrete_laplace(rng, t, N)
    r = math.exp(-1 / t)
    variance = 2 * r / (1 - r) ** 2
    assert within(x.mean(), 0.0, math.sqrt(variance / N))
    assert within(
        x.var(), variance, variance * math.sqrt(8 / N)
    )  # Laplace kurtosis 6: var(x^2)<=5v^2


@pytest.mark.parametrize("variance", [0.5, 3.0, 100.0, 1 << 20])
def test_mean_and_variance(variance):
    rng = np.random.default_rng(14)
    x = discrete_gaussian(rng, variance, N)
    assert x.dtype == np.int64
    exact = float(exact_variance(variance))
    support = int(12 * math.sqrt(exact)) + 3
    grid, p = pmf(exact, support)
    true_var = float((grid.astype(np.float64) ** 2 * p).sum())  # below exact for small variances
    assert within(x.mean(), 0.0, math.sqrt(true_var / N))
    assert within(x.var(), true_var, true_var * math.sqrt(2 / N))


def test_probability_of_each_value():
    rng = np.random.default_rng(15)
    x = discrete_gaussian(rng, 2.0, N)
    grid, p = pmf(2.0, 12)
    counts = np.array([(x == v).sum() for v in grid])
    assert counts.sum() == N
    for c, q in zip(counts, p, strict=True):
        assert within(c / N, q, math.sqrt(q * (1 - q) / N) + 1 / N)


def test_seeded_and_sized():
    a = discrete_gaussian(np.random.default_rng(3), 50.0, 1000)
    b = discrete_gaussian(np.random.default_rng(3), 50.0, 1000)
    assert np.array_equal(a, b)
    assert discrete_gaussian(np.random.default_rng(3), 50.0, 0).shape == (0,)


def test_variance_is_rounded_up_never_down():
    assert exact_variance(0.5) == Fraction(1, 2)
    assert exact_variance(0.51) == Fraction(9, 16)
    assert exact_variance(1e-9) == Fraction(1, 16)


@pytest.mark.parametrize("bad", [float("nan"), -1.0, 0, MAX_VARIANCE + 1, "2", None, True])
def test_hostile_variances_are_value_errors(bad):
    with pytest.raises(ValueError):
        discrete_gaussian(np.random.default_rng(0), bad, 10)


@pytest.mark.parametrize("bad", [-1, 2.5, True])
def test_hostile_sizes_are_value_errors(bad):
    with pytest.raises(ValueError):
        discrete_gaussian(np.random.default_rng(0), 1.0, bad)
