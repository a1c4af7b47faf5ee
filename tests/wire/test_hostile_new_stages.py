"""Hostile headers and bodies for the rotate, eden and sign stages: each is one typed rejection."""

import json
import struct

import numpy as np
import pytest

from tests.helpers.payloads import reframe as _reframe
from tests.helpers.payloads import with_header as _with_header
from wire import CodecSpec, RejectReason, TensorSpec, UpdateRejected, decode_update, encode_update
from wire.format import read_header

SPECS = [TensorSpec("w", (30, 40))]
DELTA = {"w": np.random.default_rng(0).normal(size=(30, 40)).astype(np.float32)}
EDEN = CodecSpec(quant_bits=2, scheme="eden", rotate="client", quant_chunk=512)
SIGN = CodecSpec(quant_bits=1, scheme="sign", quant_chunk=512)


def _payload(codec) -> bytes:
    return encode_update(DELTA, server_round=1, codec=codec, rng=np.random.default_rng(0))


def _reason(payload: bytes, **kw) -> RejectReason:
    with pytest.raises(UpdateRejected) as err:
        decode_update(payload, expected=SPECS, expected_round=1, **kw)
    return err.value.reason


def _edit_params(codec, stage: str, **changes):
    def edit(header):
        params = next(s["params"] for s in header["stages"] if s["name"] == stage)
        for key, value in changes.items():
            if value is _DROP:
                params.pop(key)
            else:
                params[key] = value

    return _with_header(_payload(codec), edit)


class _Drop:
    """Drops the param; a fixed repr keeps test ids equal on every pytest-xdist worker."""

    def __repr__(self) -> str:
        return "DROP"


_DROP = _Drop()


def test_honest_payloads_decode():
    for codec in (EDEN, SIGN, CodecSpec(quant_bits=1, scheme="eden", topk=0.1, rotate="client")):
        decode_update(_payload(codec), expected=SPECS, expected_round=1)


@pytest.mark.parametrize(
    "seed", [-1, 2**63, 2**64 + 5, 1.0, True, "7", None, [1], {"a": 1}], ids=repr
)
def test_a_rotation_seed_that_is_not_an_int_in_range_is_a_bad_header(seed):
    assert _reason(_edit_params(EDEN, "rotate", seed=seed)) == RejectReason.BAD_HEADER


@pytest.mark.parametrize(
    "block", [0, -4, 3, 1000, 4096, 1 << 19, 256.0, True, "256", None, [256]], ids=repr
)
def test_a_rotation_block_that_is_not_a_fitting_power_of_two_is_a_bad_header(block):
    """1200 values (sent in blocks of 256): blocks up to 2048, the next power of two, fit the
    header; a bigger one, a non-power and every non-int are refused."""
    assert _reason(_edit_params(EDEN, "rotate", block=block)) == RejectReason.BAD_HEADER


@pytest.mark.parametrize("block", [64, 512, 2048])
def test_another_fitting_block_is_caught_by_the_section_sizes(block):
    assert _reason(_edit_params(EDEN, "rotate", block=block)) == RejectReason.LENGTH_MISMATCH


@pytest.mark.parametrize("rounds", [0, 4, -1, 2.0, True, "2", None], ids=repr)
def test_rotation_rounds_outside_one_to_three_is_a_bad_header(rounds):
    assert _reason(_edit_params(EDEN, "rotate", rounds=rounds)) == RejectReason.BAD_HEADER


@pytest.mark.parametrize("stage", ["rotate", "eden", "sign"])
def test_a_missing_or_extra_param_is_a_bad_header(stage):
    codec = SIGN if stage == "sign" else EDEN
    first = "chunk" if stage == "sign" else ("seed" if stage == "rotate" else "bits")
    assert _reason(_edit_params(codec, stage, extra=1)) == RejectReason.BAD_HEADER
    missing = _edit_params(codec, stage, **{first: _DROP})
    assert _reason(missing) in (RejectReason.BAD_HEADER, RejectReason.BAD_BIT_WIDTH)


