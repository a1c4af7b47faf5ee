"""10,000 random and mutated payloads through the server's decode path: no crash, ever."""

import numpy as np

from wire import (
    CodecSpec,
    MaskSet,
    RejectReason,
    TensorSpec,
    UpdateRejected,
    decode_update,
    encode_update,
)

SPECS = [TensorSpec("w", (32, 16)), TensorSpec("b", (16,))]
MASK = MaskSet({"w": np.random.default_rng(0).random((32, 16)) < 0.5})


def _seeds():
    rng = np.random.default_rng(1)
    tensors = {
        "w": rng.normal(size=(32, 16)).astype(np.float32),
        "b": rng.normal(size=16).astype(np.float32),
    }
    codecs = [
        CodecSpec(),
        CodecSpec(quant_bits=4, quant_chunk=32),
        CodecSpec(topk=0.1, quant_bits=2),
    ]
    return [encode_update(tensors, server_round=3, codec=c, masks=MASK, rng=rng) for c in codecs]


def test_ten_thousand_hostile_payloads_never_crash_the_decoder():
    rng = np.random.default_rng(2)
    seeds = _seeds()
    outcomes = {"rejected": 0, "accepted": 0}
    reasons: set[str] = set()
    for i in range(10_000):
        base = seeds[i % len(seeds)]
        kind = i % 4
        if kind == 0:  # random bytes, sometimes with a valid prefix
            payload = rng.bytes(int(rng.integers(0, 400)))
            if i % 8 == 0:
                payload = base[:10] + payload
        elif kind == 1:  # flip bytes anywhere
            raw = bytearray(base)
            for pos in rng.integers(0, len(raw), size=int(rng.integers(1, 6))):
                raw[pos] = int(rng.integers(0, 256))
            payload = bytes(raw)
        elif kind == 2:  # truncate or extend
            cut = int(rng.integers(0, len(base) + 20))
            payload = base[:cut] + rng.bytes(max(0, cut - len(base)))
        else:  # splice two payloads
            other = seeds[(i + 1) % len(seeds)]
            cut = int(rng.integers(0, min(len(base), len(other))))
            payload = base[:cut] + other[cut:]
        try:
            decoded = decode_update(
                payload, expected=SPECS, masks=MASK, expected_round=3, max_bytes=8192
            )
        except UpdateRejected as err:
            assert isinstance(err.reason, RejectReason) and err.detail
            outcomes["rejected"] += 1
            reasons.add(err.reason.value)
            continue
        # a mutation that kept the payload well-formed: values are finite and shaped right
        assert all(np.isfinite(t).all() for t in decoded.tensors)
        assert [t.shape for t in decoded.tensors] == [(32, 16), (16,)]
        outcomes["accepted"] += 1
    print(f"fuzz: {sum(outcomes.values())} payloads, 0 crashes, {outcomes}, {len(reasons)} reasons")
    assert sum(outcomes.values()) == 10_000
    # a flipped byte in a float32 body is mostly a valid payload; the header (v2: deflated with
    # a preset dictionary) is a small share of these payloads, so most flips land in bodies
    assert outcomes["rejected"] > 8_500
    assert len(reasons) >= 8  # many different checks fired, each with its own reason
