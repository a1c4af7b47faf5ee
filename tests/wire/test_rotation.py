"""The randomized Hadamard rotation: golden values, the butterfly reference, exact inversion."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire import CodecSpec, TensorSpec, decode_update, encode_update
from wire.format import read_header
from wire.rotation import (
    ROTATE,
    block_for,
    factors,
    fwht,
    fwht_reference,
    hadamard,
    padded_length,
    random_signs,
    rotate,
    shared_rotation_seed,
    unrotate,
)
from wire.stage_api import DecodeContext


def test_golden_four_point_rotation_by_hand():
    """x = (1, 2, 3, 4), signs of seed 0 = d: one pass is H (d * x) / 2 with H the 4x4
    Sylvester matrix, written out row by row; two passes use the next four signs as well."""
    d = random_signs(0, 8)
    assert set(d.tolist()) <= {-1.0, 1.0}

    def one_pass(v, signs):
        a, b, c, e = signs * v
        return np.array([a + b + c + e, a - b + c - e, a + b - c - e, a - b - c + e]) / 2

    x = np.array([1, 2, 3, 4], np.float32)
    np.testing.assert_allclose(rotate(x, 0, 4, rounds=1), one_pass(x, d[:4]), atol=1e-6)
    twice = one_pass(one_pass(x, d[:4]), d[4:])
    np.testing.assert_allclose(rotate(x, 0, 4), twice, atol=1e-6)
    np.testing.assert_array_equal(
        hadamard(4), [[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]
    )


def test_golden_signs_are_the_seeds_bytes_least_significant_bit_first():
    raw = np.random.default_rng(5).bytes(2)
    bits = [(raw[i // 8] >> (i % 8)) & 1 for i in range(13)]
    np.testing.assert_array_equal(random_signs(5, 13), [-1.0 if b else 1.0 for b in bits])


@pytest.mark.parametrize("block", [1, 2, 4, 32, 64, 128, 1024, 1 << 13, 1 << 18])
def test_factored_transform_is_the_butterfly_transform(block):
    assert np.prod(factors(block)) == block and max(factors(block)) <= 64
    rows = np.random.default_rng(block).normal(size=(2, block)).astype(np.float32)
    ref = fwht_reference(rows)
    np.testing.assert_allclose(fwht(rows), ref, atol=3e-6 * np.sqrt(block) * np.abs(ref).max())


def test_hadamard_squares_to_size_times_identity():
    for size in (2, 8, 64):
        h = hadamard(size).astype(np.int64)
        np.testing.assert_array_equal(h @ h, size * np.eye(size, dtype=np.int64))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 5000),
    log_block=st.integers(1, 12),
    seed=st.integers(0, 2**63 - 1),
    scale=st.sampled_from([1e-30, 1e-3, 1.0, 1e6]),
    rounds=st.integers(1, 3),
)
def test_rotation_is_orthogonal_and_inverts_within_float_error(n, log_block, seed, scale, rounds):
    x = (np.random.default_rng(n).normal(size=n) * scale).astype(np.float32)
    block = block_for(n, 1 << log_block)
    y = rotate(x, seed, block, rounds)
    assert y.size == padded_length(n, block) and y.size < 2 * max(n, 1) + block
    np.testing.assert_allclose(np.linalg.norm(y), np.linalg.norm(x), rtol=1e-5)
    back = unrotate(y, seed, block, n, rounds)
    np.testing.assert_allclose(back, x, atol=1e-5 * max(float(np.abs(x).max(initial=0)), 1e-38))


@pytest.mark.parametrize(
    "count,block,want",
    [
        (0, 1024, 1),
        (1, 1024, 1),
        (40, 1024, 64),
        (610, 1024, 128),
        (9610, 1024, 1024),
        (2100, 1024, 256),
        (22618, 1024, 1024),
        (5000, 4096, 1024),
        (100, 64, 64),
    ],
)
def test_block_for_keeps_padding_within_an_eighth(count, block, want):
    assert block_for(count, block) == want
    if want >= 64:
        assert padded_length(count, want) <= count + max(count // 8, want - 1)


def test_rotation_spreads_a_spike_evenly():
    x = np.zeros(1000, np.float32)
    x[17] = 10.0
    y = rotate(x, 3, 1024, rounds=1)
    np.testing.assert_allclose(np.abs(y), 10.0 / 32, rtol=1e-6)  # every coordinate: 10/sqrt(B)


def test_rotate_stage_costs_no_body_bytes_and_round_trips_float32():
    update = {"w": np.random.default_rng(0).normal(size=(30, 70)).astype(np.float32)}
    rng = np.random.default_rng(1)
    payload = encode_update(update, server_round=2, codec=CodecSpec(rotate="client"), rng=rng)
    header = read_header(payload)
    names = [s["name"] for s in header["stages"]]
    assert names == ["select", "rotate", "float32"]
    ctx = DecodeContext([TensorSpec("w", (30, 70))], None, [2100])
    assert ROTATE.layout(header["stages"][1]["params"], 2100, ctx) == (2304, [])
    assert header["stages"][1]["params"]["block"] == 256  # 3 blocks of 1024 would pad 46%
    assert header["sections"] == [["values", 4 * 2304]]  # 2100 values padded to 9 blocks
    decoded = decode_update(payload, expected=[TensorSpec("w", (30, 70))], expected_round=2)
    np.testing.assert_allclose(decoded.tensors[0], update["w"], atol=1e-5)


def test_a_shared_rotation_uses_the_rounds_seed_and_the_server_checks_it():
    seed = shared_rotation_seed(7, 3)
    assert seed == shared_rotation_seed(7, 3) != shared_rotation_seed(7, 4)
    codec = CodecSpec(quant_bits=1, scheme="eden", rotate="shared", rotate_seed=seed)
    update = {"w": np.ones((4, 5), np.float32)}
    a = encode_update(update, server_round=3, codec=codec, rng=np.random.default_rng(1))
    b = encode_update(update, server_round=3, codec=codec, rng=np.random.default_rng(2))
    assert read_header(a)["stages"][1]["params"]["seed"] == seed and a == b
    decode_update(a, rotation_seed=seed)
    other = encode_update(
        update,
        server_round=3,
        codec=CodecSpec(quant_bits=1, scheme="eden", rotate="client"),
        rng=np.random.default_rng(1),
    )
    with pytest.raises(ValueError, match="rotation for this node is .*shared"):
        decode_update(other, rotation_seed=seed)
