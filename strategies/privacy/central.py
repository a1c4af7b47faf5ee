"""Central differential privacy: the server clips each decoded update and adds Gaussian noise to
the sum (DP-FedAvg, McMahan, Ramage, Talwar & Zhang, ICLR 2018), with a fixed clip or the
adaptive clip of Andrew, Thakkar, McMahan & Ramaswamy ("Differentially Private Learning with
Adaptive Clipping", NeurIPS 2021): each client's bit ``[||u|| <= C]`` is summed with Gaussian
noise and ``C <- C exp(-eta (b - gamma))`` tracks the ``gamma`` quantile of the update norms.

:class:`DpMeanAggregator` is an aggregator (:mod:`strategies.aggregators`): it takes the round's
decoded updates one at a time (O(model) memory), weighs them equally (an example-count weight
would let one client's data move the mean further than ``C``) and hands Flower's strategy one
fresh message holding ``reference + (sum of clipped updates + N(0, (z C)^2)) / count``.

Why not Flower's ``DifferentialPrivacyServerSideFixedClipping`` / ``...AdaptiveClipping``: they
wrap a strategy's ``aggregate_train`` and clip each *reply's* arrays against the current model.
Pollen's replies are compact wire payloads; the adapter decodes them and hands the strategy the
aggregate (one message holding the mean), which the wrapper would clip and noise as if it were
one client. They could fit only a strategy fed every update (``CollectAll``: a message per
client, O(clients x model) memory, no pooled uploads), and Flower 1.42's wrappers also require
equal reply weights, which Pollen's example-count weights are not; so the noise is added here.

Under Poisson sampling (``dp-sampling poisson``) the mean has a fixed denominator, the expected
cohort ``m = qN`` (McMahan et al. 2018's fixed-denominator estimator: the count of sampled
clients is not released), and a round releases its noise even when it drew no client or
accepted no update: the subsampled Gaussian's output on an empty sample is the noise alone
(Opacus steps on an empty Poisson batch the same way), so the round counts in the ledger. Under
fixed-size sampling a round that accepted nothing releases nothing and is not spent.

The noise generator is secret by default (seeded from ``os.urandom``): noise drawn from a seed
anyone knows can be subtracted. A simulation passes its run seed to be reproducible.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict

from strategies.aggregators import Update, fresh_reply
from strategies.privacy.accounting import (
    Ledger,
    PrivacyError,
    RoundPlan,
    adaptive_clip_noise,
    calibrate_rest,
    is_real,
)
from strategies.replies import WEIGHT_KEY


def update_norm(deltas: dict[str, np.ndarray]) -> float:
    """L2 norm of a whole update (every tensor together)."""
    return math.sqrt(
        sum(float(np.dot(d.ravel().astype(np.float64), d.ravel())) for d in deltas.values())
    )


@dataclass(frozen=True, kw_only=True)
class AdaptiveClip:
    """Andrew et al.'s geometric clip update; defaults are the paper's (Sec. 3, experiments)."""

    target_quantile: float = 0.5  # gamma: the fraction of updates left unclipped
    learning_rate: float = 0.2  # eta
    count_stddev_fraction: float = 0.05  # sigma_b = this * clients per round (paper: m / 20)

    def __post_init__(self) -> None:
        for name, low, high in (
            ("target_quantile", 0.0, 1.0),
            ("learning_rate", 0.0, 10.0),
            ("count_stddev_fraction", 0.0, 10.0),
        ):
            value = getattr(self, name)
            if not is_real(value) or not low < value <= high:
                raise PrivacyError(f"dp adaptive {name} must be in ({low}, {high}], got {value!r}")


@dataclass
class DpMeanAggregator:
    """One round: the equally weighted mean of clipped updates plus Gaussian noise."""

    reference: dict[str, np.ndarray]
    clip: float
    sum_stddev: float  # noise on the sum of clipped updates
    count_stddev: float  # noise on the sum of unclipped bits (0: fixed clipping)
    rng: np.random.Generator
    denominator: float | None = None  # Poisson: the expected cohort; None: the count added
    accepts_pools: bool = False  # a pool's mean is not one client's update: clip needs each
    frozen: tuple[str, ...] = ()  # name prefixes never trained nor uploaded: never noised
    total: dict[str, np.ndarray] = field(default_factory=dict)
    count: int = 0
    unclipped: int = 0
    first: Message | None = None

    def add(self, update: Update) -> None:
        if len(update.replies) != 1:
            raise PrivacyError("central DP clips each client's update: pooled uploads are refused")
        norm = update_norm(update.deltas)
        factor = min(1.0, self.clip / norm) if norm > 0 else 1.0
        self.unclipped += norm <= self.clip
        for name, delta in update.deltas.items():
            part = delta.astype(np.float64) * factor
            self.total[name] = self.total[name] + part if name in self.total else part
        self.count += 1
        if self.first is None:
            self.first = update.replies[0]

    @property
    def releases_empty(self) -> bool:
        """Whether a round with no update still releases (its noise): Poisson sampling."""
        return self.denominator is not None

    def _divisor(self) -> float:
        return self.denominator if self.denominator is not None else max(self.count, 1)

    def noisy_mean(self) -> dict[str, np.ndarray]:
        """The noisy mean update per tensor (noise drawn once per call, in name order)."""
        total = self.total or {  # no update added: the noise alone, on every trained tensor
            name: np.zeros(ref.shape, np.float64)
            for name, ref in self.reference.items()
            if np.issubdtype(ref.dtype, np.floating) and not name.startswith(self.frozen)
        }
        return {
            name: ((s + self.rng.normal(0.0, self.sum_stddev, s.shape)) / self._divisor()).astype(
                np.float32
            )
            for name, s in sorted(total.items())
        }

    def noisy_unclipped_fraction(self) -> float:
        return (self.unclipped + self.rng.normal(0.0, self.count_stddev)) / self._divisor()

    def strategy_input(self) -> list[Message]:
        if self.first is None and not self.releases_empty:
            return []
        mean = self.noisy_mean()
        model = {
            name: (ref + mean[name]).astype(np.float32) if name in mean else ref
            for name, ref in self.reference.items()
        }
        weight = {WEIGHT_KEY: float(self.count or 1)}
        if self.first is None:  # nobody replied: a message of the server's own for the step
            return [noise_only_message(model, weight)]
        return [fresh_reply(self.first, model, weight)]


def noise_only_message(model: dict[str, np.ndarray], metrics: dict) -> Message:
    """A train message holding ``model`` for Flower's strategy when no client replied (its
    ``aggregate_train`` reads only the content). Needs a ServerApp's run identity."""
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in model.items()}),
            "metrics": MetricRecord(metrics),
        }
    )
    return Message(content, dst_node_id=0, message_type=MessageType.TRAIN)


