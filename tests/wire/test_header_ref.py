"""Header references (wire format v3): a header the server announced travels as its digest.

Round trips (a reference decodes to exactly what the full header decodes to), the frame's
layout, the per-client rotation seed both sides derive, and every hostile reference as one
rejection with a reason.
"""

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire import CodecSpec, MaskSet, RejectReason, TensorSpec, UpdateRejected, decode_update
from wire import encode_update as _encode
from wire.format import HEADER_CACHE, read_header
from wire.header_ref import REF_BYTES, RoundHeaders
from wire.rotation import client_rotation_seed
from wire.rows import encode_rows

SPECS = (TensorSpec("w", (60, 10)), TensorSpec("b", (10,)))
EDEN_HALF = CodecSpec(
    quant_bits=1, scheme="eden", rotate="client", rotate_seed=123, quant_fraction=0.5
)
CODECS = {
    "float32": CodecSpec(),
    "4-bit": CodecSpec(quant_bits=4, stochastic=False),
    "eden-1-client-p0.5": EDEN_HALF,
    "eden-2-shared": CodecSpec(quant_bits=2, scheme="eden", rotate="shared", rotate_seed=9),
    "sign": CodecSpec(quant_bits=1, scheme="sign", quant_chunk=1 << 24),
}


def _delta(seed=0):
    rng = np.random.default_rng(seed)
    return {s.name: rng.normal(size=s.shape).astype(np.float32) for s in SPECS}


def _headers(codec=EDEN_HALF, server_round=3, masks=None):
    return RoundHeaders(SPECS, server_round, codec, masks)


def _pair(codec=EDEN_HALF, node=77, server_round=3, masks=None, seed=0):
    """(full-header payload, reference payload) of one client's update."""
    headers = _headers(codec, server_round, masks)
    delta = _delta(seed)
    if masks is not None:
        delta = masks.apply(delta)
    args = dict(server_round=server_round, codec=codec, masks=masks, node_id=node)
    full = _encode(delta, rng=np.random.default_rng(seed), **args)
    ref = _encode(delta, rng=np.random.default_rng(seed), reference=headers, **args)
    return full, ref, headers


def _decode(payload, headers=None, node=77, server_round=3, masks=None):
    seed = None if headers is None else headers.rotation_seed(node)
    return decode_update(
        payload,
        expected=SPECS,
        masks=masks,
        expected_round=server_round,
        rotation_seed=seed,
        headers=headers,
        node_id=node,
    )


def _reason(payload, **kwargs):
    with pytest.raises(UpdateRejected) as err:
        _decode(payload, **kwargs)
    return err.value.reason, err.value.detail


@settings(deadline=None, max_examples=30)
@given(
    st.sampled_from(sorted(CODECS)),
    st.integers(0, 2**63 - 1),
    st.integers(1, 10_000),
    st.booleans(),
    st.integers(0, 100),
)
def test_a_reference_decodes_to_what_the_full_header_decodes_to(name, node, rnd, pruned, seed):
    codec = CODECS[name]
    masks = MaskSet({"w": np.arange(600).reshape(60, 10) % 3 > 0}) if pruned else None
    full, ref, headers = _pair(codec, node, rnd, masks, seed)
    a = _decode(full, headers, node, rnd, masks)
    b = _decode(ref, headers, node, rnd, masks)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a.tensors, b.tensors, strict=True))
    assert b.header_bytes == 10 + REF_BYTES and b.total_bytes == len(ref)
    assert len(ref) - b.header_bytes == len(full) - a.header_bytes  # the same body
    assert ref[10 + REF_BYTES :] == full[a.header_bytes :]


def test_the_reference_frame_layout_and_sizes():
    full, ref, headers = _pair()
    assert ref[:10] == b"PLNW" + struct.pack("<HI", 3, REF_BYTES)
    # a per-client rotation: the node's own header's digest (the announcement is the round's)
    assert ref[10:14] == headers.reference_for(77) != headers.digest
    assert len(headers.digest) == REF_BYTES
    assert read_header(ref) == {"format": 3, "reference": headers.reference_for(77).hex()}
    shared = _pair(CODECS["eden-2-shared"])
    assert shared[1][10:14] == shared[2].digest == shared[2].reference_for(77)
    # 610 values, 1-bit EDEN on half of each rotated block: 20 B of scales + 40 B of codes
    assert (len(full), len(ref)) == (175, 74)
    float32 = _pair(CODECS["float32"])
    assert len(float32[1]) == 14 + 2440


def test_a_per_client_rotation_seed_is_derived_from_the_node_and_differs_between_nodes():
    full, _, headers = _pair(node=5)
    seed = read_header(full)["stages"][1]["params"]["seed"]
    assert seed == client_rotation_seed(123, 5) == headers.rotation_seed(5)
    assert len({client_rotation_seed(123, n) for n in range(200)}) == 200
    assert client_rotation_seed(124, 5) != seed
    # one announcement for every client of the round: the digest does not depend on the node
    assert _pair(node=6)[2].digest == headers.digest


