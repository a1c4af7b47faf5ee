"""Accounting for the distributed discrete Gaussian under secure aggregation.

Each of the ``n`` clients of a round adds discrete Gaussian noise ``N_Z(0, s^2)`` (integer units,
after scaling by ``1/gamma`` and conditional randomized rounding) to its integer vector; the
server sees only the sum. Sensitivities ``D2``, ``D1`` are in integer units: conditional
randomized rounding of a vector of L2 norm ``c`` in ``d`` coordinates, retried until the rounded
norm is within the bound, keeps it below ``min(c + sqrt(d), sqrt(c^2 + d/4 + sqrt(2 ln(1/beta))
(c + sqrt(d)/2)))`` (Kairouz, Liu & Steinke, "The Distributed Discrete Gaussian Mechanism for
Federated Learning with Secure Aggregation", ICML 2021, Theorem 1, beta the rounding's retry
bound); integer coordinates give ``D1 <= min(sqrt(d) D2, D2^2)``. Pollen samples ``m`` of ``N``
clients without replacement, so neighbours replace one client (sensitivities double).

A round's RDP at each order is the smaller of two sound bounds:

1. **General** (any mechanism's RDP curve): the sum of ``n`` discrete Gaussians is not one, but
   it is close to one of variance ``n s^2`` (ibid., Theorem 1 / Proposition 14): with
   ``tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 s^2 k / (k + 1))`` the release is RDP with

       eps(alpha) = min( alpha D2^2 / (2 n s^2) + tau d,
                         alpha/2 (D2^2 / (n s^2) + 2 D1 tau / (sqrt(n) s) + tau^2 d),
                         alpha/2 (D2 / (sqrt(n) s) + tau sqrt(d))^2 ),

   amplified by sampling with Wang, Balle & Kasiviswanathan (AISTATS 2019) Theorem 9. That
   theorem cannot use the noise's shape: its terms of order j >= 3 keep a factor 2 however much
   noise there is, which at small epsilon costs several times central DP's noise.
2. **Gaussian moments** (:func:`gaussian_moments_rdp`): a single discrete Gaussian with an
   integer shift has every integer-order moment of its likelihood ratio equal to the continuous
   Gaussian's (the sum over the integers of ``exp(-(x - c)^2 / 2S^2)`` is the same for every
   integer ``c``; Canonne, Kamath & Steinke 2020 use it for their Theorem 4), so dp-accounting's
   bound for the without-replacement sampled Gaussian (Wang et al. Theorem 27) holds for it at
   multiplier ``sqrt(n) s / D2``: that bound reads the mechanism only through upper bounds on
   integer-order moments of one neighbouring pair (even-order Pearson-Vajda divergences, odd
   ones by Cauchy-Schwarz, and ``exp((j - 1) eps(j))``), which grow with the shift, so the
   continuous Gaussian at distance ``D2`` bounds every integer shift within ``D2``. The sum of
   shares is within ``t = -d ln(1 - tau)`` in max-divergence of that discrete Gaussian (per
   coordinate within ``tau``, Proposition 14; ``tests/strategies/test_privacy_ddg_accounting.py``
   checks both premises numerically), and so are the sampled mixtures; a pair within ``t`` of
   another pair has Renyi divergence at most ``(2 alpha - 1) t / (alpha - 1)`` above it.

Not in either bound: the noise sampler's distance from the exact discrete Gaussian (at most
2^-111 in total variation per draw, :mod:`wire.discrete_gaussian`) adds about draws x 2^-111 to
delta; and the rate ``m / N`` assumes that who drops out does not depend on who was sampled.

Dropouts: only the survivors' shares are in the sum, so a round is accounted with the number of
clients whose noise was summed (:func:`ddg_round_rdp`'s ``clients``), never the number sampled.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import dp_accounting as dp
import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant as rdp
from scipy import special

from strategies.privacy.accounting import PrivacyError, is_int, is_real, smallest_meeting
from wire.dp import DEFAULT_BETA, rounded_l2_bound

# integer orders only: Theorem 9's binomial expansion needs them
ORDERS: tuple[int, ...] = tuple(range(2, 65)) + (80, 96, 128, 256, 512)
# the Gaussian-moments bound skips 256: dp-accounting's exact form there costs O(order^2) a call
GAUSSIAN_ORDERS: tuple[int, ...] = tuple(a for a in ORDERS if a != 256)


def tau(local_stddev: float, clients: int) -> float:
    """Theorem 1's ``tau`` for ``clients`` shares of stddev ``local_stddev`` (integer units)."""
    s2 = float(local_stddev) ** 2
    k = np.arange(1, int(clients), dtype=np.float64)
    return float(10.0 * np.exp(-2.0 * math.pi**2 * s2 * k / (k + 1)).sum())


