"""Distributed DP under secure aggregation: a run's plan and ledger (the accounting itself is
:mod:`strategies.privacy.ddg_accounting`).

:class:`DistributedDp` is a run's distributed DP on the secure-aggregation path: each round it
gives the secure session the vector spec (:class:`wire.ddp_vector.DdpVectorSpec`: bits, clip,
the scale :func:`wire.dp.choose_scale` allows for the alive clients, each client's share
``(scale z clip)^2 / min_uploads`` of the variance, the round's shared rotation seed) and, once
the server has unmasked a sum, spends that round in its ledger with the RDP of the *survivors'*
noise. Dropouts: a client that shared keys but did not upload adds no noise. Each share is sized
for the fewest uploads the round may sum, :func:`noise_shares` (``dp-dropout-tolerance``: up to
that fraction of the alive clients may vanish), and the server does not unmask a sum of fewer
(:attr:`DistributedDp.min_uploads`, enforced by the secure session): so every unmasked sum
carries at least the planned noise and the run's total stays within its target whatever drops
(the plan takes Theorem 1's ``tau`` at every client that could upload, so the bound can only
fall as more of them do: :func:`strategies.privacy.ddg_accounting.ddg_round_rdp`).
As in Kairouz, Liu & Steinke (ICML 2021, section 5), who size the noise for a lower bound on the
survivors; TensorFlow Federated's ``DistributedDpSumFactory`` sizes it for the expected cohort
and leaves dropouts unaccounted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

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
from strategies.privacy.ddg_accounting import ORDERS, check_positive, ddg_round_rdp, epsilon_of
from wire import keys
from wire.ddp_vector import DdpVectorSpec
from wire.dp import DdpSpec, choose_scale
from wire.rotation import block_for, padded_length, shared_rotation_seed

BLOCK = DdpSpec.block  # the rotation's largest block
MIN_MULTIPLIER, MAX_MULTIPLIER = 1e-2, 1e3  # what calibration searches between
MAX_TOLERANCE = 0.5  # dp-dropout-tolerance: at most half a round's alive clients may vanish


def rotated_dim(values: int, block: int = BLOCK) -> int:
    """Integer coordinates of ``values`` after the rotation's padding."""
    return padded_length(values, block_for(values, block))


def noise_shares(alive: int, tolerance: float) -> int:
    """The fewest uploads a round of ``alive`` clients may sum when up to ``tolerance`` of them
    may vanish: each client's noise is sized so that this many shares reach stddev z clip."""
    return max(alive - math.floor(tolerance * alive + 1e-9), 1)


def round_scale(
    *, bits: int, clients: int, clip: float, values: int, z: float, shares: int = 0
) -> tuple[float, float]:
    """(scale, each client's stddev in integer units) for a sum of up to ``clients`` vectors
    whose fewest ``shares`` (0: all of them) carry stddev ``z clip``, on updates of ``values``
    kept coordinates; ValueError when ``bits`` cannot hold the sum (:func:`wire.dp.choose_scale`,
    with the rotation's padded length and block)."""
    share = z * clip / math.sqrt(shares or clients)  # update units
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
    z: float, plan: RoundPlan, *, clip: float, bits: int, values: int, tolerance: float = 0.0
) -> np.ndarray:
    """One planned round's RDP curve: updates of ``values`` coordinates, the fewest uploads
    the server unmasks (:func:`noise_shares`) surviving: a round's worst case."""
    m = plan.per_round
    shares = noise_shares(m, tolerance)
    scale, stddev = round_scale(bits=bits, clients=m, clip=clip, values=values, z=z, shares=shares)
    return ddg_round_rdp(
        clip=clip,
        scale=scale,
        dim=rotated_dim(values),
        local_stddev=stddev,
        clients=shares,
        population=plan.population,
        sampled=m,
        tau_clients=m,  # tau at all m: the bound then falls as more of them upload
    )


def planned_epsilon(
    z: float, plan: RoundPlan, *, clip: float, bits: int, values: int, tolerance: float = 0.0
) -> float:
    """Epsilon after the plan's rounds of updates of ``values`` coordinates, each round at its
    worst case (:func:`planned_round_rdp`)."""
    curve = planned_round_rdp(z, plan, clip=clip, bits=bits, values=values, tolerance=tolerance)
    return epsilon_of(plan.rounds * curve, plan.delta)


def calibrate_multiplier(
    target_epsilon: float,
    plan: RoundPlan,
    *,
    clip: float,
    bits: int,
    values: int,
    tolerance: float = 0.0,
) -> float:
    """The smallest noise multiplier ``z`` (to 0.1%) whose planned epsilon is at most the
    target, the scale recomputed for each candidate; refuses an unreachable target."""
    check_positive(target_epsilon=target_epsilon)

    def eps(z: float) -> float:
        return planned_epsilon(z, plan, clip=clip, bits=bits, values=values, tolerance=tolerance)

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
    dropout_tolerance: float = 0.0  # the fraction of a round's alive clients that may vanish
    min_uploads: int = field(default=0, init=False)  # this round's: the session enforces it
    curve: np.ndarray = field(init=False)
    history: list[float] = field(default_factory=list, init=False)
    _sampled: int = field(default=0, init=False)
    _spec: DdpVectorSpec | None = field(default=None, init=False)
    _metrics: dict[str, float] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        check_positive(noise_multiplier=self.noise_multiplier, clip=self.clip)
        if not is_int(self.bits) or not 8 <= self.bits <= 32:
            raise PrivacyError(f"dp-bits must be an int in [8, 32], got {self.bits!r}")
        tolerance = self.dropout_tolerance
        if not is_real(tolerance) or not 0 <= tolerance <= MAX_TOLERANCE:
            raise PrivacyError(
                f"dp-dropout-tolerance must be in [0, {MAX_TOLERANCE}], got {tolerance!r}"
            )
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
        having been drawn, each share sized for :attr:`min_uploads` of them; ValueError when the
        bits cannot hold them."""
        self.min_uploads = noise_shares(alive, self.dropout_tolerance)
        scale, stddev = round_scale(
            bits=self.bits,
            clients=alive,
            clip=self.clip,
            values=kept,
            z=self.noise_multiplier,
            shares=self.min_uploads,
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
        curve = planned_round_rdp(
            z,
            self.plan,
            clip=self.clip,
            bits=self.bits,
            values=values,
            tolerance=self.dropout_tolerance,
        )
        return epsilon_of(self.curve + rounds_left * curve, self.plan.delta)

    def recalibrate(self, target_epsilon: float, rounds_left: int, values: int) -> float:
        """Resuming: the multiplier for the rounds left so the run's total stays within
        ``target_epsilon`` (updates of ``values`` coordinates); the one set. Like the first
        calibration it plans each round at its worst case (:func:`planned_round_rdp`)."""
        z = calibrate_rest(
            lambda z: self.projected(z, rounds_left, values), target_epsilon, rounds_left
        )
        self.noise_multiplier = max(z, MIN_MULTIPLIER)
        return self.noise_multiplier

    def finish_round(self) -> dict[str, float]:
        """This round's metrics (spent when the sum was unmasked: :meth:`summed`)."""
        metrics, self._metrics = self._metrics, {}
        return metrics
