"""Accounting for the distributed discrete Gaussian under secure aggregation.

Each of the ``n`` clients of a round adds discrete Gaussian noise ``N_Z(0, s^2)`` (integer units,
after scaling by ``1/gamma`` and conditional randomized rounding) to its integer vector; the
server sees only the sum. The sum of ``n`` discrete Gaussians is not a discrete Gaussian, but it
is close to one of variance ``n s^2`` (Kairouz, Liu & Steinke, "The Distributed Discrete Gaussian
Mechanism for Federated Learning with Secure Aggregation", ICML 2021, Theorem 1 / Proposition 14):
with ``tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 s^2 k / (k + 1))`` and sensitivities ``D2``, ``D1``
(integer units) the release is (alpha, eps(alpha))-RDP for every alpha > 1 with

    eps(alpha) = min( alpha D2^2 / (2 n s^2) + tau d,
                      alpha/2 (D2^2 / (n s^2) + 2 D1 tau / (sqrt(n) s) + tau^2 d),
                      alpha/2 (D2 / (sqrt(n) s) + tau sqrt(d))^2 ).

For ``n = 1`` (tau = 0) this is the discrete Gaussian's ``D2^2 / (2 s^2)``-zCDP (Canonne, Kamath
& Steinke 2020, Theorem 4). Conditional randomized rounding of a vector of L2 norm ``c`` (integer
units) in ``d`` coordinates, retried until the rounded norm is within the bound, keeps it below
``min(c + sqrt(d), sqrt(c^2 + d/4 + sqrt(2 ln(1/beta)) (c + sqrt(d)/2)))`` (ibid., Theorem 1
with beta the rounding's retry bound); integer coordinates give ``D1 <= min(sqrt(d) D2, D2^2)``.

Sampling: Pollen samples ``m`` of ``N`` clients without replacement, so neighbours replace one
client (sensitivities double) and the amplification is Wang, Balle & Kasiviswanathan (AISTATS
2019) Theorem 9, which holds for any mechanism's RDP curve at integer orders. Dropouts: only the
survivors' shares are in the sum, so a round is accounted with the number of clients whose noise
was summed (:func:`ddg_round_rdp`'s ``clients``), never the number sampled.

:class:`DistributedDp` is a run's distributed DP on the secure-aggregation path: each round it
gives the secure session the vector spec (:class:`wire.ddp_vector.DdpVectorSpec`: bits, clip,
the scale :func:`wire.dp.choose_scale` allows for the alive clients, each client's share
``(scale z clip / sqrt(alive))^2`` of the variance, the round's shared rotation seed) and, once
the server has unmasked a sum, spends that round in its ledger with the RDP of the *survivors'*
noise. Dropouts: a client that shared keys but did not upload adds no noise, so a round with
fewer survivors is accounted with less noise (a larger epsilon for that round), and the run goes
on while the secure sum's threshold is met; the noise multiplier is not raised after the fact.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant as rdp
from scipy import special

from strategies.privacy.accounting import (
    PrivacyError,
    RoundPlan,
    calibrate_rest,
    is_int,
    is_real,
    ledger_state,
    restored_ledger,
    smallest_meeting,
)
from wire import keys
from wire.ddp_vector import DdpVectorSpec
from wire.dp import DEFAULT_BETA, DdpSpec, choose_scale, rounded_l2_bound
from wire.rotation import block_for, padded_length, shared_rotation_seed

# integer orders only: Theorem 9's binomial expansion needs them
ORDERS: tuple[int, ...] = tuple(range(2, 65)) + (80, 96, 128, 256, 512)


def tau(local_stddev: float, clients: int) -> float:
    """Theorem 1's ``tau`` for ``clients`` shares of stddev ``local_stddev`` (integer units)."""
    s2 = float(local_stddev) ** 2
    k = np.arange(1, int(clients), dtype=np.float64)
    return float(10.0 * np.exp(-2.0 * math.pi**2 * s2 * k / (k + 1)).sum())


def ddg_rdp(
    orders: Sequence[float], l2: float, l1: float, local_stddev: float, clients: int, dim: int
) -> np.ndarray:
    """Proposition 14's RDP curve of the sum of ``clients`` discrete Gaussian shares."""
    a = np.asarray(orders, dtype=np.float64)
    sd = math.sqrt(clients) * local_stddev
    t = tau(local_stddev, clients)
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
    beta: float = DEFAULT_BETA,
) -> np.ndarray:
    """One round's RDP curve at :data:`ORDERS`: ``clients`` noise shares (the survivors) of
    stddev ``local_stddev`` (integer units) on updates clipped to ``clip`` and scaled by
    ``scale``, ``sampled`` of ``population`` clients drawn without replacement."""
    _check(clip=clip, scale=scale, local_stddev=local_stddev)
    for name, value in (("dim", dim), ("clients", clients), ("population", population)):
        if not is_int(value) or value < 1:
            raise PrivacyError(f"dp {name} must be an int >= 1, got {value!r}")
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

    base = ddg_rdp(np.arange(max(ORDERS) + 1), l2, l1, local_stddev, clients, dim)
    rate = sampled / population
    return np.array([wor_subsampled_rdp(base, a, rate) for a in ORDERS])


