"""Local differential privacy: each client clips its whole update to L2 norm ``C`` and adds
``N(0, (z C)^2)`` per coordinate on the device (:func:`wire.dp.local_dp`, applied by
``client_sdk.upload.local_privacy``) before encoding, so the server never holds an un-noised
update (the local model of DP; Kasiviswanathan et al. 2011, Gaussian mechanism).

Accounting is per client against the server: one participation is the Gaussian mechanism on a
replace-one sensitivity of ``2C`` (a client's update may move anywhere in the clip ball), and a
client is assumed to take part in every planned round (the server chooses who is sampled, so
sampling gives no amplification here). :class:`LocalDp` keeps that ledger and the round-config
values the server sends; aggregation is unchanged (the mean of noised updates is
post-processing), so robust strategies and secure aggregation may be used with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from strategies.privacy.accounting import Ledger, PrivacyError, RoundPlan, calibrate_rest, is_real
from wire import keys


def local_plan(rounds: int, delta: float) -> RoundPlan:
    """One client, in every round: q = 1 and the Gaussian's replace-one multiplier ``z / 2``."""
    return RoundPlan(population=1, per_round=1, rounds=rounds, delta=delta)


@dataclass
class LocalDp:
    """A run's local DP: what clients are told to do, and the per-client ledger."""

    noise_multiplier: float
    clip: float
    plan: RoundPlan
    seeded: bool = False  # clients draw the noise from their round seed (experiments only)
    client_metrics: bool = False
    ledger: Ledger = field(init=False)

    def __post_init__(self) -> None:
        for name in ("noise_multiplier", "clip"):
            value = getattr(self, name)
            if not is_real(value) or not (math.isfinite(value) and value > 0):
                raise PrivacyError(f"dp {name.replace('_', '-')} must be > 0, got {value!r}")
        self.ledger = Ledger(self.plan)

    def round_config(self) -> dict[str, float | bool]:
        """The round-config entries every client reads (wire.keys)."""
        return {
            keys.DP_LOCAL_CLIP: float(self.clip),
            keys.DP_LOCAL_STDDEV: float(self.noise_multiplier * self.clip),
            keys.DP_LOCAL_SEEDED: self.seeded,
        }

    def aggregator(self, reference: dict[str, np.ndarray], frozen: tuple[str, ...] = ()) -> None:
        """None: the strategy's own aggregator runs on the (already noised) updates."""
        return None

    def state(self) -> dict[str, object]:
        """What a checkpoint keeps: the ledger."""
        return dict(self.ledger.state())

    def restore(self, state: Mapping[str, object], rounds: int) -> None:
        """Continue after ``rounds`` rounds from a checkpoint's :meth:`state`."""
        self.ledger.restore(state, rounds)

    def recalibrate(self, target_epsilon: float, rounds_left: int) -> float:
        """Resuming: the multiplier for the rounds left so each client's total stays within
        ``target_epsilon`` (:func:`calibrate_rest`); the one set."""
        self.noise_multiplier = calibrate_rest(
            lambda z: self.ledger.projected(z, rounds_left), target_epsilon, rounds_left
        )
        return self.noise_multiplier

    def finish_round(self) -> dict[str, float]:
        """A round that released noised updates: spend it; the metrics to log."""
        epsilon = self.ledger.spend(self.noise_multiplier)
        return {
            "dp-epsilon": epsilon,
            "dp-epsilon-round": self.ledger.last_round(),
            "dp-delta": self.plan.delta,
            "dp-clip": self.clip,
        }
