"""Aggregation helpers of the wire adapter: clipping, a streaming weighted mean, metric means."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def clip_update(deltas: dict[str, np.ndarray], max_norm: float) -> dict[str, np.ndarray]:
    """Scale an update down to L2 norm ``max_norm`` if it is longer (all tensors together)."""
    norm = float(np.sqrt(sum(float(np.square(d, dtype=np.float64).sum()) for d in deltas.values())))
    if norm <= max_norm:
        return deltas
    factor = np.float32(max_norm / norm)
    return {name: (d * factor).astype(np.float32) for name, d in deltas.items()}


class StreamingMean:
    """Weighted mean of reference + delta over replies, accumulated as they decode.

    Written by hand because Flower's ``aggregate_arrayrecords`` needs every reply's full model
    in memory at once (10,000 simulated clients of a 62k-parameter CNN would be 2.5 GB). Sums
    of up to ``BLOCK`` updates are taken in float32 and added into float64 totals, so the
    rounding error stays that of a 64-term float32 sum however many clients reply.
    """

    BLOCK = 64

    def __init__(self, reference: dict[str, np.ndarray]) -> None:
        self.reference = reference
        self.sums: dict[str, np.ndarray] = {}
        self.partial: dict[str, np.ndarray] = {}
        self.pending = 0
        self.total = 0.0

    def add(self, deltas: dict[str, np.ndarray], weight: float) -> None:
        self.total += weight
        w = np.float32(weight)
        for name, delta in deltas.items():
            if name not in self.partial:
                self.partial[name] = np.zeros(delta.shape, dtype=np.float32)
                self.sums[name] = np.zeros(delta.shape, dtype=np.float64)
            self.partial[name] += delta * w
        self.pending += 1
        if self.pending == self.BLOCK:
            self._flush()

    def _flush(self) -> None:
        for name, part in self.partial.items():
            self.sums[name] += part
            part.fill(0.0)
        self.pending = 0

    def result(self) -> dict[str, np.ndarray]:
        self._flush()
        return {
            name: (ref + self.sums[name] / self.total).astype(np.float32)
            if name in self.sums
            else ref
            for name, ref in self.reference.items()
        }


def weighted_metrics(records: Sequence[Mapping[str, Any]], weights: Sequence[float]) -> dict:
    """Flower's ``aggregate_metricrecords`` on checked metric values, with the same arithmetic.

    Flower's takes one RecordDict per reply, copies its records on every access and writes each
    partial sum back through MetricRecord's type checks, a cost per reply that adds up at
    10,000 simulated clients (benchmarks/README.md). This sums plain floats in the same
    order (value * (w / total), reply by reply), so when every reply sends the same metrics the
    result is bit-for-bit Flower's. Where replies disagree (a key some lack, a list of another
    length: Flower raises), each key at least half the replies send is averaged over those
    that send it in the shape most of them use; the rest are dropped, so one client can neither
    make the others' metrics unusable nor grow them.
    """
    shapes: dict[str, Counter] = {}
    for record in records:
        for key, value in record.items():
            shapes.setdefault(key, Counter())[len(value) if isinstance(value, list) else -1] += 1
    # a key only a minority sends is dropped: one client cannot grow every round's metrics
    chosen = {
        key: counts.most_common(1)[0][0]
        for key, counts in shapes.items()
        if 2 * sum(counts.values()) >= len(records)
    }
    totals: dict[str, float] = {}
    for record, weight in zip(records, weights, strict=True):
        for key, value in record.items():
            if key in chosen and (len(value) if isinstance(value, list) else -1) == chosen[key]:
                totals[key] = totals.get(key, 0.0) + weight
    sums: dict[str, Any] = {}
    for record, weight in zip(records, weights, strict=True):
        for key, value in record.items():
            if key not in chosen or (len(value) if isinstance(value, list) else -1) != chosen[key]:
                continue
            factor = weight / totals[key]
            if isinstance(value, list):
                prior = sums.get(key)
                scaled = [v * factor for v in value]
                sums[key] = (
                    scaled if prior is None else [c + s for c, s in zip(prior, scaled, strict=True)]
                )
            else:
                sums[key] = value * factor if key not in sums else sums[key] + value * factor
    return sums


def common_scalars(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The metric keys every record holds as a single number (what a strategy that reads each
    reply's metrics, e.g. q-FFL's loss, may rely on: Flower refuses replies whose keys differ)."""
    if not records:
        return []
    shared = set(records[0])
    for record in records[1:]:
        shared &= set(record)
    return sorted(k for k in shared if all(not isinstance(r[k], list) for r in records))


def robust_cohort(name: str, num_malicious: int) -> int:
    """Updates a robust aggregator needs each round to tolerate ``num_malicious`` Byzantine
    ones: Krum and Multi-Krum ``2f + 3`` for ``f >= 1`` (Blanchard et al. 2017: n > 2f + 2;
    with no attacker assumed any update will do), Bulyan ``4f + 3`` (El Mhamdi et al. 2018,
    Flower's own minimum); 0 for the others. Below it Flower's Krum still picks an update
    without its guarantee and its Bulyan skips the round with only a log warning."""
    f = int(num_malicious)
    krum = 2 * f + 3 if f > 0 else 0
    return {"krum": krum, "multikrum": krum, "bulyan": 4 * f + 3}.get(name.lower(), 0)