@pytest.mark.parametrize("bits", [0, 3, 8, 2.0, True, "2", None, [2]], ids=repr)
def test_an_eden_bit_width_outside_one_two_four_is_refused(bits):
    assert _reason(_edit_params(EDEN, "eden", bits=bits)) == RejectReason.BAD_BIT_WIDTH


@pytest.mark.parametrize("stage", ["eden", "sign"])
@pytest.mark.parametrize("chunk", [0, -1, 2**24 + 1, 512.0, True, "512", None], ids=repr)
def test_a_chunk_that_is_not_an_int_in_range_is_a_bad_header(stage, chunk):
    codec = SIGN if stage == "sign" else EDEN
    assert _reason(_edit_params(codec, stage, chunk=chunk)) == RejectReason.BAD_HEADER


@pytest.mark.parametrize("scale", ["biased", "", 1, True, None, ["mse"], "x" * 10_000], ids=str)
def test_an_eden_scale_kind_that_is_not_unbiased_or_mse_is_a_bad_header(scale):
    assert _reason(_edit_params(EDEN, "eden", scale=scale)) == RejectReason.BAD_HEADER


def test_a_changed_chunk_or_bit_width_is_caught_by_the_section_sizes():
    assert _reason(_edit_params(EDEN, "eden", chunk=128)) == RejectReason.LENGTH_MISMATCH
    assert _reason(_edit_params(EDEN, "eden", bits=4)) == RejectReason.LENGTH_MISMATCH


@pytest.mark.parametrize(
    "order",
    [
        ["select", "rotate", "rotate", "eden"],
        ["select", "eden", "rotate"],
        ["select", "rotate", "topk", "eden"],
        ["select", "rotate"],
        ["select", "eden", "sign"],
        ["rotate", "select", "eden"],
    ],
)
def test_the_new_stages_in_an_impossible_order_are_refused(order):
    payload = _payload(EDEN)
    header = read_header(payload)
    by_name = {s["name"]: s for s in header["stages"]}
    by_name["sign"] = {"name": "sign", "params": {"chunk": 512}}
    by_name["topk"] = {"name": "topk", "params": {"k": 1, "segments": [[0, 1, 1, 150]]}}
    header["stages"] = [by_name[name] for name in order]
    assert _reason(_reframe(payload, json.dumps(header).encode())) == RejectReason.STAGE_ORDER


def _with_scales(codec, values) -> bytes:
    payload = _payload(codec)
    (header_len,) = struct.unpack_from("<I", payload, 6)
    body = bytearray(payload[10 + header_len :])
    raw = np.asarray(values, "<f4").tobytes()
    body[: len(raw)] = raw
    return payload[: 10 + header_len] + bytes(body)


@pytest.mark.parametrize("codec", [EDEN, SIGN], ids=["eden", "sign"])
@pytest.mark.parametrize("scale", [np.nan, np.inf, -np.inf, -1.0, 3e38])
def test_a_nan_infinite_negative_or_overflowing_scale_is_a_bad_scale(codec, scale):
    if codec is SIGN and scale == 3e38:  # 3e38 * 1 is finite: a legal (huge) sign scale
        decoded = decode_update(_with_scales(codec, [scale]), expected=SPECS, expected_round=1)
        assert np.isfinite(decoded.tensors[0]).all()
        return
    assert _reason(_with_scales(codec, [scale])) == RejectReason.BAD_SCALE


def test_a_finite_scale_whose_rotation_back_overflows_is_non_finite():
    assert _reason(_with_scales(EDEN, [1e38, 1e38, 1e38])) == RejectReason.NON_FINITE


