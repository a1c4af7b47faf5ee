"""The server's validation boundary: each hostile reply is one counted rejection, and no reply
can end the run or make the global model NaN/Inf."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, MessageType, MetricRecord, RecordDict

from strategies import ReplyLimits
from strategies.stats import RoundStats, stall_reason
from strategies.validation import checked_weight, partition_of
from tests.helpers.replies import GLOBAL
from tests.helpers.replies import configured as _configured
from tests.helpers.replies import train_reply as _reply
from tests.messages import message
from wire import CodecSpec, UpdateRejected, encode_update

GOOD = {"w": np.array([0.1, -0.1, 0.2], np.float32)}


def _reasons(strategy, server_round=1):
    return [r.reason for r in strategy.rounds[server_round].rejected]


def _with_metrics(node, metrics, payload=None):
    reply = _reply(node, GOOD, n=1, payload=payload)
    reply.content["metrics"] = MetricRecord(metrics)
    return reply


@pytest.mark.parametrize("name", ["fedavg", "fedmedian", "fedadam"])
def test_metric_lists_of_different_lengths_leave_the_round_going(name):
    strategy, _ = _configured(name=name, nodes=3)
    replies = [
        _with_metrics(1, {"num-examples": 1, "per-class": [0.1, 0.2]}),
        _with_metrics(2, {"num-examples": 1, "per-class": [0.1, 0.2, 0.3]}),
        _with_metrics(3, {"num-examples": 1, "per-class": [0.3, 0.4], "extra": 1.0}),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and strategy.rounds[1].accepted == 3
    assert metrics["per-class"] == pytest.approx([0.2, 0.3])


@pytest.mark.parametrize("weight", [float("inf"), 1e39, float("nan"), -1, 0, 2e9], ids=str)
def test_an_unusable_num_examples_is_a_bad_weight(weight):
    strategy, _ = _configured(nodes=2)
    arrays, _ = strategy.aggregate_train(1, [_reply(1, GOOD, n=weight), _reply(2, GOOD, n=1)])
    assert _reasons(strategy) == ["bad-weight"]
    assert np.isfinite(arrays["w"].numpy()).all()


@pytest.mark.parametrize("name", ["fedavg", "fedmedian", "fedadam", "krum"])
@pytest.mark.parametrize("value", [3.4e38, -3.0e38, 2e6], ids=str)
def test_finite_but_huge_coordinates_are_out_of_bounds(name, value):
    strategy, _ = _configured(name=name, nodes=3)
    poison = {"w": np.array([value, 0.0, 0.0], np.float32)}
    replies = [_reply(1, poison, n=1), _reply(2, GOOD, n=1), _reply(3, GOOD, n=1)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert _reasons(strategy) == ["out-of-bounds"]
    assert np.isfinite(arrays["w"].numpy()).all()
    assert np.abs(arrays["w"].numpy() - GLOBAL["w"]).max() < 1


def test_the_bound_is_the_operators():
    strategy, _ = _configured(nodes=2, limits=ReplyLimits(max_update_value=0.05))
    strategy.aggregate_train(1, [_reply(1, GOOD, n=1), _reply(2, {"w": GOOD["w"] / 10}, n=1)])
    assert _reasons(strategy) == ["out-of-bounds"] and strategy.rounds[1].accepted == 1


def test_quantized_ranges_that_overflow_are_refused():
    strategy, _ = _configured(nodes=2)
    payload = encode_update(
        GOOD, server_round=1, codec=CodecSpec(quant_bits=4), rng=np.random.default_rng(0)
    )
    at = payload.index(np.array(GOOD["w"].min(), "<f4").tobytes())  # the (min, max) scales
    poisoned = payload[:at] + np.array([-2e38, 2e38], "<f4").tobytes() + payload[at + 8 :]
    arrays, _ = strategy.aggregate_train(
        1, [_reply(1, GOOD, n=1, payload=poisoned), _reply(2, GOOD, n=1)]
    )
    assert _reasons(strategy) == ["bad-scale"] and np.isfinite(arrays["w"].numpy()).all()


@pytest.mark.parametrize(
    "metrics",
    [
        {"num-examples": 1, "train-loss": float("nan")},
        {"num-examples": 1, "big": [1.0] * 5000},
        {"num-examples": 1, **{f"k{i}": 1.0 for i in range(300)}},
    ],
    ids=["nan", "long-list", "many-keys"],
)
def test_hostile_metrics_are_bad_metrics(metrics):
    strategy, _ = _configured(nodes=2)
    strategy.aggregate_train(1, [_with_metrics(1, metrics), _reply(2, GOOD, n=1)])
    assert _reasons(strategy) == ["bad-metrics"] and strategy.rounds[1].accepted == 1


@pytest.mark.parametrize("pid", [[1, 2], float("nan"), -5, 2**70, 1.5])
def test_a_hostile_partition_id_only_changes_the_summing_order(pid):
    strategy, _ = _configured(nodes=2)
    arrays, _ = strategy.aggregate_train(
        1, [_reply(1, GOOD, n=1, partition=pid), _reply(2, GOOD, n=1)]
    )
    assert strategy.rounds[1].accepted == 2 and arrays is not None
    assert partition_of(pid) == 2**62


def test_wrong_record_types_are_rejections_not_crashes():
    strategy, _ = _configured(nodes=3)
    no_metrics = _reply(1, GOOD, n=1)
    no_metrics.content = RecordDict(
        {
            "pollen.update": no_metrics.content["pollen.update"],
            "metrics": ConfigRecord({"num-examples": "many"}),
        }
    )
    str_payload = _reply(2, GOOD, n=1)
    str_payload.content["pollen.update"] = ConfigRecord({"payload": "not bytes"})
    strategy.aggregate_train(1, [no_metrics, str_payload, _reply(3, GOOD, n=1)])
    assert sorted(_reasons(strategy)) == ["bad-weight", "missing-payload"]
    assert strategy.rounds[1].accepted == 1


def test_evaluation_replies_with_inconsistent_metrics_are_averaged_or_counted():
    """Flower's aggregate_evaluate raises on replies whose metric keys differ."""
    strategy, _ = _configured(nodes=3)
    replies = [
        message(RecordDict({"metrics": MetricRecord(m)}), src=i, dst=1, message_type="evaluate")
        for i, m in enumerate(
            [
                {"num-examples": 10, "eval-accuracy": 0.5},
                {"num-examples": 30, "eval-accuracy": 0.9, "other": [1.0]},
                {"num-examples": float("inf"), "eval-accuracy": 0.0},
            ],
            start=1,
        )
    ]
    metrics = strategy.aggregate_evaluate(1, replies)
    assert metrics["eval-accuracy"] == pytest.approx(0.8)
    assert [r.reason for r in strategy.rounds[1].evaluate_rejected] == ["bad-weight"]


