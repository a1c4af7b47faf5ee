import json
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from wire import (
    FORMAT_VERSION,
    MAGIC,
    CodecSpec,
    MaskSet,
    RejectReason,
    TensorSpec,
    UpdateRejected,
    decode_update,
    encode_update,
)
from wire.format import read_header

finite32 = st.floats(-1e4, 1e4, width=32)
tensor = arrays(np.float32, array_shapes(min_dims=0, max_dims=3, max_side=6), elements=finite32)


def _specs(named):
    return [TensorSpec(k, tuple(v.shape)) for k, v in named.items()]


@settings(deadline=None)  # a loaded CI machine is not a failure
@given(st.lists(tensor, min_size=1, max_size=4), st.integers(0, 10_000), st.data())
def test_float32_round_trip_is_exact_with_and_without_a_mask(tensors, server_round, data):
    named = {f"t{i}": t for i, t in enumerate(tensors)}
    masks = None
    if data.draw(st.booleans()):
        masks = MaskSet({"t0": data.draw(arrays(np.bool_, tensors[0].shape))})
    payload = encode_update(named, server_round=server_round, masks=masks)
    decoded = decode_update(
        payload, expected=_specs(named), masks=masks, expected_round=server_round
    )
    want = masks.apply(named) if masks else named
    for name, out in decoded.as_dict().items():
        assert out.dtype == np.float32 and out.shape == named[name].shape
        assert np.array_equal(out, want[name])
    kept = sum(masks.kept(k, v.size) if masks else v.size for k, v in named.items())
    assert decoded.section_bytes == {"values": 4 * kept}
    assert decoded.total_bytes == len(payload) == decoded.header_bytes + 4 * kept


