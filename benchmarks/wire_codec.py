"""Encode + decode time of a 1M-parameter update per codec, vs Flower's own Array round trip.

Baseline (measured in the same run): ``flwr.app.Array`` from numpy and back (np.save/np.load
under the hood), the path a plain Flower client's ArrayRecord takes. Prints, per codec, the
payload size, its ratio to float32, the median encode+decode milliseconds and the ratio of that
time to the baseline's. Target (issues #3 and #20): every codec under 50 ms on a 2-core CPU,
the rotation rows (randomized Hadamard + EDEN/DRIVE, EF-signSGD, EDEN's fractional bits by
sub-sampling) included.

    .venv/bin/python benchmarks/wire_codec.py [PARAMS]
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
from flwr.app import Array

from wire import CodecSpec, MaskSet, TensorSpec, decode_update, encode_update


def median_ms(fn, repeats: int = 15) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(params: int = 1_000_000) -> None:
    rng = np.random.default_rng(0)
    rows = params // 1000
    update = {
        "layer1.weight": rng.normal(size=(rows, 1000)).astype(np.float32),
        "layer1.bias": rng.normal(size=params - rows * 1000).astype(np.float32),
    }
    specs = [TensorSpec(k, v.shape) for k, v in update.items()]
    mask = MaskSet({"layer1.weight": rng.random((rows, 1000)) >= 0.9})
    codecs = [
        ("float32", CodecSpec(), None),
        ("8-bit", CodecSpec(quant_bits=8), None),
        ("4-bit", CodecSpec(quant_bits=4), None),
        ("1-bit", CodecSpec(quant_bits=1), None),
        ("90% masked + 4-bit", CodecSpec(quant_bits=4), mask),
        ("top-1% float32", CodecSpec(topk=0.01), None),
        ("top-1% + 8-bit", CodecSpec(topk=0.01, quant_bits=8), None),
        # issue 20: randomized Hadamard rotation, EDEN/DRIVE, EF-signSGD
        ("rot float32", CodecSpec(rotate="client"), None),
        ("rot + 1-bit EDEN", CodecSpec(quant_bits=1, scheme="eden", rotate="client"), None),
        ("rot + 2-bit EDEN", CodecSpec(quant_bits=2, scheme="eden", rotate="client"), None),
        ("rot + 4-bit EDEN", CodecSpec(quant_bits=4, scheme="eden", rotate="client"), None),
        ("1-bit EDEN, no rot", CodecSpec(quant_bits=1, scheme="eden"), None),
        ("EF-signSGD (sign)", CodecSpec(quant_bits=1, scheme="sign", quant_chunk=1 << 24), None),
        (
            "top-5% + rot + 1-bit",
            CodecSpec(topk=0.05, quant_bits=1, scheme="eden", rotate="client"),
            None,
        ),
        (
            "90% masked + rot + 1b",
            CodecSpec(quant_bits=1, scheme="eden", rotate="client"),
            mask,
        ),
        # EDEN's fractional bits: a seeded random fraction of the rotated values (wire.subsample)
        *(
            (
                f"rot + 1b EDEN, p={p}",
                CodecSpec(quant_bits=1, scheme="eden", rotate="client", quant_fraction=p),
                None,
            )
            for p in (0.5, 0.25)
        ),
        (
            "rot + 1b mse, p=0.18",
            CodecSpec(
                quant_bits=1, scheme="eden", rotate="client", quant_fraction=0.18, eden_scale="mse"
            ),
            None,
        ),
    ]

    def flower() -> None:
        for value in update.values():
            Array(value).numpy()

    base_ms = median_ms(flower)
    print(f"params={params}; baseline flower Array round trip: {base_ms:.2f} ms (median)")
    print(f"{'codec':<22} {'bytes':>10} {'vs f32':>7} {'enc+dec ms':>11} {'vs flower':>10}")
    for name, codec, masks in codecs:
        payload = encode_update(update, server_round=1, codec=codec, masks=masks, rng=rng)

        def round_trip(codec=codec, masks=masks) -> None:
            sent = encode_update(update, server_round=1, codec=codec, masks=masks, rng=rng)
            decode_update(sent, expected=specs, masks=masks, expected_round=1)

        ms = median_ms(round_trip)
        print(
            f"{name:<22} {len(payload):>10} {4 * params / len(payload):>6.1f}x "
            f"{ms:>11.2f} {ms / base_ms:>9.2f}x"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
