"""Privacy accounting for the Gaussian mechanism over sampled rounds (Google's ``dp-accounting``).

A round releases ``sum_{i in S} clip_C(u_i) + N(0, (z C)^2 I)`` (central DP; the server's mean
with a fixed denominator is post-processing of it), S being the clients the round sampled. Two
samplings are accounted, each with the neighbouring relation it needs:

- ``fixed`` (the default; what :class:`strategies.sampling.SeededSampler` does): ``m`` of the
  ``N`` clients uniformly without replacement. Amplification by this sampling holds for
  *replace-one* neighbours (Wang, Balle & Kasiviswanathan, "Subsampled Renyi Differential Privacy
  and Analytical Moments Accountant", AISTATS 2019, Theorem 27; ``N`` is public). Replacing one
  client's clipped update moves the sum by up to ``2C``, so the Gaussian event has noise
  multiplier ``z / 2`` (relative to its replace-one sensitivity).
- ``poisson``: each client joins a round independently with probability ``q = m / N``
  (add-or-remove-one neighbours, sensitivity ``C``, multiplier ``z``; Mironov, Talwar & Zhang
  2019, the DP-SGD accounting of Abadi et al. 2016). Only correct for a sampler that draws this
  way: ``dp-sampling poisson`` switches the run's sampler to
  :class:`strategies.sampling.PoissonSampler` (central DP); otherwise the sampler draws a fixed
  number and ``fixed`` is what runs report.

Both are RDP (Mironov 2017) compositions over the rounds, converted to (epsilon, delta) by
dp-accounting's ``compute_epsilon`` (Canonne, Kamath & Steinke 2020's conversion).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import dp_accounting as dp
import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant as rdp

SAMPLINGS = ("fixed", "poisson")
# RDP orders: fractional ones matter for large noise, large ones for small noise and many rounds;
# no order in (128, 256]: dp-accounting's exact without-replacement bound there costs O(order^2)
ORDERS: tuple[float, ...] = (
    (1.25, 1.5, 1.75) + tuple(float(a) for a in range(2, 65)) + (80.0, 96.0, 128.0, 512.0, 1024.0)
)
MIN_NOISE, MAX_NOISE = 1e-3, 1e3  # the noise multipliers calibration searches between
MAX_ROUNDS = 1_000_000


class PrivacyError(ValueError):
    """Privacy settings that are malformed or cannot meet their target; the message says which."""


def is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True)
class RoundPlan:
    """Who is sampled, how often, and the delta the epsilon is reported at."""

    population: int  # N: clients that may be sampled (public)
    per_round: int  # m: clients sampled each round
    rounds: int  # planned rounds
    delta: float  # target delta; below 1/N (a larger delta allows releasing a client outright)
    sampling: str = "fixed"  # "fixed" (m of N without replacement) or "poisson" (rate m/N)

    def __post_init__(self) -> None:
        for name in ("population", "per_round", "rounds"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise PrivacyError(f"dp {name} must be an int >= 1, got {getattr(self, name)!r}")
        if self.per_round > self.population:
            raise PrivacyError(
                f"dp per_round ({self.per_round}) exceeds the population ({self.population})"
            )
        if self.rounds > MAX_ROUNDS:
            raise PrivacyError(f"dp rounds must be <= {MAX_ROUNDS}, got {self.rounds}")
        if not is_real(self.delta) or not 0 < self.delta < 1 / self.population:
            raise PrivacyError(
                f"dp-target-delta must be a number in (0, 1/N = {1 / self.population:.3g}) for "
                f"N = {self.population} clients, got {self.delta!r}"
            )
        if self.sampling not in SAMPLINGS:
            raise PrivacyError(f"dp sampling must be one of {SAMPLINGS}, got {self.sampling!r}")

    @property
    def rate(self) -> float:
        return self.per_round / self.population


def _check_noise(noise_multiplier: object) -> float:
    if not is_real(noise_multiplier) or not math.isfinite(noise_multiplier):
        raise PrivacyError(f"dp-noise-multiplier must be a finite number, got {noise_multiplier!r}")
    if noise_multiplier < 0:
        raise PrivacyError(f"dp-noise-multiplier must be >= 0, got {noise_multiplier!r}")
    return float(noise_multiplier)


def round_event(noise_multiplier: float, plan: RoundPlan) -> dp.DpEvent:
    """One round's DpEvent (noise multiplier relative to the add/remove sensitivity ``C``)."""
    z = _check_noise(noise_multiplier)
    if plan.sampling == "fixed":
        return dp.SampledWithoutReplacementDpEvent(
            plan.population, plan.per_round, dp.GaussianDpEvent(z / 2.0)
        )
    return dp.PoissonSampledDpEvent(plan.rate, dp.GaussianDpEvent(z))


