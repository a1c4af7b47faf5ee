import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from wire import (
    FORMAT_VERSION,
    MAGIC,
    RejectReason,
    TensorSpec,
    UpdateRejected,
    decode_update,
    encode_update,
)

finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
tensor = arrays(np.float32, array_shapes(min_dims=0, max_dims=3, max_side=6), elements=finite32)


@given(st.lists(tensor, min_size=1, max_size=4), st.integers(0, 10_000))
def test_float32_round_trip_is_exact(tensors, server_round):
    named = {f"t{i}": t for i, t in enumerate(tensors)}
    payload = encode_update(named, server_round=server_round)
    decoded = decode_update(payload, expected_round=server_round)
    assert decoded.names == tuple(named)
    for name, out in decoded.as_dict().items():
        assert out.dtype == np.float32 and out.shape == named[name].shape
        assert np.array_equal(out, named[name])
    assert decoded.total_bytes == len(payload)
    assert decoded.body_bytes == 4 * sum(t.size for t in tensors)


def test_golden_payload_layout():
    payload = encode_update({"w": np.array([1.0, -2.0], np.float32)}, server_round=3)
    magic, version, header_len = struct.unpack_from("<4sHI", payload)
    assert (magic, version) == (MAGIC, FORMAT_VERSION) == (b"PLNW", 0)
    header = json.loads(payload[10 : 10 + header_len])
    assert header == {
        "body_bytes": 8,
        "format": 0,
        "round": 3,
        "stages": [{"name": "float32-delta", "params": {}}],
        "tensors": [{"dtype": "float32", "name": "w", "shape": [2]}],
    }
    assert payload[10 + header_len :] == bytes.fromhex("0000803f000000c0")


def _reason(payload, **kwargs):
    with pytest.raises(UpdateRejected) as info:
        decode_update(payload, **kwargs)
    assert str(info.value)  # always says what was wrong
    return info.value.reason


GOOD = encode_update(
    {"a": np.ones((2, 3), np.float32), "b": np.zeros(4, np.float32)}, server_round=1
)
SPECS = [TensorSpec("a", (2, 3)), TensorSpec("b", (4,))]


def test_accepts_matching_expectations():
    decoded = decode_update(GOOD, expected=SPECS, expected_round=1, max_bytes=len(GOOD))
    assert decoded.as_dict()["a"].sum() == 6


@pytest.mark.parametrize(
    ("payload", "kwargs", "reason"),
    [
        (GOOD[:5], {}, RejectReason.TOO_SHORT),
        (GOOD[:-1], {}, RejectReason.LENGTH_MISMATCH),
        (GOOD + b"\0", {}, RejectReason.LENGTH_MISMATCH),
        (b"XXXX" + GOOD[4:], {}, RejectReason.BAD_MAGIC),
        (GOOD[:4] + struct.pack("<H", 9) + GOOD[6:], {}, RejectReason.UNSUPPORTED_VERSION),
        (GOOD[:6] + struct.pack("<I", 10**6) + GOOD[10:], {}, RejectReason.TOO_SHORT),
        (GOOD, {"expected_round": 2}, RejectReason.ROUND_MISMATCH),
        (GOOD, {"expected": [TensorSpec("a", (3, 2)), SPECS[1]]}, RejectReason.SHAPE_MISMATCH),
        (GOOD, {"expected": SPECS[:1]}, RejectReason.SHAPE_MISMATCH),
        (GOOD, {"max_bytes": len(GOOD) - 1}, RejectReason.TOO_LARGE),
        ("not bytes", {}, RejectReason.MISSING_PAYLOAD),
    ],
)
def test_malformed_payloads_are_rejected_with_a_reason(payload, kwargs, reason):
    assert _reason(payload, **kwargs) == reason


def _with_header(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<4sHI", MAGIC, 0, len(raw)) + raw + body


def _header(**changes):
    header = {
        "format": 0,
        "round": 1,
        "stages": [{"name": "float32-delta", "params": {}}],
        "tensors": [{"name": "w", "shape": [2], "dtype": "float32"}],
        "body_bytes": 8,
    }
    header.update(changes)
    return header


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (_header(stages=[{"name": "zip", "params": {}}]), RejectReason.UNKNOWN_STAGE),
        (_header(stages=[]), RejectReason.BAD_HEADER),
        (_header(round="1"), RejectReason.BAD_HEADER),
        (_header(format=7), RejectReason.UNSUPPORTED_VERSION),
        (
            _header(tensors=[{"name": "w", "shape": [-2], "dtype": "float32"}]),
            RejectReason.BAD_TENSOR_SPEC,
        ),
        (
            _header(tensors=[{"name": "w", "shape": [2], "dtype": "float64"}]),
            RejectReason.BAD_TENSOR_SPEC,
        ),
        (
            _header(tensors=[{"name": "w", "shape": [1]}, {"name": "w", "shape": [1]}]),
            RejectReason.BAD_TENSOR_SPEC,
        ),
        (_header(body_bytes=4), RejectReason.LENGTH_MISMATCH),
    ],
)
def test_bad_headers_are_rejected(header, reason):
    assert _reason(_with_header(header, np.zeros(2, np.float32).tobytes())) == reason


def test_header_that_is_not_json_is_rejected():
    raw = b"\xff\xfe not json"
    assert _reason(struct.pack("<4sHI", MAGIC, 0, len(raw)) + raw) == RejectReason.BAD_HEADER


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_rejected(bad):
    payload = _with_header(_header(), np.array([0.0, bad], np.float32).tobytes())
    assert _reason(payload) == RejectReason.NON_FINITE


@settings(max_examples=300)
@given(st.binary(max_size=200), st.integers(0, len(GOOD) - 1), st.binary(min_size=1, max_size=4))
def test_random_and_mutated_bytes_never_crash(noise, position, patch):
    for payload in (noise, GOOD[:position] + patch + GOOD[position + len(patch) :]):
        try:
            decode_update(payload, expected=SPECS, expected_round=1, max_bytes=4096)
        except UpdateRejected as err:
            assert isinstance(err.reason, RejectReason)