def _check(**values: object) -> None:
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
    _check(target_epsilon=target_epsilon)

    def eps(stddev: float) -> float:
        return ddg_epsilon(rounds=rounds, delta=delta, local_stddev=stddev, **round_kwargs)

    if eps(max_stddev) > target_epsilon:
        raise PrivacyError(
            f"dp-target-epsilon {target_epsilon:g} at dp-target-delta {delta:g} cannot be met by "
            f"the distributed discrete Gaussian over {rounds} rounds with these settings "
            f"({', '.join(f'{k}={v}' for k, v in sorted(round_kwargs.items()))})"
        )
    return smallest_meeting(eps, target_epsilon, 1e-3, max_stddev, tolerance)


BLOCK = DdpSpec.block  # the rotation's largest block
MIN_MULTIPLIER, MAX_MULTIPLIER = 1e-2, 1e3  # what calibration searches between


def rotated_dim(values: int, block: int = BLOCK) -> int:
    """Integer coordinates of ``values`` after the rotation's padding."""
    return padded_length(values, block_for(values, block))


def round_scale(
    *, bits: int, clients: int, clip: float, values: int, z: float
) -> tuple[float, float]:
    """(scale, each client's stddev in integer units) for ``clients`` shares of ``z clip`` on
    updates of ``values`` kept coordinates; ValueError when ``bits`` cannot hold the sum
    (:func:`wire.dp.choose_scale`, with the rotation's padded length and block)."""
    share = z * clip / math.sqrt(clients)  # update units: the shares sum to stddev z clip
    scale = choose_scale(
        bits=bits,
        clients=clients,
        clip=clip,
        dim=rotated_dim(values),
        block=block_for(values, BLOCK),
        local_stddev=share,
    )
    return scale, scale * share


def planned_round_rdp(
    z: float, plan: RoundPlan, *, clip: float, bits: int, values: int
) -> np.ndarray:
    """One planned round's RDP curve: updates of ``values`` coordinates, every sampled client
    surviving."""
    m = plan.per_round
    scale, stddev = round_scale(bits=bits, clients=m, clip=clip, values=values, z=z)
    return ddg_round_rdp(
        clip=clip,
        scale=scale,
        dim=rotated_dim(values),
        local_stddev=stddev,
        clients=m,
        population=plan.population,
        sampled=m,
    )


def planned_epsilon(z: float, plan: RoundPlan, *, clip: float, bits: int, values: int) -> float:
    """Epsilon after the plan's rounds of updates of ``values`` coordinates, every sampled
    client surviving."""
    curve = planned_round_rdp(z, plan, clip=clip, bits=bits, values=values)
    return epsilon_of(plan.rounds * curve, plan.delta)


def calibrate_multiplier(
    target_epsilon: float, plan: RoundPlan, *, clip: float, bits: int, values: int
) -> float:
    """The smallest noise multiplier ``z`` (to 0.1%) whose planned epsilon is at most the
    target, the scale recomputed for each candidate; refuses an unreachable target."""
    _check(target_epsilon=target_epsilon)

    def eps(z: float) -> float:
        return planned_epsilon(z, plan, clip=clip, bits=bits, values=values)

    if eps(MAX_MULTIPLIER) > target_epsilon:
        raise PrivacyError(
            f"dp-target-epsilon {target_epsilon:g} at dp-target-delta {plan.delta:g} cannot be met "
            f"by distributed DP over {plan.rounds} rounds of {plan.per_round} of "
            f"{plan.population} clients at dp-bits {bits} even with noise multiplier "
            f"{MAX_MULTIPLIER:g}: raise the epsilon, delta or dp-bits, or run fewer rounds"
        )
    return smallest_meeting(eps, target_epsilon, MIN_MULTIPLIER, MAX_MULTIPLIER)


