"""The wire adapter's aggregation helpers against their plain definitions (and Flower's own)."""

import numpy as np
from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from strategies.aggregation import StreamingMean, clip_update, weighted_metrics


def test_weighted_metrics_are_bit_for_bit_flowers_aggregate_metricrecords():
    rng = np.random.default_rng(0)
    records = [
        MetricRecord(
            {
                "num-examples": int(rng.integers(1, 90)),
                "train-loss": float(rng.random()),
                "train-steps": int(rng.integers(1, 9)),
                "per-class": [float(v) for v in rng.random(3)],
            }
        )
        for _ in range(257)
    ]
    plain = [{k: v for k, v in r.items() if k != "num-examples"} for r in records]
    ours = weighted_metrics(plain, [r["num-examples"] for r in records])
    flowers = aggregate_metricrecords([RecordDict({"m": r}) for r in records], "num-examples")
    assert ours == dict(flowers) and "num-examples" not in ours
    assert ours["train-loss"] != np.mean([r["train-loss"] for r in records])  # weighted


def test_weighted_metrics_follow_the_shape_most_replies_send():
    """Flower raises on lists of different lengths; here the odd reply is left out of that key,
    and a key only a minority sends is dropped (one client cannot grow the round's metrics)."""
    records = [
        {"loss": 1.0, "per-class": [1.0, 2.0]},
        {"loss": 3.0, "per-class": [3.0, 4.0], "extra": 5.0},
        {"loss": [9.0, 9.0], "per-class": [1.0, 2.0, 3.0]},
    ]
    ours = weighted_metrics(records, [1.0, 1.0, 2.0])
    assert ours == {"loss": 2.0, "per-class": [2.0, 3.0]}
    half = weighted_metrics(records[:2], [1.0, 1.0])  # "extra": one of two replies, kept
    assert half["extra"] == 5.0


def test_streaming_mean_over_many_blocks_matches_float64():
    rng = np.random.default_rng(1)
    reference = {"w": rng.normal(size=50).astype(np.float32), "frozen": np.ones(2, np.float32)}
    deltas = rng.normal(scale=1e-3, size=(300, 50)).astype(np.float32)
    weights = rng.integers(1, 60, size=300)
    mean = StreamingMean(reference)
    for d, w in zip(deltas, weights, strict=True):
        mean.add({"w": d}, float(w))
    exact = reference["w"] + (weights[:, None] * deltas.astype(np.float64)).sum(0) / weights.sum()
    result = mean.result()
    np.testing.assert_allclose(result["w"], exact, rtol=0, atol=1e-7)
    assert result["frozen"] is reference["frozen"] and mean.total == weights.sum()


def test_clip_update_scales_long_updates_only():
    long = {"a": np.array([3.0, 0.0], np.float32), "b": np.array([4.0], np.float32)}
    clipped = clip_update(long, 1.0)
    assert np.isclose(np.sqrt(sum(float((v**2).sum()) for v in clipped.values())), 1.0)
    short = {"a": np.array([0.3], np.float32)}
    assert clip_update(short, 1.0) is short