@dataclass
class CentralDp:
    """A run's central DP: the clip (fixed or adaptive), the noise and the privacy ledger."""

    noise_multiplier: float
    clip: float
    plan: RoundPlan
    adaptive: AdaptiveClip | None = None
    noise_seed: int | None = None  # None: a secret seed from os.urandom
    client_metrics: bool = False  # keep clients' train metrics (they bypass the noise)
    ledger: Ledger = field(init=False)
    _rng: np.random.Generator = field(init=False)
    _round: DpMeanAggregator | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not is_real(self.clip) or not (math.isfinite(self.clip) and self.clip > 0):
            raise PrivacyError(f"dp-clip must be a positive number, got {self.clip!r}")
        if not is_real(self.noise_multiplier) or not (
            math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0
        ):
            raise PrivacyError(
                f"dp-noise-multiplier must be a positive number, got {self.noise_multiplier!r}"
            )
        if self.adaptive is not None:  # a cohort too small for the count's noise: refused now
            adaptive_clip_noise(self.noise_multiplier, self.count_stddev)
        self.ledger = Ledger(self.plan)
        seed = self.noise_seed
        self._rng = np.random.default_rng(
            int.from_bytes(os.urandom(32), "little") if seed is None else [int(seed), 0x44505]
        )

    @property
    def count_stddev(self) -> float:
        if self.adaptive is None:
            return 0.0
        return self.adaptive.count_stddev_fraction * self.plan.per_round

    @property
    def sum_multiplier(self) -> float:
        """The multiplier on the update sum: all of ``z``, or Andrew et al.'s share of it."""
        if self.adaptive is None:
            return float(self.noise_multiplier)
        return adaptive_clip_noise(self.noise_multiplier, self.count_stddev)

    def aggregator(
        self, reference: dict[str, np.ndarray], frozen: tuple[str, ...] = ()
    ) -> DpMeanAggregator:
        """This round's aggregator (clip and noise as they stand now; ``frozen``: the name
        prefixes clients neither train nor upload)."""
        self._round = DpMeanAggregator(
            reference,
            frozen=frozen,
            clip=self.clip,
            sum_stddev=self.sum_multiplier * self.clip,
            count_stddev=self.count_stddev,
            rng=self._rng,
            denominator=float(self.plan.per_round) if self.plan.sampling == "poisson" else None,
        )
        return self._round

    def state(self) -> dict[str, object]:
        """What a checkpoint keeps: the ledger and the clip (adaptive clipping moves it)."""
        return {**self.ledger.state(), "clip": float(self.clip)}

    def restore(self, state: Mapping[str, object], rounds: int) -> None:
        """Continue after ``rounds`` rounds from a checkpoint's :meth:`state`."""
        self.ledger.restore(state, rounds)
        clip = state.get("clip")
        if not is_real(clip) or not (math.isfinite(clip) and clip > 0):
            raise PrivacyError(f"the checkpoint's dp clip must be a positive number, got {clip!r}")
        self.clip = float(clip)

    def recalibrate(self, target_epsilon: float, rounds_left: int) -> float:
        """Resuming: the multiplier for the rounds left so the run's total stays within
        ``target_epsilon`` (:func:`calibrate_rest`); the one set."""
        z = calibrate_rest(
            lambda z: self.ledger.projected(z, rounds_left), target_epsilon, rounds_left
        )
        if self.adaptive is not None:
            adaptive_clip_noise(z, self.count_stddev)
        self.noise_multiplier = z
        return z

    def finish_round(self) -> dict[str, float]:
        """After the round's release: spend it in the ledger, move an adaptive clip; metrics."""
        agg, self._round = self._round, None
        if agg is None or (agg.count == 0 and not agg.releases_empty):
            return {}
        epsilon = self.ledger.spend(self.noise_multiplier)
        metrics = {
            "dp-epsilon": epsilon,
            "dp-epsilon-round": self.ledger.last_round(),
            "dp-delta": self.plan.delta,
            "dp-clip": self.clip,
        }
        if self.adaptive is not None:
            fraction = agg.noisy_unclipped_fraction()
            step = self.adaptive.learning_rate * (fraction - self.adaptive.target_quantile)
            self.clip = float(self.clip * math.exp(-step))
            metrics["dp-unclipped-fraction"] = float(fraction)
        return metrics