@settings(deadline=None, max_examples=50)
@given(st.lists(tensor, min_size=1, max_size=3), st.sampled_from([1, 2, 4, 8]), st.booleans())
def test_quantized_round_trip_is_within_one_step_per_chunk(tensors, bits, stochastic):
    named = {f"t{i}": t for i, t in enumerate(tensors)}
    codec = CodecSpec(quant_bits=bits, quant_chunk=8, stochastic=stochastic)
    payload = encode_update(named, server_round=1, codec=codec, rng=np.random.default_rng(0))
    decoded = decode_update(payload, expected=_specs(named))
    flat_in = np.concatenate([t.ravel() for t in tensors])
    flat_out = np.concatenate([t.ravel() for t in decoded.tensors])
    chunks = -(-flat_in.size // 8)
    padded = np.concatenate([flat_in, np.repeat(flat_in[-1:], chunks * 8 - flat_in.size)]).reshape(
        chunks, 8
    )
    step = np.repeat((padded.max(1) - padded.min(1)) / ((1 << bits) - 1), 8)[: flat_in.size]
    assert np.all(
        np.abs(flat_out - flat_in)
        <= step * (1 if stochastic else 0.5) + 1e-3 * (1 + np.abs(flat_in))
    )
    # the payload is exactly what the math says: header + 8 bytes per chunk + packed codes
    assert decoded.section_bytes == {"scales": 8 * chunks, "codes": (flat_in.size * bits + 7) // 8}


def test_topk_sends_only_k_values_and_zeros_the_rest():
    rng = np.random.default_rng(0)
    named = {
        "w": rng.normal(size=(100, 10)).astype(np.float32),
        "b": rng.normal(size=10).astype(np.float32),
    }
    payload = encode_update(named, server_round=1, codec=CodecSpec(topk=0.05))
    update = decode_update(payload, expected=_specs(named))
    decoded = update.as_dict()
    flat = np.concatenate([named["w"].ravel(), named["b"]])
    kept = np.sort(np.argsort(-np.abs(flat))[:51])
    out = np.concatenate([decoded["w"].ravel(), decoded["b"]])
    assert np.array_equal(np.flatnonzero(out), kept) and np.array_equal(out[kept], flat[kept])
    assert update.section_bytes["values"] == 4 * 51
    assert update.section_bytes["indices"] < 4 * 51  # fewer than 32 bits per index


def test_golden_payload_layout():
    payload = encode_update({"w": np.array([1.0, -2.0], np.float32)}, server_round=3)
    magic, version, header_len = struct.unpack_from("<4sHI", payload)
    assert (magic, version) == (MAGIC, FORMAT_VERSION) == (b"PLNW", 2)
    assert payload[10 : 10 + header_len][:1] == b"\x78"  # a zlib stream
    header = read_header(payload)
    assert header == {
        "format": 2,
        "round": 3,
        "sections": [["values", 8]],
        "stages": [
            {"name": "select", "params": {"count": 2, "mask": ""}},
            {"name": "float32", "params": {}},
        ],
        "tensors": [{"dtype": "float32", "name": "w", "shape": [2]}],
    }
    assert payload[10 + header_len :] == bytes.fromhex("0000803f000000c0")


def _reason(payload, **kwargs):
    with pytest.raises(UpdateRejected) as info:
        decode_update(payload, **kwargs)
    assert str(info.value)  # always says what was wrong
    return info.value.reason


NAMED = {"a": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3), "b": np.zeros(4, np.float32)}
GOOD = encode_update(NAMED, server_round=1)
SPECS = _specs(NAMED)
MASK = MaskSet({"a": np.array([[1, 0, 1], [0, 1, 1]], bool)})
QUANT = encode_update(
    NAMED,
    server_round=1,
    codec=CodecSpec(quant_bits=4, quant_chunk=4),
    masks=MASK,
    rng=np.random.default_rng(0),
)


def test_accepts_matching_expectations():
    decoded = decode_update(GOOD, expected=SPECS, expected_round=1, max_bytes=len(GOOD))
    assert decoded.as_dict()["a"][1, 2] == 1.0
    assert (
        decode_update(QUANT, expected=SPECS, masks=MASK, expected_round=1).as_dict()["a"][0, 1] == 0
    )


@pytest.mark.parametrize(
    ("payload", "kwargs", "reason"),
    [
        (GOOD[:5], {}, RejectReason.TOO_SHORT),
        (GOOD[:-1], {}, RejectReason.LENGTH_MISMATCH),
        (QUANT[:-3], {"masks": MASK}, RejectReason.LENGTH_MISMATCH),
        (GOOD + b"\0", {}, RejectReason.LENGTH_MISMATCH),
        (b"XXXX" + GOOD[4:], {}, RejectReason.BAD_MAGIC),
        (GOOD[:4] + struct.pack("<H", 9) + GOOD[6:], {}, RejectReason.UNSUPPORTED_VERSION),
        (GOOD[:6] + struct.pack("<I", 10**6) + GOOD[10:], {}, RejectReason.TOO_SHORT),
        (GOOD, {"expected_round": 2}, RejectReason.ROUND_MISMATCH),
        (GOOD, {"expected": [TensorSpec("a", (3, 2)), SPECS[1]]}, RejectReason.SHAPE_MISMATCH),
        (GOOD, {"expected": SPECS[:1]}, RejectReason.SHAPE_MISMATCH),
        (GOOD, {"max_bytes": len(GOOD) - 1}, RejectReason.TOO_LARGE),
        ("not bytes", {}, RejectReason.MISSING_PAYLOAD),
        (GOOD, {"masks": MASK}, RejectReason.MASK_MISMATCH),  # sent dense, server prunes
        (QUANT, {}, RejectReason.MASK_MISMATCH),  # sent under a mask the server does not have
        (QUANT, {"masks": MaskSet({"a": ~MASK.masks["a"]})}, RejectReason.MASK_MISMATCH),
        (QUANT, {"masks": MaskSet({"a": np.ones((3, 2), bool)})}, RejectReason.MASK_MISMATCH),
    ],
)
def test_malformed_payloads_are_rejected_with_a_reason(payload, kwargs, reason):
    assert _reason(payload, **kwargs) == reason


def _rewrite(payload: bytes, edit) -> bytes:
    """Change a valid payload's header with ``edit`` and keep its body."""
    (header_len,) = struct.unpack_from("<I", payload, 6)
    header = read_header(payload)
    body = payload[10 + header_len :]
    edit(header)
    raw = zlib.compress(json.dumps(header).encode())
    return struct.pack("<4sHI", MAGIC, 1, len(raw)) + raw + body


def _set_stage_param(index, key, value):
    def edit(header):
        header["stages"][index]["params"][key] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (_set_stage_param(1, "bits", 3), RejectReason.BAD_BIT_WIDTH),
        (_set_stage_param(1, "bits", 16), RejectReason.BAD_BIT_WIDTH),
        (_set_stage_param(1, "chunk", 0), RejectReason.BAD_HEADER),
        (_set_stage_param(0, "count", 99), RejectReason.LENGTH_MISMATCH),
        (lambda h: h["stages"].reverse(), RejectReason.STAGE_ORDER),
        (
            lambda h: h["stages"].__setitem__(1, {"name": "zip", "params": {}}),
            RejectReason.UNKNOWN_STAGE,
        ),
        (lambda h: h.__setitem__("round", "1"), RejectReason.BAD_HEADER),
        (lambda h: h.__setitem__("format", 7), RejectReason.UNSUPPORTED_VERSION),
        (lambda h: h["tensors"][0].__setitem__("shape", [-2, 3]), RejectReason.BAD_TENSOR_SPEC),
        (lambda h: h["tensors"][0].__setitem__("dtype", "float64"), RejectReason.BAD_TENSOR_SPEC),
        (lambda h: h["sections"].reverse(), RejectReason.LENGTH_MISMATCH),
    ],
)
def test_bad_headers_are_rejected(edit, reason):
    assert _reason(_rewrite(QUANT, edit), masks=MASK) == reason


