"""Headers that are valid JSON (or nearly) but hostile: each is one rejection with a reason."""

import json
import struct

import numpy as np
import pytest

from tests.helpers.payloads import reframe as _reframe
from tests.helpers.payloads import with_header as _with_header
from wire import CodecSpec, RejectReason, TensorSpec, UpdateRejected, decode_update, encode_update
from wire.format import HEADER_CACHE, read_header
from wire.header_cache import HeaderCache

SPECS = [TensorSpec("w", (8, 4))]
DELTA = {"w": np.linspace(-1, 1, 32, dtype=np.float32).reshape(8, 4)}


def _payload(codec=None) -> bytes:
    return encode_update(DELTA, server_round=1, codec=codec, rng=np.random.default_rng(0))


def _reason(payload: bytes) -> RejectReason:
    with pytest.raises(UpdateRejected) as err:
        decode_update(payload, expected=SPECS, expected_round=1)
    return err.value.reason


def test_a_header_nesting_past_the_parsers_limit_is_a_bad_header():
    deep = b'{"format":1,"round":1,"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert _reason(_reframe(_payload(), deep)) == RejectReason.BAD_HEADER


def test_an_integer_past_pythons_parsing_limit_is_a_bad_header():
    huge = b'{"format":1,"round":' + b"9" * 5000 + b"}"
    assert _reason(_reframe(_payload(), huge)) == RejectReason.BAD_HEADER


@pytest.mark.parametrize("dtype", [["float32"], {"a": 1}, 4, None])
def test_a_dtype_that_is_not_a_string_is_a_bad_tensor_spec(dtype):
    payload = _with_header(_payload(), lambda h: h["tensors"][0].__setitem__("dtype", dtype))
    assert _reason(payload) == RejectReason.BAD_TENSOR_SPEC


@pytest.mark.parametrize("bits", [4.0, True, "4", [4]])
def test_a_bit_width_that_only_equals_an_int_is_refused(bits):
    payload = _with_header(
        _payload(CodecSpec(quant_bits=4)), lambda h: h["stages"][-1]["params"].update(bits=bits)
    )
    assert _reason(payload) == RejectReason.BAD_BIT_WIDTH


@pytest.mark.parametrize("chunk", [True, 1024.0, "1024"])
def test_a_chunk_that_only_equals_an_int_is_refused(chunk):
    payload = _with_header(
        _payload(CodecSpec(quant_bits=4)), lambda h: h["stages"][-1]["params"].update(chunk=chunk)
    )
    assert _reason(payload) == RejectReason.BAD_HEADER


def test_a_chunk_range_whose_width_overflows_is_a_bad_scale():
    """lo = -2e38 and hi = 2e38 are each finite, but hi - lo is Inf in float32: NaN values."""
    payload = _payload(CodecSpec(quant_bits=4))
    header = read_header(payload)
    (header_len,) = struct.unpack_from("<I", payload, 6)
    body = bytearray(payload[10 + header_len :])
    body[:8] = np.array([-2e38, 2e38], "<f4").tobytes()
    assert _reason(_reframe(payload, json.dumps(header).encode(), bytes(body))) == (
        RejectReason.BAD_SCALE
    )


def test_the_header_cache_is_bounded_by_bytes_and_keeps_only_matching_headers():
    HEADER_CACHE.clear()
    honest = _payload()
    decode_update(honest, expected=SPECS, expected_round=1)
    assert len(HEADER_CACHE) == 1
    # headers that parse but do not match the model are never kept
    for i in range(20):
        other = _with_header(honest, lambda h, i=i: h.__setitem__("junk", "x" * (i + 1)))
        other = _with_header(other, lambda h: h["tensors"][0].__setitem__("shape", [4, 8]))
        with pytest.raises(UpdateRejected):
            decode_update(other, expected=SPECS, expected_round=1)
    assert len(HEADER_CACHE) == 1
    # matching headers made large with junk: never more than the byte bound in all
    cache = HeaderCache(max_text_bytes=200_000, max_entry_bytes=64_000)
    for i in range(64):
        raw = bytes([i]) * 1000
        cache.put(raw, ({"junk": "y"}, (), 30_000))
    assert cache.text_bytes <= 200_000 and len(cache) == 6
    cache.put(b"big", ({}, (), 1 << 20))  # one header over the per-entry bound: not kept
    assert cache.get(b"big") is None
