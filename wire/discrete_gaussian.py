"""Sampling the discrete Gaussian ``N_Z(0, s^2)``, vectorized over numpy arrays.

:func:`discrete_gaussian` (what the encoders use) is a cumulative distribution table (CDT), the
standard discrete Gaussian sampler of lattice cryptography (Peikert, CRYPTO 2010;
Dwarakanath & Galbraith, AAECC 2014, "Sampling from discrete Gaussians for lattice-based
cryptography on a constrained device"; Pöppelmann, Ducas & Güneysu, CHES 2014): ``|X|``'s
cumulative probabilities over ``0..K`` in 127-bit fixed point, one 63-bit uniform integer of the
caller's ``numpy.random.Generator`` per draw looked up with ``np.searchsorted`` (a second 64-bit
word only when the first ties a table word), the draw's last bit the sign. The table is built in
integers (192-bit fixed point from one correctly rounded ``decimal`` exp), no float touches a
probability (the attack surface of Mironov 2012), and is cached per exact variance.

Its distance to the exact distribution: the cut tail ``|X| > K`` has mass below ``2^-128`` and
each of the at most ``2^15`` table entries is within ``2^-127`` of its exact cumulative value,
so the total variation distance is below :data:`CDT_TV_BOUND` ``= 2^-111`` per draw and below
``draws * 2^-111`` for a round's draws (every client's coordinates). A mechanism that is
``(eps, delta)``-DP with the exact noise is ``(eps, delta + (1 + e^eps) * TV)``-DP with this one
(TV the whole run's, at most the sum over its draws): ``10^15`` draws (1,000 clients x 10^7
values x 100 rounds) at ``eps = 20`` add below ``2e-10`` to delta, ``10^12`` draws at ``eps = 8``
below ``1.2e-18``: negligible against a target delta (``1e-5`` in the benchmarks).

:func:`discrete_gaussian_exact` keeps the exact sampler (the reference the tests compare with):
Canonne, Kamath & Steinke, "The Discrete Gaussian for Differential Privacy", NeurIPS 2020,
Algorithm 1 (``Bernoulli(exp(-gamma))`` from ``Bernoulli(gamma / k)`` draws), Algorithm 2 (the
discrete Laplace of scale ``t`` from it) and Algorithm 3 (the discrete Gaussian by rejection from
the discrete Laplace with ``t = floor(s) + 1``); every probability is a ratio of integers, so it
is exact given uniform integers. Each loop runs on the still-undecided coordinates only.

Both sample the variance ``a / VARIANCE_DENOMINATOR`` (rounded up from the requested one by
:func:`exact_variance`: never less noise than asked), at most :data:`MAX_VARIANCE`.
"""

from __future__ import annotations

import functools
import itertools
import math
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np

VARIANCE_DENOMINATOR = 16
MAX_VARIANCE = 1 << 22  # s <= 2048 keeps 2 a Q t^2 * k below 2^63 for k <= 2^9
_SAFE_U = (1 << 31) - 1  # |u| up to here squares within int64
CDT_BITS = 127  # the table's resolution: 63 bits of a draw, then 64 of a second on a tie
CDT_TAIL_BITS = 128  # the cut tail's mass is below 2^-128
CDT_TV_BOUND = 2.0**-111  # total variation distance to the exact distribution, per draw
_WORK_BITS = 192  # fixed point of the table's computation
_WORD = (1 << 64) - 1


def exact_variance(variance: float) -> Fraction:
    """The variance sampled for a requested one: rounded up to a multiple of 1/16."""
    if isinstance(variance, bool) or not isinstance(variance, int | float | Fraction | np.floating):
        raise ValueError(f"discrete Gaussian variance must be a number, got {variance!r}")
    if not math.isfinite(float(variance)) or not 0 < variance <= MAX_VARIANCE:
        raise ValueError(
            f"discrete Gaussian variance must be in (0, {MAX_VARIANCE}] (integer units), got "
            f"{variance!r}: use a coarser scale"
        )
    exact = Fraction(variance)
    return Fraction(math.ceil(exact * VARIANCE_DENOMINATOR), VARIANCE_DENOMINATOR)


