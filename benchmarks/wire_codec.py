"""Wire v0 encode + decode time vs Flower's own Array serialization, measured in one run.

Baseline: ``flwr.app.Array`` from numpy and back (np.save/np.load under the hood), the path a
plain Flower client's ArrayRecord takes. Prints medians and the ratio (ours / Flower's).

    .venv/bin/python benchmarks/wire_codec.py [PARAMS]
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
from flwr.app import Array

from wire import TensorSpec, decode_update, encode_update


def median_seconds(fn, repeats: int = 15) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(params: int = 1_000_000) -> None:
    rng = np.random.default_rng(0)
    shapes = {"layer1.weight": (params // 2,), "layer2.weight": (params - params // 2,)}
    update = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    specs = [TensorSpec(k, s) for k, s in shapes.items()]

    def ours() -> None:
        payload = encode_update(update, server_round=1)
        decode_update(payload, expected=specs, expected_round=1)

    def flower() -> None:
        for value in update.values():
            Array(value).numpy()

    ours_s, flower_s = median_seconds(ours), median_seconds(flower)
    size = len(encode_update(update, server_round=1))
    print(f"params={params} payload_bytes={size} float32_bytes={4 * params}")
    print(f"wire v0 encode+decode: {ours_s * 1e3:.2f} ms (median)")
    print(f"flower Array round trip: {flower_s * 1e3:.2f} ms (median)")
    print(f"ratio ours/flower: {ours_s / flower_s:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