def test_the_digest_covers_the_round_codec_tensors_and_mask():
    base = _headers().digest
    masks = MaskSet({"w": np.arange(600).reshape(60, 10) % 2 > 0})
    others = [
        _headers(server_round=4),
        _headers(CodecSpec(quant_bits=1, scheme="eden", rotate="client", rotate_seed=123)),
        _headers(masks=masks),
        RoundHeaders((TensorSpec("w", (60, 10)),), 3, EDEN_HALF, None),
    ]
    assert all(h.digest != base for h in others)


def test_a_client_that_does_not_match_sends_its_full_header():
    delta = _delta()
    # top-k's header depends on the values: nothing is announced, and nothing referenced
    topk = CodecSpec(quant_bits=4, topk=0.1)
    assert _headers(topk).digest is None
    payload = _encode(delta, server_round=3, codec=topk, rng=np.random.default_rng(0))
    assert read_header(payload)["format"] == 2
    # the server announced another round's headers: the client's own header differs
    stale = _encode(
        delta, server_round=3, codec=EDEN_HALF, node_id=1, reference=_headers(server_round=2)
    )
    assert read_header(stale)["format"] == 2
    # a per-client rotation drawn from the generator (no node id) cannot be referenced
    drawn = _encode(
        delta, server_round=3, codec=EDEN_HALF, rng=np.random.default_rng(0), reference=_headers()
    )
    assert read_header(drawn)["format"] == 2


def test_the_batched_rows_reference_the_same_header_byte_for_byte():
    full, ref, headers = _pair(node=77)
    body = ref[14:]
    sections = {"scales": np.frombuffer(body[:20], np.uint8)[None], "codes": None}
    sections["codes"] = np.frombuffer(body[20:], np.uint8)[None]
    rows = encode_rows(
        sections,
        SPECS,
        server_round=3,
        codec=EDEN_HALF,
        rotation_seeds=[client_rotation_seed(123, 77)],
        reference=headers,
    )
    assert rows == [ref]
    unannounced = encode_rows(
        sections, SPECS, server_round=3, codec=EDEN_HALF, rotation_seeds=[headers.rotation_seed(77)]
    )
    assert unannounced == [full]


def _with_reference(payload, raw):
    """``payload``'s body behind a v3 frame holding ``raw``."""
    return b"PLNW" + struct.pack("<HI", 3, len(raw)) + raw + payload[10 + REF_BYTES :]


def test_hostile_references_are_rejections_with_a_reason():
    _, ref, headers = _pair()
    digest = headers.digest
    flipped = bytes([digest[0] ^ 1]) + digest[1:]
    deflated = zlib.compress(b'{"format":2}')
    cases = {
        "no announcement": (ref, {"headers": None}, "announced none"),
        "top-k round": (ref, {"headers": _headers(CodecSpec(quant_bits=4, topk=0.1))}, "none"),
        "unknown": (_with_reference(ref, flipped), {}, "is not this round's"),
        "another round": (ref, {"headers": _headers(server_round=4), "server_round": 4}, "not"),
        "short": (_with_reference(ref, digest[:3]), {}, "3 bytes"),
        "long": (_with_reference(ref, digest + b"\0"), {}, "5 bytes"),
        "a full header in v3": (_with_reference(ref, deflated), {}, "bytes, not 4"),
        "no node id": (ref, {"node": None}, "needs the node id"),
    }
    for name, (payload, kwargs, why) in cases.items():
        kwargs = {"headers": headers, **kwargs}
        reason, detail = _reason(payload, **kwargs)
        assert reason == RejectReason.BAD_HEADER and why in detail, name


def test_truncated_or_padded_reference_payloads_are_rejected():
    _, ref, headers = _pair()
    assert _reason(ref[:12], headers=headers)[0] == RejectReason.TOO_SHORT
    assert _reason(ref[:-1], headers=headers)[0] == RejectReason.LENGTH_MISMATCH
    assert _reason(ref + b"\0", headers=headers)[0] == RejectReason.LENGTH_MISMATCH
    assert _reason(ref[:14], headers=headers)[0] == RejectReason.LENGTH_MISMATCH


def test_a_full_header_or_reference_with_another_nodes_rotation_seed_is_refused():
    full, ref, headers = _pair(node=5)
    reason, detail = _reason(full, headers=headers, node=6)
    assert reason == RejectReason.BAD_HEADER and "rotated with seed" in detail
    # a reference made for node 5's rotation, received from node 6: not decoded with 6's seed
    reason, detail = _reason(ref, headers=headers, node=6)
    assert reason == RejectReason.BAD_HEADER and "for this node" in detail
    drawn = _encode(_delta(), server_round=3, codec=EDEN_HALF, rng=np.random.default_rng(0))
    assert _reason(drawn, headers=headers, node=5)[0] == RejectReason.BAD_HEADER


def test_references_do_not_enter_the_parsed_header_cache():
    HEADER_CACHE.clear()
    _, ref, headers = _pair()
    _decode(ref, headers)
    assert len(HEADER_CACHE) == 0