def test_a_shared_rotation_round_refuses_a_client_chosen_seed():
    payload = _payload(EDEN)
    seed = read_header(payload)["stages"][1]["params"]["seed"]
    decode_update(payload, expected=SPECS, expected_round=1, rotation_seed=seed)
    assert _reason(payload, rotation_seed=seed + 1) == RejectReason.BAD_HEADER


def test_a_truncated_or_padded_body_is_a_length_mismatch():
    payload = _payload(EDEN)
    assert _reason(payload[:-1]) == RejectReason.LENGTH_MISMATCH
    assert _reason(payload + b"\0") == RejectReason.LENGTH_MISMATCH


@pytest.mark.parametrize("name", ["Rotate", "eden ", "rotate2", "drive"])
def test_an_unknown_stage_name_is_refused(name):
    payload = _with_header(_payload(EDEN), lambda h: h["stages"][1].__setitem__("name", name))
    assert _reason(payload) in (RejectReason.UNKNOWN_STAGE,)


# ----------------------------------------------------------------------------- subsample
SUB = CodecSpec(quant_bits=1, scheme="eden", rotate="client", quant_fraction=0.25, rotate_block=256)
SUB_EF = CodecSpec(
    quant_bits=1,
    scheme="eden",
    rotate="client",
    quant_fraction=0.25,
    rotate_block=256,
    eden_scale="mse",
)


def test_honest_subsampled_payloads_decode():
    for codec in (SUB, SUB_EF):
        header = read_header(_payload(codec))
        params = next(s["params"] for s in header["stages"] if s["name"] == "subsample")
        assert params == {"keep": 64, "scale": "unbiased" if codec is SUB else "none"}
        decode_update(_payload(codec), expected=SPECS, expected_round=1)


@pytest.mark.parametrize("keep", [0, -1, 257, 2**70, 64.0, True, "64", None, [64]], ids=repr)
def test_a_subsample_keep_that_is_not_an_int_up_to_the_block_is_a_bad_header(keep):
    assert _reason(_edit_params(SUB, "subsample", keep=keep)) == RejectReason.BAD_HEADER


@pytest.mark.parametrize("scale", ["mse", "", 1, True, None, ["none"], "x" * 10_000], ids=str)
def test_a_subsample_scale_that_is_not_unbiased_or_none_is_a_bad_header(scale):
    assert _reason(_edit_params(SUB, "subsample", scale=scale)) == RejectReason.BAD_HEADER


@pytest.mark.parametrize("change", [{"extra": 1}, {"keep": _DROP}, {"scale": _DROP}], ids=str)
def test_a_missing_or_extra_subsample_param_is_a_bad_header(change):
    assert _reason(_edit_params(SUB, "subsample", **change)) == RejectReason.BAD_HEADER


def test_another_keep_or_scale_kind_is_caught_by_the_sizes_or_decodes_as_sent():
    assert _reason(_edit_params(SUB, "subsample", keep=32)) == RejectReason.LENGTH_MISMATCH
    flipped = decode_update(
        _edit_params(SUB, "subsample", scale="none"), expected=SPECS, expected_round=1
    )
    honest = decode_update(_payload(SUB), expected=SPECS, expected_round=1)
    np.testing.assert_allclose(4 * flipped.tensors[0], honest.tensors[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "order",
    [
        ["select", "subsample", "eden"],
        ["select", "subsample", "rotate", "eden"],
        ["select", "rotate", "eden", "subsample"],
        ["select", "rotate", "subsample", "subsample", "eden"],
    ],
)
def test_a_subsample_without_the_rotation_right_before_it_is_refused(order):
    payload = _payload(SUB)
    header = read_header(payload)
    by_name = {s["name"]: s for s in header["stages"]}
    header["stages"] = [by_name[name] for name in order]
    assert _reason(_reframe(payload, json.dumps(header).encode())) == RejectReason.STAGE_ORDER


def test_a_finite_scale_that_overflows_times_one_over_p_is_non_finite():
    assert _reason(_with_scales(SUB, [3e38] * 5)) == RejectReason.NON_FINITE