@dataclass
class DistributedDp:
    """A run's distributed DP: each round's vector spec and the ledger of the sums unmasked."""

    noise_multiplier: float
    clip: float
    bits: int
    plan: RoundPlan
    run_seed: int = 0  # the rotation seeds' (public: every client of a round shares one)
    seeded: bool = False  # clients draw rounding and noise from their round seed (experiments)
    client_metrics: bool = False
    curve: np.ndarray = field(init=False)
    history: list[float] = field(default_factory=list, init=False)
    _sampled: int = field(default=0, init=False)
    _spec: DdpVectorSpec | None = field(default=None, init=False)
    _metrics: dict[str, float] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        _check(noise_multiplier=self.noise_multiplier, clip=self.clip)
        if not is_int(self.bits) or not 8 <= self.bits <= 32:
            raise PrivacyError(f"dp-bits must be an int in [8, 32], got {self.bits!r}")
        self.curve = np.zeros(len(ORDERS))

    def round_config(self) -> dict[str, bool]:
        """The round-config entry every client reads (wire.keys): secret or seeded draws."""
        return {keys.DP_LOCAL_SEEDED: self.seeded}

    def aggregator(self, reference: dict[str, np.ndarray], frozen: tuple[str, ...] = ()) -> None:
        """None: the secure session's sum is the aggregate (strategies.aggregators.SecureSum)."""
        return None

    def vector_spec(
        self, alive: int, *, kept: int, server_round: int, sampled: int
    ) -> DdpVectorSpec:
        """The round's spec for ``alive`` clients uploading ``kept`` values each, ``sampled``
        having been drawn; ValueError when the bits cannot hold them."""
        scale, stddev = round_scale(
            bits=self.bits, clients=alive, clip=self.clip, values=kept, z=self.noise_multiplier
        )
        self._sampled, self._metrics = sampled, {}
        self._spec = DdpVectorSpec(
            bits=self.bits,
            clip=float(self.clip),
            scale=scale,
            local_variance=stddev * stddev,
            seed=shared_rotation_seed(self.run_seed, server_round),
            block=BLOCK,
            length=kept,
            clients=alive,
        )
        return self._spec

    def summed(self, survivors: int) -> dict[str, float]:
        """The server unmasked the sum of ``survivors`` uploads: spend the round with their
        noise alone (used or not, the sum was seen); the metrics to log."""
        spec, self._spec = self._spec, None
        if spec is None or survivors < 1:
            return {}
        population = self.plan.population
        self.curve = self.curve + ddg_round_rdp(
            clip=spec.clip,
            scale=spec.scale,
            dim=spec.rotated_length,
            local_stddev=math.sqrt(spec.local_variance),
            clients=survivors,
            population=population,
            sampled=min(max(self._sampled, survivors), population),
        )
        self.history.append(epsilon_of(self.curve, self.plan.delta))
        self._metrics = {
            "dp-epsilon": self.history[-1],
            "dp-epsilon-round": self.history[-1]
            - (self.history[-2] if len(self.history) > 1 else 0),
            "dp-delta": self.plan.delta,
            "dp-clip": float(self.clip),
            "dp-scale": spec.scale,
            "dp-bits": float(self.bits),
            "dp-survivors": float(survivors),
        }
        return self._metrics

    @property
    def epsilon(self) -> float:
        return self.history[-1] if self.history else 0.0

    def state(self) -> dict[str, object]:
        """What a checkpoint keeps: the ledger of the sums unmasked so far."""
        return dict(ledger_state(self.curve, self.history))

    def restore(self, state: Mapping[str, object], rounds: int) -> None:
        """Continue after ``rounds`` rounds from a checkpoint's :meth:`state`."""
        self.curve, self.history = restored_ledger(state, len(ORDERS), rounds)

    def projected(self, z: float, rounds_left: int, values: int) -> float:
        """Epsilon after the sums unmasked so far and ``rounds_left`` planned rounds at ``z``
        (infinite ``z``: the spent rounds alone)."""
        if rounds_left == 0 or math.isinf(z):
            return epsilon_of(self.curve, self.plan.delta) if self.history else 0.0
        curve = planned_round_rdp(z, self.plan, clip=self.clip, bits=self.bits, values=values)
        return epsilon_of(self.curve + rounds_left * curve, self.plan.delta)

    def recalibrate(self, target_epsilon: float, rounds_left: int, values: int) -> float:
        """Resuming: the multiplier for the rounds left so the run's total stays within
        ``target_epsilon`` (updates of ``values`` coordinates); the one set. Like the first
        calibration it plans every sampled client surviving: rounds with dropouts spend more
        (:meth:`summed` accounts the survivors' noise) and may take the total past the target."""
        z = calibrate_rest(
            lambda z: self.projected(z, rounds_left, values), target_epsilon, rounds_left
        )
        self.noise_multiplier = max(z, MIN_MULTIPLIER)
        return self.noise_multiplier

    def finish_round(self) -> dict[str, float]:
        """This round's metrics (spent when the sum was unmasked: :meth:`summed`)."""
        metrics, self._metrics = self._metrics, {}
        return metrics
