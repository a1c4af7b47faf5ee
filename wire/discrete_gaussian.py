"""Exact sampling of the discrete Gaussian ``N_Z(0, s^2)``, vectorized over numpy arrays.

Canonne, Kamath & Steinke, "The Discrete Gaussian for Differential Privacy", NeurIPS 2020:
Algorithm 1 (``Bernoulli(exp(-gamma))`` from ``Bernoulli(gamma / k)`` draws), Algorithm 2 (the
discrete Laplace of scale ``t`` from it) and Algorithm 3 (the discrete Gaussian by rejection from
the discrete Laplace with ``t = floor(s) + 1``). Every probability is a ratio of integers and each
``Bernoulli(p / q)`` is ``integers(0, q) < p`` from the caller's ``numpy.random.Generator``, so the
output follows the discrete Gaussian exactly (given uniform integers): no floating point touches
a probability (the attack surface of Mironov 2012). The variance is the rational
``a / VARIANCE_DENOMINATOR`` (rounded up from the requested one by :func:`exact_variance`: never
less noise than asked) and at most :data:`MAX_VARIANCE`, so every product fits in int64.

Each loop runs on the still-undecided coordinates only; the expected number of passes is a small
constant and the longest is logarithmic in the vector's length.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

VARIANCE_DENOMINATOR = 16
MAX_VARIANCE = 1 << 22  # s <= 2048 keeps 2 a Q t^2 * k below 2^63 for k <= 2^9
_SAFE_U = (1 << 31) - 1  # |u| up to here squares within int64


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


def discrete_gaussian(rng: np.random.Generator, variance: float, size: int) -> np.ndarray:
    """``size`` int64 draws of ``N_Z(0, exact_variance(variance))`` (Algorithm 3)."""
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 0:
        raise ValueError(f"sample size must be an int >= 0, got {size!r}")
    var = exact_variance(variance)
    q = VARIANCE_DENOMINATOR
    a = var.numerator * (q // var.denominator)  # variance = a / q
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