def bernoulli_exp_fraction(
    rng: np.random.Generator, num: np.ndarray, den: np.ndarray
) -> np.ndarray:
    """``Bernoulli(exp(-num/den))`` per element, ``0 <= num <= den`` (Algorithm 1, gamma <= 1):
    draw ``Bernoulli(gamma / k)`` for k = 1, 2, ... until one fails; true when that k is odd."""
    num = np.asarray(num, dtype=np.int64)
    den = np.broadcast_to(np.asarray(den, dtype=np.int64), num.shape)
    k = np.ones(num.shape, dtype=np.int64)
    todo = np.arange(num.size)
    flat_num, flat_den, flat_k = num.ravel(), den.ravel(), k.ravel()
    while todo.size:
        go_on = rng.integers(0, flat_den[todo] * flat_k[todo]) < flat_num[todo]
        flat_k[todo[go_on]] += 1
        todo = todo[go_on]
    return (k % 2 == 1).reshape(num.shape)


def bernoulli_exp_minus_one(rng: np.random.Generator, size: int) -> np.ndarray:
    """``Bernoulli(exp(-1))``, ``size`` draws."""
    return bernoulli_exp_fraction(rng, np.ones(size, dtype=np.int64), np.ones(size, dtype=np.int64))


def bernoulli_exp(
    rng: np.random.Generator, whole: np.ndarray, num: np.ndarray, den: np.ndarray
) -> np.ndarray:
    """``Bernoulli(exp(-(whole + num/den)))`` with ``0 <= num < den`` (Algorithm 1, any gamma):
    ``whole`` draws of ``Bernoulli(exp(-1))`` that must all succeed, then the fraction."""
    result = np.ones(whole.shape, dtype=bool)
    left = whole.astype(np.int64, copy=True)
    todo = np.flatnonzero(left > 0)
    while todo.size:
        ok = bernoulli_exp_minus_one(rng, todo.size)
        result[todo[~ok]] = False
        left[todo] -= 1
        todo = todo[ok & (left[todo] > 0)]
    alive = np.flatnonzero(result)
    if alive.size:
        result[alive] = bernoulli_exp_fraction(rng, num[alive], den[alive])
    return result


def discrete_laplace(rng: np.random.Generator, scale: int, size: int) -> np.ndarray:
    """``size`` draws of the discrete Laplace ``P(x) ~ exp(-|x| / scale)`` (Algorithm 2)."""
    t = int(scale)
    out = np.empty(size, dtype=np.int64)
    todo = np.arange(size)
    while todo.size:
        m = todo.size
        u = rng.integers(0, t, m)
        keep = bernoulli_exp_fraction(rng, u, np.full(m, t, dtype=np.int64))
        v = np.zeros(m, dtype=np.int64)
        counting = np.flatnonzero(keep)
        while counting.size:  # V: successes of Bernoulli(exp(-1)) before the first failure
            ok = bernoulli_exp_minus_one(rng, counting.size)
            v[counting[ok]] += 1
            counting = counting[ok]
        x = u + t * v
        negative = rng.integers(0, 2, m).astype(bool)
        done = keep & ~(negative & (x == 0))
        out[todo[done]] = np.where(negative, -x, x)[done]
        todo = todo[~done]
    return out


