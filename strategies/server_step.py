"""The server step: the wrapped Flower strategy's ``aggregate_train`` on the round's aggregate,
and what a refused step leaves behind.

A step is refused when the strategy needs more updates than were accepted (a robust
aggregator's cohort), when it raises, or when its model or its optimizer state is not finite.
Then the global model stays as it was, and so does the server optimizer's state: Flower's
FedAvgM and FedOpt family (FedAdam, FedYogi, FedAdagrad) update their momentum and moments
inside ``aggregate_train``, before anyone sees the model, and a NaN moment kept from a refused
step would poison every later round. The state is named once here (the checkpoint saves the
same attributes).
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import Array, ArrayRecord, Message
from flwr.serverapp.strategy import Strategy

from strategies.aggregation import robust_cohort
from strategies.stats import RoundStats
from strategies.validation import is_finite_model

log = logging.getLogger(__name__)

# Flower's FedOpt family keeps its moments in dicts by array name; FedAvgM its momentum in a
# list in the model's array order (a checkpoint keeps it by array name too)
OPTIMIZER_ATTRS = ("m_t", "v_t", "momentum_vector")
LISTED_ATTRS = ("momentum_vector",)
# what a step may change besides them: the model the next pseudo-gradient is taken from
STEP_ATTRS = (*OPTIMIZER_ATTRS, "current_arrays")


def server_step(
    inner: Strategy,
    server_round: int,
    replies: list[Message],
    stats: RoundStats,
    *,
    frozen: dict[str, np.ndarray] | None = None,
) -> ArrayRecord | None:
    """The inner strategy's new model from the aggregate ``replies``; None (the model and the
    optimizer's state stay) when the step is refused, its reason in ``stats``. ``frozen``:
    arrays kept exactly as sent (averaging equal values can move their last bit)."""
    name = type(inner).__name__
    needed = robust_cohort(name, getattr(inner, "num_malicious_nodes", 0))
    if stats.accepted < needed:
        return _refused(
            server_round, stats, f"{name} needs {needed} updates, {stats.accepted} accepted"
        )
    # Flower reassigns these each step (never updates them in place), so references suffice
    before = {attr: getattr(inner, attr) for attr in STEP_ATTRS if hasattr(inner, attr)}
    try:
        arrays, _ = inner.aggregate_train(server_round, replies)
    except Exception as err:  # noqa: BLE001 - a round fails, the run goes on
        why = f"{type(err).__name__}: {str(err)[:300]}"
    else:
        if arrays is None:
            return None
        if not is_finite_model(arrays):
            why = "the aggregated model is not finite"
        elif not _finite_state(inner):  # e.g. FedAdam's v_t overflowed: x + m / inf is finite
            why = f"{name}'s optimizer state is not finite"
        else:
            for key, value in (frozen or {}).items():
                arrays[key] = Array(value)
            return arrays
    for attr, value in before.items():
        setattr(inner, attr, value)
    return _refused(server_round, stats, why)


def _finite_state(inner: Strategy) -> bool:
    for attr in OPTIMIZER_ATTRS:
        value = getattr(inner, attr, None)
        arrays = value.values() if isinstance(value, dict) else value or ()
        if not all(np.isfinite(a).all() for a in arrays):
            return False
    return True


def _refused(server_round: int, stats: RoundStats, why: str) -> None:
    stats.aggregation_failure = why
    log.warning("round %d: %s; the global model stays as it was", server_round, why)
    return None