def _relation(plan: RoundPlan) -> dp.NeighboringRelation:
    if plan.sampling == "fixed":
        return dp.NeighboringRelation.REPLACE_ONE
    return dp.NeighboringRelation.ADD_OR_REMOVE_ONE


def rdp_of_round(noise_multiplier: float, plan: RoundPlan) -> np.ndarray:
    """The RDP curve (at :data:`ORDERS`) of one round; rounds compose by adding curves."""
    if _check_noise(noise_multiplier) == 0:
        return np.full(len(ORDERS), np.inf)
    accountant = rdp.RdpAccountant(list(ORDERS), _relation(plan))
    accountant.compose(round_event(noise_multiplier, plan))
    return accountant.rdp


def epsilon_of(curve: np.ndarray, delta: float) -> float:
    """(epsilon, delta)-DP of an RDP curve at :data:`ORDERS`."""
    if not np.all(np.isfinite(curve)):
        finite = np.isfinite(curve)
        if not finite.any():
            return math.inf
        orders = np.asarray(ORDERS)[finite]
        return float(rdp.compute_epsilon(orders, curve[finite], delta)[0])
    return float(rdp.compute_epsilon(ORDERS, curve, delta)[0])


def epsilon(noise_multiplier: float, plan: RoundPlan, rounds: int | None = None) -> float:
    """Epsilon after ``rounds`` (default: the plan's) rounds at the plan's delta."""
    count = plan.rounds if rounds is None else rounds
    if not is_int(count) or count < 0:
        raise PrivacyError(f"rounds must be an int >= 0, got {count!r}")
    if count == 0:
        return 0.0
    return epsilon_of(count * rdp_of_round(noise_multiplier, plan), plan.delta)


def epsilon_by_round(noise_multiplier: float, plan: RoundPlan) -> list[float]:
    """Cumulative epsilon after each of the plan's rounds (non-decreasing)."""
    curve = rdp_of_round(noise_multiplier, plan)
    return [epsilon_of(t * curve, plan.delta) for t in range(1, plan.rounds + 1)]


def calibrate_noise(target_epsilon: float, plan: RoundPlan, tolerance: float = 1e-3) -> float:
    """The smallest noise multiplier (to ``tolerance``, relative) whose epsilon after the plan's
    rounds is at most ``target_epsilon``; refuses a target no multiplier up to 1000 meets."""
    if not is_real(target_epsilon) or not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise PrivacyError(f"dp-target-epsilon must be a positive number, got {target_epsilon!r}")
    if epsilon(MAX_NOISE, plan) > target_epsilon:
        raise PrivacyError(
            f"dp-target-epsilon {target_epsilon:g} at dp-target-delta {plan.delta:g} cannot be met "
            f"over {plan.rounds} rounds of {plan.per_round} of {plan.population} clients even with "
            f"noise multiplier {MAX_NOISE:g}: raise the epsilon or delta, or run fewer rounds"
        )
    return smallest_meeting(
        lambda z: epsilon(z, plan), target_epsilon, MIN_NOISE, MAX_NOISE, tolerance
    )


def smallest_meeting(
    eps: Callable[[float], float], target: float, low: float, high: float, tolerance: float = 1e-3
) -> float:
    """The smallest noise ``x`` in ``[low, high]`` (to ``tolerance``, relative: a geometric
    bisection) with ``eps(x) <= target``, for an ``eps`` that falls as the noise grows and a
    ``high`` that meets the target (the callers check it and word the refusal)."""
    if eps(low) <= target:
        return low
    while high / low > 1 + tolerance:
        middle = math.sqrt(low * high)
        if eps(middle) <= target:
            high = middle
        else:
            low = middle
    return high


def calibrate_rest(
    projected: Callable[[float], float], target_epsilon: float, rounds_left: int
) -> float:
    """The smallest noise multiplier for a run's ``rounds_left`` remaining rounds whose
    ``projected(z)`` total epsilon (the ledger so far plus those rounds at ``z``) is at most
    ``target_epsilon``: how a resumed run keeps its target when its planned rounds changed or
    its ledger holds rounds spent differently from the plan. Refuses a target already spent."""
    if not is_real(target_epsilon) or not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise PrivacyError(f"dp-target-epsilon must be a positive number, got {target_epsilon!r}")
    if projected(MAX_NOISE) > target_epsilon:
        raise PrivacyError(
            f"the {rounds_left} rounds left cannot stay within dp-target-epsilon "
            f"{target_epsilon:g}: the rounds already done spent {projected(math.inf):.4g}; "
            "raise the target or plan fewer rounds"
        )
    return smallest_meeting(projected, target_epsilon, MIN_NOISE, MAX_NOISE)