def _checked_numerator(variance: float, size: int) -> int:
    """``a`` of the sampled variance ``a / VARIANCE_DENOMINATOR``; ValueError on hostile input."""
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 0:
        raise ValueError(f"sample size must be an int >= 0, got {size!r}")
    var = exact_variance(variance)
    return var.numerator * (VARIANCE_DENOMINATOR // var.denominator)


@functools.lru_cache(maxsize=8)
def cdt_table(a: int) -> tuple[np.ndarray, np.ndarray]:
    """The CDT of ``|X|``, ``X ~ N_Z(0, a / 16)``: ``C_j = round(2^127 P(|X| <= j))`` for
    ``j < K`` as high and low uint64 words (read-only; ``C_K = 2^127``), ``K`` the first value
    whose tail beyond has mass below ``2^-128``. ``w_x = exp(-8 x^2 / a)`` by the recurrence
    ``w_{x+1} = w_x q^(2x+1)``, ``q = exp(-8 / a)``, in 192-bit fixed point: every ``w_x`` is
    within ``x^2 2^-190`` (``x <= 2^15``) of its value, so each ``C_j`` within ``2^-127``."""
    one = 1 << _WORK_BITS
    with localcontext() as ctx:
        ctx.prec = 80
        q = int((Decimal(-VARIANCE_DENOMINATOR // 2) / Decimal(a)).exp() * Decimal(one))
    q2 = q * q >> _WORK_BITS
    w, ratio, weights = one, q, [one]  # ratio = w_{x+1} / w_x = q^(2x+1)
    while True:
        w = w * ratio >> _WORK_BITS
        ratio = ratio * q2 >> _WORK_BITS
        # values left out (y >= x; later ratios smaller): 2 sum w_y <= 2 w / (1 - ratio) < 2^-129
        if (w << (CDT_TAIL_BITS + 2)) < one - ratio:
            break
        weights.append(w)
    cumulative = list(itertools.accumulate([weights[0]] + [2 * v for v in weights[1:]]))
    total = cumulative[-1]
    words = [((c << (CDT_BITS + 1)) + total) // (2 * total) for c in cumulative[:-1]]
    hi = np.array([c >> 64 for c in words], dtype=np.uint64)
    lo = np.array([c & _WORD for c in words], dtype=np.uint64)
    hi.setflags(write=False)
    lo.setflags(write=False)
    return hi, lo


def cdt_lookup(
    rng: np.random.Generator, hi: np.ndarray, lo: np.ndarray, draws: np.ndarray
) -> np.ndarray:
    """Signed values of uniform uint64 ``draws``: ``U = (draw >> 1) 2^64 + L`` against the
    table (``|X| = #{j : C_j <= U}``), sign ``draw & 1``; ``L`` is drawn from ``rng`` only for
    the draws whose high word equals a table word (about ``K 2^-63`` of them)."""
    top = draws >> np.uint64(1)
    j = np.searchsorted(hi, top, side="right")
    ties = np.flatnonzero((j > 0) & (hi[j - 1] == top)) if hi.size else j[:0]
    if ties.size:  # within the run of equal high words, C_j <= U iff lo_j <= L
        low = rng.integers(0, 1 << 64, ties.size, dtype=np.uint64)
        first = np.searchsorted(hi, top[ties], side="left")
        for i, f, word in zip(ties.tolist(), first.tolist(), low, strict=True):
            j[i] = f + int(np.searchsorted(lo[f : j[i]], word, side="right"))
    magnitude = j.astype(np.int64)
    return np.where((draws & np.uint64(1)).astype(bool), -magnitude, magnitude)


def discrete_gaussian(rng: np.random.Generator, variance: float, size: int) -> np.ndarray:
    """``size`` int64 draws of ``N_Z(0, exact_variance(variance))`` from the CDT (total
    variation distance below :data:`CDT_TV_BOUND` per draw to the exact distribution)."""
    a = _checked_numerator(variance, size)
    hi, lo = cdt_table(a)
    return cdt_lookup(rng, hi, lo, rng.integers(0, 1 << 64, int(size), dtype=np.uint64))


def discrete_gaussian_exact(rng: np.random.Generator, variance: float, size: int) -> np.ndarray:
    """``size`` int64 draws of exactly ``N_Z(0, exact_variance(variance))`` (Algorithm 3)."""
    a = _checked_numerator(variance, size)  # variance = a / q
    q = VARIANCE_DENOMINATOR
    t = math.isqrt(a // q) + 1  # floor(s) + 1
    den = 2 * a * q * t * t  # gamma = (|Y| t q - a)^2 / (2 a q t^2)
    out = np.empty(int(size), dtype=np.int64)
    todo = np.arange(int(size))
    while todo.size:
        y = discrete_laplace(rng, t, todo.size)
        u = np.abs(y) * (t * q) - a
        whole = np.empty(y.size, dtype=np.int64)
        rem = np.empty(y.size, dtype=np.int64)
        small = np.abs(u) <= _SAFE_U
        sq = u[small] * u[small]
        whole[small], rem[small] = sq // den, sq % den
        for i in np.flatnonzero(~small):  # far tail: exact Python ints, capped whole part
            w, r = divmod(int(u[i]) ** 2, den)
            whole[i], rem[i] = min(w, 1 << 62), r
        accept = bernoulli_exp(rng, whole, rem, np.full(y.size, den, dtype=np.int64))
        out[todo[accept]] = y[accept]
        todo = todo[~accept]
    return out
