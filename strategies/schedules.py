"""Per-round client learning-rate schedules, sent to clients in each round's config (``lr``).

``constant`` keeps the Task's (or the run's) rate; ``step:EVERY:GAMMA`` multiplies it by GAMMA
every EVERY rounds; ``cosine`` anneals it to 0 over the planned rounds (Loshchilov & Hutter,
ICLR 2017, without restarts); ``exp:GAMMA`` multiplies it by GAMMA each round. Every client
(device, Flower's engine, the batched engine) reads the rate from the round config, so the
schedule lives on the server alone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


class ScheduleError(ValueError):
    """A learning-rate schedule spec is malformed."""


@dataclass(frozen=True)
class LrSchedule:
    kind: str = "constant"  # constant | step | cosine | exp
    every: int = 1
    gamma: float = 1.0

    def factor(self, server_round: int, total_rounds: int) -> float:
        """The multiplier of the base rate in round ``server_round`` (1-based)."""
        done = max(server_round - 1, 0)
        if self.kind == "step":
            return self.gamma ** (done // self.every)
        if self.kind == "exp":
            return self.gamma**done
        if self.kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * done / max(total_rounds, 1)))
        return 1.0


def parse_schedule(spec: str) -> LrSchedule:
    """``constant`` | ``step:EVERY:GAMMA`` | ``cosine`` | ``exp:GAMMA``."""
    name, _, args = spec.partition(":")
    parts = args.split(":") if args else []
    try:
        if name == "constant" and not parts:
            return LrSchedule()
        if name == "cosine" and not parts:
            return LrSchedule(kind="cosine")
        if name == "step" and len(parts) == 2:
            every, gamma = int(parts[0]), float(parts[1])
            if every >= 1 and math.isfinite(gamma) and 0 < gamma <= 1:
                return LrSchedule(kind="step", every=every, gamma=gamma)
        if name == "exp" and len(parts) == 1:
            gamma = float(parts[0])
            if math.isfinite(gamma) and 0 < gamma <= 1:
                return LrSchedule(kind="exp", gamma=gamma)
    except ValueError:
        pass
    raise ScheduleError(
        f"{spec!r} is not a schedule: constant, cosine, step:EVERY:GAMMA (e.g. step:10:0.5) or "
        "exp:GAMMA (GAMMA in (0, 1])"
    )


# (each accepted reply's checked metrics, their weights) -> the round's metrics
MetricsAggregation = Callable[[list[dict], list[float]], dict]


@dataclass(frozen=True, kw_only=True)
class RoundHooks:
    """What a run may change round by round: the clients' learning rate (``client_lr`` times
    the schedule's factor, sent as ``lr``) and how reply metrics are aggregated."""

    client_lr: float = 0.0  # the base rate (the run's, or the Task's); 0: never sent
    lr_schedule: LrSchedule = field(default_factory=LrSchedule)
    num_rounds: int = 0
    train_metrics_aggr_fn: MetricsAggregation | None = None
    evaluate_metrics_aggr_fn: MetricsAggregation | None = None

    def aggregate_metrics(
        self, phase: str, records: list[dict], weights: list[float], default: MetricsAggregation
    ) -> dict:
        """The user's aggregation of ``phase`` metrics; the default (a weighted mean) when
        there is none, or when it raises or returns something that is not a dict of numbers
        (it sees what clients sent: a round must not end on it)."""
        own = self.train_metrics_aggr_fn if phase == "train" else self.evaluate_metrics_aggr_fn
        if own is not None:
            try:
                found = own(records, weights)
                if isinstance(found, dict) and all(
                    isinstance(k, str) and isinstance(v, (int, float, list))
                    for k, v in found.items()
                ):
                    return dict(found)
                why = f"returned {type(found).__name__}, not a dict of numbers"
            except Exception as err:  # noqa: BLE001 - the user's function on clients' values
                why = f"{type(err).__name__}: {str(err)[:200]}"
            log.warning("%s metrics aggregation failed (%s); using the weighted mean", phase, why)
        return default(records, weights)

    def round_lr(self, server_round: int) -> float | None:
        if self.lr_schedule.kind == "constant" or not self.client_lr > 0:
            return None
        return self.client_lr * self.lr_schedule.factor(server_round, self.num_rounds)