def ddg_rdp(
    orders: Sequence[float],
    l2: float,
    l1: float,
    local_stddev: float,
    clients: int,
    dim: int,
    tau_clients: int = 0,
) -> np.ndarray:
    """Proposition 14's RDP curve of the sum of ``clients`` discrete Gaussian shares, ``tau``
    taken at ``tau_clients >= clients`` shares (0: ``clients``; see :func:`ddg_round_rdp`)."""
    a = np.asarray(orders, dtype=np.float64)
    sd = math.sqrt(clients) * local_stddev
    t = tau(local_stddev, max(tau_clients, clients))
    first = a * l2**2 / (2 * sd**2) + t * dim
    second = a / 2 * (l2**2 / sd**2 + 2 * l1 * t / sd + t**2 * dim)
    third = a / 2 * (l2 / sd + t * math.sqrt(dim)) ** 2
    return np.minimum(np.minimum(first, second), third)


def wor_subsampled_rdp(base: np.ndarray, order: int, rate: float) -> float:
    """Wang, Balle & Kasiviswanathan 2019 Theorem 9 at integer ``order`` >= 2: RDP of running a
    mechanism on a uniformly drawn ``rate`` fraction of the clients, from its replace-one RDP
    ``base[j]`` at orders ``j = 0..order`` (unbounded at infinity, as any Gaussian's); never
    above the unsampled ``base[order]``."""
    if rate >= 1:
        return float(base[order])
    e2 = float(base[2])
    j = np.arange(3, order + 1)
    log_terms = np.concatenate(
        [
            [0.0],
            [
                2 * math.log(rate)
                + _log_comb(order, 2)
                + min(math.log(4) + e2 + math.log(-math.expm1(-e2)), math.log(2) + e2)
            ],
            math.log(2) + (j - 1) * base[3 : order + 1] + j * math.log(rate) + _log_comb(order, j),
        ]
    )
    return min(float(special.logsumexp(log_terms)) / (order - 1), float(base[order]))


def sum_closeness(local_stddev: float, clients: int, dim: int, tau_clients: int = 0) -> float:
    """Max-divergence (both ways) between the sum of ``clients`` shares ``N_Z(0, s^2)^dim`` and
    ``N_Z(0, clients s^2)^dim``: ``-dim ln(1 - tau)`` (Proposition 14's per-coordinate ratio is
    within ``1 +- tau``), infinite when ``tau >= 1``; ``tau`` at ``tau_clients`` as in
    :func:`ddg_rdp`."""
    t = tau(local_stddev, max(tau_clients, clients))
    return -dim * math.log1p(-t) if t < 1 else math.inf


@functools.lru_cache(maxsize=64)  # a run's rounds repeat one curve; each costs O(order^2)
def gaussian_moments_rdp(
    *,
    l2: float,
    local_stddev: float,
    clients: int,
    dim: int,
    population: int,
    sampled: int,
    tau_clients: int = 0,
) -> np.ndarray:
    """RDP at :data:`ORDERS` (infinite where not computed) of ``clients`` discrete Gaussian
    shares of stddev ``local_stddev`` on a replace-one sensitivity ``l2`` (integer units),
    ``sampled`` of ``population`` drawn without replacement: dp-accounting's sampled-Gaussian
    bound at multiplier ``sqrt(clients) local_stddev / l2`` plus the sum's closeness
    (module docstring, bound 2)."""
    curve = np.full(len(ORDERS), math.inf)
    t = sum_closeness(local_stddev, clients, dim, tau_clients)
    if not math.isfinite(t):
        curve.setflags(write=False)
        return curve
    z = math.sqrt(clients) * local_stddev / l2
    accountant = rdp.RdpAccountant(list(GAUSSIAN_ORDERS), dp.NeighboringRelation.REPLACE_ONE)
    accountant.compose(
        dp.SampledWithoutReplacementDpEvent(population, sampled, dp.GaussianDpEvent(z))
    )
    a = np.asarray(GAUSSIAN_ORDERS, dtype=np.float64)
    curve[[ORDERS.index(o) for o in GAUSSIAN_ORDERS]] = accountant.rdp + (2 * a - 1) * t / (a - 1)
    curve.setflags(write=False)  # cached: shared by every caller
    return curve


def _log_comb(n: int, k: int | np.ndarray) -> float | np.ndarray:
    return special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)


