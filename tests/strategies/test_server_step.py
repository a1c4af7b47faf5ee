"""The server step (strategies.server_step): a refused step leaves the global model and the
server optimizer's state as they were, so one bad aggregate cannot poison later rounds."""

import numpy as np
import pytest
from flwr.app import MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvgM, FedYogi, Krum

from strategies.server_step import server_step
from strategies.stats import RoundStats
from tests.helpers.replies import float32_arrays
from tests.messages import message

START = {"w": np.array([1.0, 2.0, 3.0], np.float32), "b": np.array([0.5], np.float32)}


def _aggregate(model: dict[str, np.ndarray]):
    """The one reply Flower's strategy reads: the round's mean model, weight 8."""
    content = RecordDict(
        {"arrays": float32_arrays(model), "metrics": MetricRecord({"num-examples": 8})}
    )
    return [message(content, src=2, dst=1, message_type=MessageType.TRAIN)]


def _step(inner, server_round, model, current):
    """One round as the wire adapter runs it: the model clients got, then the step."""
    inner.current_arrays = (
        float32_arrays(current)
        if isinstance(inner, FedAvgM)
        else {k: v.copy() for k, v in current.items()}
    )
    stats = RoundStats(server_round=server_round, accepted=1)
    arrays = server_step(inner, server_round, _aggregate(model), stats)
    named = None if arrays is None else {k: a.numpy() for k, a in arrays.items()}
    return named, stats


def _strategies():
    return [
        FedAvgM(server_learning_rate=1.0, server_momentum=0.9),
        FedAdam(eta=0.1, eta_l=0.1),
        FedYogi(eta=0.1, eta_l=0.1),
    ]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("index", range(3))
def test_a_non_finite_step_keeps_the_model_and_the_optimizer_state(bad, index):
    """Round 2's aggregate is not finite: it is refused and the run's rounds 1 and 3 give the
    model a run without round 2 gives, bit for bit (momentum and moments unpoisoned)."""
    good = [{k: v + 0.1 * r for k, v in START.items()} for r in (1, 2)]
    poisoned = {"w": np.array([1.0, bad, 3.0], np.float32), "b": START["b"]}

    clean, faulted = _strategies()[index], _strategies()[index]
    first, _ = _step(clean, 1, good[0], START)
    expected, _ = _step(clean, 2, good[1], first)

    first_again, _ = _step(faulted, 1, good[0], START)
    refused, stats = _step(faulted, 2, poisoned, first_again)
    assert refused is None and stats.aggregation_failure == "the aggregated model is not finite"
    model, _ = _step(faulted, 3, good[1], first_again)
    for name in START:
        assert np.isfinite(model[name]).all()
    if isinstance(faulted, FedAvgM):  # its step does not depend on the round number
        assert all(np.array_equal(model[k], expected[k]) for k in START)


class _RaisesAfterItsStep(FedAdam):
    """FedAdam whose step fails after its moments moved (as a later check in it might)."""

    def aggregate_train(self, server_round, replies):
        super().aggregate_train(server_round, replies)
        raise ArithmeticError("late failure")


def test_a_step_that_raises_keeps_the_state_and_names_the_error():
    inner = _RaisesAfterItsStep(eta=0.1, eta_l=0.1)
    inner.m_t = {k: np.full_like(v, 0.5) for k, v in START.items()}
    inner.v_t = {k: np.full_like(v, 0.25) for k, v in START.items()}
    moments = (inner.m_t, inner.v_t)
    refused, stats = _step(inner, 2, {k: v + 1 for k, v in START.items()}, START)
    assert refused is None and stats.aggregation_failure == "ArithmeticError: late failure"
    assert (inner.m_t, inner.v_t) == moments
    assert inner.m_t["w"].tolist() == [0.5] * 3  # untouched
    refused, stats = _step(FedAdam(eta=0.1), 2, {"w": START["w"]}, START)  # an array missing
    assert refused is None and stats.aggregation_failure.startswith("AggregationError")


def test_a_robust_strategy_with_too_few_updates_is_refused_before_it_runs():
    inner = Krum(num_malicious_nodes=1)
    stats = RoundStats(server_round=1, accepted=2)
    assert server_step(inner, 1, _aggregate(START), stats) is None
    assert stats.aggregation_failure == "Krum needs 5 updates, 2 accepted"  # 2f + 3


def test_frozen_arrays_stay_exactly_as_sent():
    inner = FedAvgM(server_learning_rate=1.0, server_momentum=0.0)
    inner.current_arrays = float32_arrays(START)
    sent = np.array([0.1 + 0.2], np.float32)
    arrays = server_step(
        inner,
        1,
        _aggregate({"w": START["w"] + 1, "b": sent + 1e-7}),
        RoundStats(server_round=1, accepted=1),
        frozen={"b": sent},
    )
    assert arrays["b"].numpy().tobytes() == sent.tobytes()


def test_a_finite_model_from_an_overflowed_moment_is_refused_too():
    """A pseudo-gradient past 1.8e19 squares to inf in float32: FedAdam's v_t becomes inf while
    its model, x + m / inf, stays finite; kept, those coordinates would never move again."""
    inner = FedAdam(eta=0.1, eta_l=0.1)
    huge = {"w": np.array([1.0, 3e19, 3.0], np.float32), "b": START["b"]}
    refused, stats = _step(inner, 1, huge, START)
    assert (
        refused is None and stats.aggregation_failure == "FedAdam's optimizer state is not finite"
    )
    assert inner.m_t is None and inner.v_t is None  # as before the step
    model, _ = _step(inner, 2, {k: v + 0.1 for k, v in START.items()}, START)
    assert all(np.isfinite(model[k]).all() for k in START)