def test_checked_weight_refuses_bools_and_strings():
    limits = ReplyLimits()
    for value in (True, "3", None, [3]):
        with pytest.raises(UpdateRejected):
            checked_weight(value, "num-examples", limits)
    assert checked_weight(3, "num-examples", limits) == 3.0


def test_stall_reason_names_the_most_common_rejection():
    rounds = {r: RoundStats(server_round=r) for r in (1, 2, 3)}
    assert stall_reason(rounds, 3, 3) is None or "no client update" in stall_reason(rounds, 3, 3)
    for stats in rounds.values():
        stats.rejected = [_rejection("shape-mismatch")] * 4 + [_rejection("bad-weight")]
    why = stall_reason(rounds, 3, 3)
    assert "shape-mismatch (12 times)" in why and "rounds 1-3" in why
    rounds[2].accepted = 1
    assert stall_reason(rounds, 3, 3) is None and stall_reason(rounds, 3, 0) is None


def _rejection(reason):
    from strategies import Rejection

    return Rejection(7, reason, "update does not match the global model's tensors")


def test_a_query_reply_with_a_hostile_partition_id_is_unknown():
    from strategies.sampling import reported_partition

    for value in ([1, 2], float("nan"), float("inf"), -1):
        record = MetricRecord({"partition-id": value})
        reply = message(RecordDict({"node-info": record}), src=1, dst=1, message_type="query")
        assert reported_partition(reply) == 2**62
    reply = message(
        RecordDict({"node-info": ConfigRecord({"partition-id": "3"})}),
        src=1,
        dst=1,
        message_type=MessageType.QUERY,
    )
    assert reported_partition(reply) == 2**62


def test_a_failed_server_step_counts_toward_a_stall():
    rounds = {r: RoundStats(server_round=r, accepted=3) for r in (1, 2)}
    for stats in rounds.values():
        stats.aggregation_failure = "the aggregated model is not finite"
    assert "aggregation-failure (2 times)" in stall_reason(rounds, 2, 2)


def test_a_spent_but_failed_secure_sum_counts_toward_a_stall():
    """Distributed DP spends a round once its sum is unmasked; a sum that then fails its checks
    (a client masked a false count every round) still released no model."""
    rounds = {r: RoundStats(server_round=r, privacy={"dp-epsilon": float(r)}) for r in (1, 2)}
    for stats in rounds.values():
        stats.secagg_failure = "the unmasked sum counts 7 uploads, not the 6 summed"
    assert "secagg-failure (2 times)" in stall_reason(rounds, 2, 2)
    rounds[2].secagg_failure = ""  # an empty Poisson round released its noise: no stall
    assert stall_reason(rounds, 2, 2) is None


def test_qfedavg_refuses_a_reply_whose_loss_it_cannot_use():
    strategy, _ = _configured(name="qfedavg", nodes=4)
    replies = [_reply(i, GOOD, n=1) for i in (1, 2)]
    no_loss = _reply(3, GOOD, n=1)
    no_loss.content["metrics"] = MetricRecord({"num-examples": 1, "partition-id": 3})
    negative = _with_metrics(4, {"num-examples": 1, "train-loss": -1.0, "partition-id": 4})
    arrays, _ = strategy.aggregate_train(1, [*replies, no_loss, negative])
    assert _reasons(strategy) == ["bad-metrics", "bad-metrics"]
    assert strategy.rounds[1].accepted == 2 and not strategy.rounds[1].aggregation_failure
    assert arrays is not None and np.isfinite(arrays["w"].numpy()).all()


def test_a_metrics_function_that_fails_falls_back_to_the_weighted_mean():
    def broken(records, weights):
        raise KeyError("train-loss")

    strategy, _ = _configured(nodes=2, train_metrics_aggr_fn=broken)
    _, metrics = strategy.aggregate_train(1, [_reply(1, GOOD, n=1), _reply(2, GOOD, n=3)])
    assert metrics["train-loss"] == pytest.approx(0.5)
