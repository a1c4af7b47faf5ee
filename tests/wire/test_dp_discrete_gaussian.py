"""The discrete Gaussian samplers: the CDT the encoders use and the exact one it is checked
against (Canonne, Kamath & Steinke 2020, Algorithms 1-3).

Monte Carlo checks use fixed seeds and a 5-standard-error tolerance (a correct sampler fails one
with probability below 1e-6 per check; a seeded run is deterministic). The CDT's table is also
checked entry by entry against the pmf computed independently in 50-digit decimals."""

from __future__ import annotations

import math
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats as scipy_stats

from wire.discrete_gaussian import (
    CDT_BITS,
    CDT_TV_BOUND,
    MAX_VARIANCE,
    bernoulli_exp,
    bernoulli_exp_fraction,
    cdt_lookup,
    cdt_table,
    discrete_gaussian,
    discrete_gaussian_exact,
    discrete_laplace,
    exact_variance,
)

N = 200_000
SAMPLERS = [discrete_gaussian, discrete_gaussian_exact]


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


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("variance", [1 / 16, 0.5, 3.0, 100.0, 1 << 20, MAX_VARIANCE])
def test_mean_and_variance(sampler, variance):
    rng = np.random.default_rng(14)
    x = sampler(rng, variance, N)
    assert x.dtype == np.int64
    exact = float(exact_variance(variance))
    support = int(12 * math.sqrt(exact)) + 3
    grid, p = pmf(exact, support)
    true_var = float((grid.astype(np.float64) ** 2 * p).sum())  # below exact for small variances
    fourth = float((grid.astype(np.float64) ** 4 * p).sum())
    assert within(x.mean(), 0.0, math.sqrt(true_var / N))
    assert within(x.var(), true_var, math.sqrt((fourth - true_var**2) / N))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_probability_of_each_value(sampler):
    rng = np.random.default_rng(15)
    x = sampler(rng, 2.0, N)
    grid, p = pmf(2.0, 12)
    counts = np.array([(x == v).sum() for v in grid])
    assert counts.sum() == N
    for c, q in zip(counts, p, strict=True):
        assert within(c / N, q, math.sqrt(q * (1 - q) / N) + 1 / N)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_seeded_and_sized(sampler):
    a = sampler(np.random.default_rng(3), 50.0, 1000)
    b = sampler(np.random.default_rng(3), 50.0, 1000)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, sampler(np.random.default_rng(4), 50.0, 1000))
    assert sampler(np.random.default_rng(3), 50.0, 0).shape == (0,)
    assert sampler(np.random.default_rng(3), 50.0, np.int64(7)).shape == (7,)


def test_variance_is_rounded_up_never_down():
    assert exact_variance(0.5) == Fraction(1, 2)
    assert exact_variance(0.51) == Fraction(9, 16)
    assert exact_variance(1e-9) == Fraction(1, 16)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize(
    "bad", [float("nan"), float("inf"), -1.0, 0, MAX_VARIANCE + 1, 1e300, "2", None, True]
)
def test_hostile_variances_are_value_errors(sampler, bad):
    with pytest.raises(ValueError):
        sampler(np.random.default_rng(0), bad, 10)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("bad", [-1, 2.5, True, None, "10"])
def test_hostile_sizes_are_value_errors(sampler, bad):
    with pytest.raises(ValueError):
        sampler(np.random.default_rng(0), 1.0, bad)


# ----------------------------------------------------------------------------- the CDT
def table_pmf(a: int) -> list[int]:
    """P(|X| = j) of the CDT in units of 2^-127, from its high and low words."""
    hi, lo = cdt_table(a)
    words = [(int(h) << 64) | int(w) for h, w in zip(hi, lo, strict=True)] + [1 << CDT_BITS]
    return [b - c for b, c in zip(words, [0, *words[:-1]], strict=True)]


@pytest.mark.parametrize("a", [1, 2, 32, 16 * 1000])  # variance a / 16: 1/16, 1/8, 2, 1000
def test_table_is_within_its_total_variation_bound(a):
    """Against exp(-8 x^2 / a) normalized over |x| <= 40 s + 10 in 50-digit decimals
    (independent of the table's integer recurrence); the cut tail counts in full."""
    masses = table_pmf(a)
    assert all(m >= 0 for m in masses) and sum(masses) == 1 << CDT_BITS
    with localcontext() as ctx:
        ctx.prec = 50
        far = int(40 * math.sqrt(a / 16)) + 10
        w = [(Decimal(-8 * x * x) / Decimal(a)).exp() for x in range(far + 1)]
        exact = [w[0]] + [2 * v for v in w[1:]]
        total = sum(exact)
        unit = Decimal(2) ** -CDT_BITS
        tv = (
            sum(
                abs(Decimal(m) * unit - e / total)
                for m, e in zip(masses + [0] * (far + 1 - len(masses)), exact, strict=True)
            )
            / 2
        )
    bound = Decimal(len(masses)) * Decimal(2) ** -CDT_BITS + Decimal(2) ** -128
    assert tv < bound <= Decimal(CDT_TV_BOUND)  # entries within 2^-127, tail below 2^-128
    assert len(masses) < far