def adaptive_clip_noise(noise_multiplier: float, count_stddev: float) -> float:
    """Noise multiplier left for the update sum when adaptive clipping also releases a noisy
    count of clipped updates with stddev ``count_stddev`` (Andrew, Thakkar, McMahan & Ramaswamy,
    "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021, Sec. 3.1:
    ``z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)``; the two Gaussian queries together have the
    privacy of one with multiplier ``z``). Refuses a count noise that leaves none."""
    z = _check_noise(noise_multiplier)
    if not is_real(count_stddev) or not (math.isfinite(count_stddev) and count_stddev > 0):
        raise PrivacyError(f"dp-clip-count-stddev must be a positive number, got {count_stddev!r}")
    if z == 0:
        raise PrivacyError("adaptive clipping needs dp-noise-multiplier > 0")
    if 2 * count_stddev <= z:
        raise PrivacyError(
            f"dp-clip-count-stddev {count_stddev:g} must exceed dp-noise-multiplier / 2 = {z / 2:g}"
            " (the clipped-count query would use the whole privacy budget)"
        )
    return float((z**-2 - (2 * count_stddev) ** -2) ** -0.5)


@dataclass
class Ledger:
    """Running account of a run: one :meth:`spend` per released round (rounds that failed or
    released nothing are not spent). ``history`` holds the cumulative epsilon after each."""

    plan: RoundPlan
    curve: np.ndarray = field(default_factory=lambda: np.zeros(len(ORDERS)))
    history: list[float] = field(default_factory=list)

    def spend(self, noise_multiplier: float) -> float:
        """Compose one round; the cumulative epsilon so far."""
        self.curve = self.curve + rdp_of_round(noise_multiplier, self.plan)
        self.history.append(epsilon_of(self.curve, self.plan.delta))
        return self.history[-1]

    @property
    def epsilon(self) -> float:
        return self.history[-1] if self.history else 0.0

    def state(self) -> dict[str, list[float]]:
        return ledger_state(self.curve, self.history)

    def projected(self, noise_multiplier: float, rounds_left: int) -> float:
        """Epsilon after the rounds spent so far and ``rounds_left`` more at ``noise_multiplier``
        (infinite noise: the rounds spent alone)."""
        if rounds_left == 0 or math.isinf(noise_multiplier):
            return epsilon_of(self.curve, self.plan.delta) if self.history else 0.0
        added = rounds_left * rdp_of_round(noise_multiplier, self.plan)
        return epsilon_of(self.curve + added, self.plan.delta)

    def restore(self, state: Mapping[str, object], rounds: int) -> None:
        """Continue from a checkpoint's ledger (:func:`restored_ledger`)."""
        self.curve, self.history = restored_ledger(state, len(ORDERS), rounds)

    def last_round(self) -> float:
        """Epsilon the latest round added (the difference of cumulative values)."""
        if not self.history:
            return 0.0
        return self.history[-1] - (self.history[-2] if len(self.history) > 1 else 0.0)


def ledger_state(curve: np.ndarray, history: list[float]) -> dict[str, list[float]]:
    """A ledger as the checkpoint keeps it (JSON numbers): its RDP curve and epsilon history."""
    return {"curve": [float(v) for v in curve], "history": [float(v) for v in history]}


def restored_ledger(
    state: Mapping[str, object], orders: int, rounds: int
) -> tuple[np.ndarray, list[float]]:
    """The (curve, history) a checkpoint's ``state`` holds, checked as hostile input: a curve
    of ``orders`` finite values >= 0, a non-decreasing history of finite values >= 0 no longer
    than the ``rounds`` the checkpoint has done. Raises PrivacyError naming what is wrong."""
    curve, history = state.get("curve"), state.get("history")
    for name, values in (("curve", curve), ("history", history)):
        if not isinstance(values, list) or not all(
            is_real(v) and math.isfinite(v) and v >= 0 for v in values
        ):
            raise PrivacyError(f"the privacy ledger's {name} is not a list of numbers >= 0")
    assert isinstance(curve, list) and isinstance(history, list)
    if len(curve) != orders:
        raise PrivacyError(f"the privacy ledger's curve has {len(curve)} orders, not {orders}")
    if len(history) > rounds or any(b < a for a, b in zip(history, history[1:], strict=False)):
        raise PrivacyError(
            f"the privacy ledger's history ({len(history)} values) is not a non-decreasing "
            f"epsilon per released round of the {rounds} done"
        )
    return np.asarray(curve, dtype=np.float64), [float(v) for v in history]