def ddg_round_rdp(
    *,
    clip: float,
    scale: float,
    dim: int,
    local_stddev: float,
    clients: int,
    population: int,
    sampled: int,
    tau_clients: int = 0,
    beta: float = DEFAULT_BETA,
) -> np.ndarray:
    """One round's RDP curve at :data:`ORDERS`: ``clients`` noise shares (the survivors) of
    stddev ``local_stddev`` (integer units) on updates clipped to ``clip`` and scaled by
    ``scale``, ``sampled`` of ``population`` clients drawn without replacement.

    ``tau_clients`` (>= ``clients``; 0: ``clients``): Theorem 1's ``tau`` grows with the number
    of shares, and every term of both bounds grows with ``tau``, so taking it at more shares
    than were summed still bounds the round. At the round's upper limit (the clients that could
    have uploaded) the curve can only fall as more of them upload; with ``tau`` at the
    survivors it can rise where shares are small (stddev about 1 integer unit), which would
    let a round whose every client uploaded spend more than one sized for dropouts."""
    check_positive(clip=clip, scale=scale, local_stddev=local_stddev)
    for name, value in (("dim", dim), ("clients", clients), ("population", population)):
        if not is_int(value) or value < 1:
            raise PrivacyError(f"dp {name} must be an int >= 1, got {value!r}")
    if not is_int(tau_clients) or not (tau_clients == 0 or clients <= tau_clients <= sampled):
        raise PrivacyError(
            f"dp tau_clients ({tau_clients!r}) must be 0 or an int between the clients whose "
            f"noise was summed ({clients}) and those sampled ({sampled})"
        )
    if not is_int(sampled) or not clients <= sampled <= population:
        raise PrivacyError(
            f"dp sampled ({sampled!r}) must be an int between the clients whose noise was summed "
            f"({clients}) and the population ({population})"
        )
    if not is_real(beta) or not 0 <= beta < 1:
        raise PrivacyError(f"dp rounding beta must be in [0, 1), got {beta!r}")
    l2 = rounded_l2_bound(clip * scale, dim, beta)
    l1 = min(math.sqrt(dim) * l2, l2**2)
    # replace-one neighbours: one client's vector swapped for another moves the sum twice as far
    l2, l1 = 2 * l2, 2 * l1

    base = ddg_rdp(np.arange(max(ORDERS) + 1), l2, l1, local_stddev, clients, dim, tau_clients)
    rate = sampled / population
    general = np.array([wor_subsampled_rdp(base, a, rate) for a in ORDERS])
    moments = gaussian_moments_rdp(
        l2=l2,
        local_stddev=local_stddev,
        clients=clients,
        dim=dim,
        population=population,
        sampled=sampled,
        tau_clients=tau_clients,
    )
    return np.minimum(general, moments)  # both bound every order: so does the smaller


def check_positive(**values: object) -> None:
    for name, value in values.items():
        if not is_real(value) or not (math.isfinite(value) and value > 0):
            raise PrivacyError(f"dp {name} must be a positive number, got {value!r}")


def epsilon_of(curve: np.ndarray, delta: float) -> float:
    """(epsilon, delta) of an RDP curve at :data:`ORDERS`."""
    return float(rdp.compute_epsilon(ORDERS, curve, delta)[0])


def ddg_epsilon(*, rounds: int, delta: float, **round_kwargs: object) -> float:
    """Epsilon after ``rounds`` identical rounds (see :func:`ddg_round_rdp` for the rest)."""
    if not is_int(rounds) or rounds < 0:
        raise PrivacyError(f"rounds must be an int >= 0, got {rounds!r}")
    if not is_real(delta) or not 0 < delta < 1:
        raise PrivacyError(f"dp-target-delta must be in (0, 1), got {delta!r}")
    if rounds == 0:
        return 0.0
    return epsilon_of(rounds * ddg_round_rdp(**round_kwargs), delta)


def calibrate_local_stddev(
    target_epsilon: float,
    *,
    rounds: int,
    delta: float,
    tolerance: float = 1e-3,
    max_stddev: float = 1e7,
    **round_kwargs: object,
) -> float:
    """The smallest per-client stddev (integer units, to ``tolerance`` relative) whose epsilon
    after ``rounds`` rounds is at most ``target_epsilon``; refuses an unreachable target."""
    check_positive(target_epsilon=target_epsilon)

    def eps(stddev: float) -> float:
        return ddg_epsilon(rounds=rounds, delta=delta, local_stddev=stddev, **round_kwargs)

    if eps(max_stddev) > target_epsilon:
        raise PrivacyError(
            f"dp-target-epsilon {target_epsilon:g} at dp-target-delta {delta:g} cannot be met by "
            f"the distributed discrete Gaussian over {rounds} rounds with these settings "
            f"({', '.join(f'{k}={v}' for k, v in sorted(round_kwargs.items()))})"
        )
    return smallest_meeting(eps, target_epsilon, 1e-3, max_stddev, tolerance)