def test_table_stays_within_the_bound_s_size_at_the_largest_variance():
    """The TV bound counts at most 2^15 entries of 2^-127 error each."""
    hi, lo = cdt_table(16 * MAX_VARIANCE)
    assert hi.size < 1 << 15 and not hi.flags.writeable and not lo.flags.writeable
    s = math.sqrt(MAX_VARIANCE)
    assert 12 * s < hi.size < 15 * s  # cut where exp(-K^2 / 2 s^2) s < 2^-128


@pytest.mark.parametrize("variance", [1 / 16, 2.0, 50.0, 9573.5, MAX_VARIANCE])
def test_cdt_samples_match_the_exact_pmf(variance):
    """Chi-square of 200,000 draws against the exact pmf, bins of expected count >= 20."""
    x = discrete_gaussian(np.random.default_rng(16), variance, N)
    exact = float(exact_variance(variance))
    grid, p = pmf(exact, int(14 * math.sqrt(exact)) + 4)
    expected, edges, acc, start = [], [], 0.0, 0
    for i, q in enumerate(p * N):  # merge neighbours until a bin expects 20 draws
        acc += q
        if acc >= 20 and (p[i + 1 :].sum() * N >= 20):
            expected.append(acc)
            edges.append(grid[start])
            acc, start = 0.0, i + 1
    expected.append(acc)
    edges.append(grid[start])
    counts = np.bincount(
        np.searchsorted(np.array(edges), x, side="right") - 1, minlength=len(edges)
    )
    assert counts.sum() == N and len(expected) >= 3
    assert scipy_stats.chisquare(counts, np.array(expected) * N / sum(expected)).pvalue > 1e-5


@pytest.mark.parametrize("a", [32, 16 * MAX_VARIANCE])
def test_cdt_ties_are_resolved_by_a_second_word(a):
    """Draws whose high 63 bits equal a table word (runs of equal words in the far tail) read a
    second 64-bit word from the rng: the result is #{j : C_j <= U} with exact 127-bit U."""
    hi, lo = cdt_table(a)
    words = [(int(h) << 64) | int(w) for h, w in zip(hi, lo, strict=True)]
    runs = np.flatnonzero(hi[1:] == hi[:-1])
    drawable = int(np.searchsorted(hi, np.uint64(1 << 63)))  # C_j = 2^127: past any U
    picks = [0, hi.size // 2, drawable - 1] + [int(r) for r in runs[:5]]
    top = np.array([hi[i] for i in picks], dtype=np.uint64)
    draws = np.concatenate([top << np.uint64(1), (top << np.uint64(1)) | np.uint64(1)])
    if a > 32:
        assert runs.size > 1  # the tail's entries below 2^-64 share high words
    got = cdt_lookup(np.random.default_rng(5), hi, lo, draws)
    seconds = iter(np.random.default_rng(5).integers(0, 1 << 64, draws.size, dtype=np.uint64))
    for d, value in zip(draws.tolist(), got.tolist(), strict=True):
        u = ((d >> 1) << 64) | int(next(seconds))
        magnitude = sum(c <= u for c in words)
        assert value == (-magnitude if d & 1 else magnitude)


def test_cdt_without_ties_reads_one_word_per_draw():
    """Determinism from the rng: the CDT consumes exactly one 64-bit integer per draw."""
    rng, twin = np.random.default_rng(9), np.random.default_rng(9)
    discrete_gaussian(rng, 100.0, 1000)
    twin.integers(0, 1 << 64, 1000, dtype=np.uint64)
    assert rng.integers(1 << 62) == twin.integers(1 << 62)


def test_cdt_and_exact_samplers_agree():
    """Two-sample chi-square between the fast and the exact sampler at a small variance."""
    fast = discrete_gaussian(np.random.default_rng(21), 3.0, 50_000)
    exact = discrete_gaussian_exact(np.random.default_rng(22), 3.0, 50_000)
    edges = np.arange(-5, 6)  # values below -5 and above 5 pool into the end bins
    table = [np.bincount(np.clip(v, -5, 5) + 5, minlength=edges.size) for v in (fast, exact)]
    assert scipy_stats.chi2_contingency(np.array(table)).pvalue > 1e-5
