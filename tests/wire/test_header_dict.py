"""Format version 2: the header deflated with a preset dictionary; version 1 still decodes."""

import json
import struct
import zlib

import numpy as np
import pytest

from wire import (
    CodecSpec,
    MaskSet,
    RejectReason,
    TensorSpec,
    UpdateRejected,
    decode_update,
    encode_update,
)
from wire.format import HEADER_CACHE, read_header
from wire.header_dict import HEADER_ZDICT_V2

# the digits MLP's tensors
SHAPES = {"0.weight": (128, 64), "0.bias": (128,), "2.weight": (10, 128), "2.bias": (10,)}
SPECS = [TensorSpec(name, shape) for name, shape in SHAPES.items()]
CODECS = [
    CodecSpec(),
    CodecSpec(quant_bits=4, topk=0.05),
    CodecSpec(quant_bits=1, scheme="eden", rotate="client"),
    CodecSpec(quant_bits=1, scheme="sign", quant_chunk=1 << 24),
]


def _update(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=shape).astype(np.float32) for name, shape in SHAPES.items()}


def _split(payload: bytes) -> tuple[int, bytes, bytes]:
    _, version, header_len = struct.unpack_from("<4sHI", payload)
    return version, payload[10 : 10 + header_len], payload[10 + header_len :]


def _as_v1(payload: bytes) -> bytes:
    """The same update in format version 1: plain zlib, ``"format": 1``."""
    header = read_header(payload)
    header["format"] = 1
    raw = zlib.compress(json.dumps(header, sort_keys=True, separators=(",", ":")).encode(), 9)
    return struct.pack("<4sHI", b"PLNW", 1, len(raw)) + raw + _split(payload)[2]


def test_a_v2_header_names_its_preset_dictionary():
    payload = encode_update(_update(0), server_round=1)
    version, raw, _ = _split(payload)
    assert version == 2 and read_header(payload)["format"] == 2
    cmf, flg = raw[0], raw[1]
    assert cmf == 0x78 and flg & 0x20  # deflate, FDICT set (RFC 1950)
    assert struct.unpack(">I", raw[2:6])[0] == zlib.adler32(HEADER_ZDICT_V2)


@pytest.mark.parametrize("codec", CODECS, ids=["float32", "top-k 4-bit", "rot eden", "sign"])
def test_v1_payloads_still_decode_and_v2_headers_are_far_smaller(codec):
    payload = encode_update(_update(1), server_round=4, codec=codec, rng=np.random.default_rng(2))
    old = _as_v1(payload)
    new_update = decode_update(payload, expected=SPECS, expected_round=4)
    old_update = decode_update(old, expected=SPECS, expected_round=4)
    for a, b in zip(new_update.tensors, old_update.tensors, strict=True):
        assert a.tobytes() == b.tobytes()
    assert len(_split(payload)[1]) < 0.45 * len(_split(old)[1])  # 242 -> 61 measured (rot eden)


def test_a_pruned_header_shrinks_too():
    masks = MaskSet({"0.weight": np.random.default_rng(3).random((128, 64)) < 0.1})
    codec = CodecSpec(quant_bits=1, scheme="eden", rotate="client", eden_scale="mse")
    payload = encode_update(
        _update(3), server_round=2, codec=codec, masks=masks, rng=np.random.default_rng(4)
    )
    assert len(_split(payload)[1]) < 0.45 * len(_split(_as_v1(payload))[1])
    decode_update(payload, expected=SPECS, masks=masks, expected_round=2)


def _reason(payload: bytes) -> RejectReason:
    with pytest.raises(UpdateRejected) as err:
        decode_update(payload, expected=SPECS, expected_round=1)
    return err.value.reason


def test_a_header_needing_another_dictionary_is_refused():
    payload = encode_update(_update(5), server_round=1)
    _, raw, body = _split(payload)
    text = zlib.decompressobj(zdict=HEADER_ZDICT_V2).decompress(raw)
    other = zlib.compressobj(9, zdict=b'{"format":2,"round":1,"stages":[]} another dictionary')
    wrong = other.compress(text) + other.flush()
    for version, header in [(2, wrong), (1, raw)]:  # v1 has no dictionary at all
        framed = struct.pack("<4sHI", b"PLNW", version, len(header)) + header + body
        assert _reason(framed) is RejectReason.BAD_HEADER


def test_the_header_cache_keeps_versions_apart():
    """A v2 header that the cache holds is still refused under a v1 prefix (no dictionary)."""
    HEADER_CACHE.clear()
    payload = encode_update(_update(6), server_round=1)
    decode_update(payload, expected=SPECS, expected_round=1)
    assert len(HEADER_CACHE) == 1
    _, raw, body = _split(payload)
    as_v1 = struct.pack("<4sHI", b"PLNW", 1, len(raw)) + raw + body
    assert _reason(as_v1) is RejectReason.BAD_HEADER