def _bad_scales(value):
    (header_len,) = struct.unpack_from("<I", QUANT, 6)
    body_start = 10 + header_len
    scales = np.frombuffer(QUANT[body_start : body_start + 16], "<f4").copy()
    scales[0] = value
    return QUANT[:body_start] + scales.tobytes() + QUANT[body_start + 16 :]


@pytest.mark.parametrize("bad", [np.nan, np.inf, 5.0])  # 5.0: min above max
def test_bad_scales_are_rejected(bad):
    assert _reason(_bad_scales(bad), masks=MASK) == RejectReason.BAD_SCALE


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_rejected(bad):
    payload = encode_update({"w": np.array([0.0, 1.0], np.float32)}, server_round=1)
    payload = payload[:-4] + np.array([bad], "<f4").tobytes()
    assert _reason(payload) == RejectReason.NON_FINITE


def test_tampered_topk_indices_are_rejected():
    payload = encode_update(
        {"w": np.arange(100, dtype=np.float32)}, server_round=1, codec=CodecSpec(topk=0.05)
    )

    def edit(header):
        header["stages"][1]["params"]["segments"][0][2] = 6

    assert _reason(_rewrite(payload, edit)) in (
        RejectReason.LENGTH_MISMATCH,
        RejectReason.BAD_INDICES,
    )


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, len(QUANT) - 1), st.binary(min_size=1, max_size=4))
def test_random_and_mutated_bytes_never_crash(noise, position, patch):
    for payload in (noise, QUANT[:position] + patch + QUANT[position + len(patch) :]):
        try:
            decode_update(payload, expected=SPECS, masks=MASK, expected_round=1, max_bytes=4096)
        except UpdateRejected as err:
            assert isinstance(err.reason, RejectReason)


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe not zlib",
        zlib.compress(b"\xff\xfe not utf-8"),
        zlib.compress(b"[1, 2]"),  # JSON, not an object
        zlib.compress(b"{}") + b"trailing",
        zlib.compress(b" " * (2 << 20)),  # inflates past the cap: a zip bomb
    ],
)
def test_headers_that_do_not_inflate_to_a_json_object_are_rejected(raw):
    payload = struct.pack("<4sHI", MAGIC, 1, len(raw)) + raw
    assert _reason(payload) == RejectReason.BAD_HEADER
