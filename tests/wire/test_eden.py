"""EDEN/DRIVE and EF-signSGD: centroids, golden values, error, unbiasedness, error feedback."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire import CodecSpec, TensorSpec, decode_update, encode_update
from wire.eden import (
    CENTROIDS,
    eden_dequantize,
    eden_quantize,
    sign_dequantize,
    sign_quantize,
)
from wire.format import read_header
from wire.rotation import rotate, unrotate
from wire.sparsify import topk_indices


def _lloyd_max(levels: int, iterations: int = 3000) -> list[float]:
    pdf = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    c = [-2 + 4 * (i + 0.5) / levels for i in range(levels)]
    for _ in range(iterations):
        b = [-math.inf] + [(c[i] + c[i + 1]) / 2 for i in range(levels - 1)] + [math.inf]
        c = [(pdf(b[i]) - pdf(b[i + 1])) / (cdf(b[i + 1]) - cdf(b[i])) for i in range(levels)]
    return c


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_centroids_are_the_lloyd_max_quantizer_of_a_standard_normal(bits):
    np.testing.assert_allclose(CENTROIDS[bits], _lloyd_max(1 << bits)[1 << (bits - 1) :], atol=1e-5)


def test_golden_one_bit_drive_by_hand():
    """x = (3, -1, 0, -2) as one chunk: signs (+, -, +, -), ||x||^2 = 14, ||x||_1 = 6.
    Unbiased: x_hat = (14/6) sign; least-squares: (6/4) sign; EF-signSGD: mean |x| = 1.5."""
    x = np.array([3, -1, 0, -2], np.float32)
    c = CENTROIDS[1][0]
    codes, scales = eden_quantize(x, 1, 4, "unbiased")
    np.testing.assert_array_equal(codes, [1, 0, 1, 0])
    np.testing.assert_allclose(scales * c, [14 / 6], rtol=1e-6)
    np.testing.assert_allclose(
        eden_dequantize(codes, scales, 1, 4), [14 / 6, -14 / 6] * 2, rtol=1e-6
    )
    _, mse = eden_quantize(x, 1, 4, "mse")
    np.testing.assert_allclose(mse * c, [1.5], rtol=1e-6)
    sign_codes, sign_scales = sign_quantize(x, 4)
    np.testing.assert_array_equal(sign_codes, [1, 0, 1, 0])
    np.testing.assert_allclose(sign_dequantize(sign_codes, sign_scales, 4), [1.5, -1.5] * 2)


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 3000),
    bits=st.sampled_from([1, 2, 4]),
    chunk=st.sampled_from([1, 7, 256, 1024, 1 << 24]),
    scale=st.sampled_from(["unbiased", "mse"]),
    magnitude=st.sampled_from([1e-20, 1.0, 1e10]),
)
def test_eden_invariants(n, bits, chunk, scale, magnitude):
    """Codes fit in ``bits``; a chunk's estimate keeps <x_hat, x> = ||x||^2 (unbiased) or is the
    least-squares fit of x on the chosen centroids (mse: <x - x_hat, x_hat> = 0)."""
    x = (np.random.default_rng(n).normal(size=n) * magnitude).astype(np.float32)
    codes, scales = eden_quantize(x, bits, chunk, scale)
    assert codes.max() < (1 << bits) and scales.size == -(-n // chunk) and (scales >= 0).all()
    x_hat = eden_dequantize(codes, scales, bits, chunk).astype(np.float64)
    c = max(1, min(chunk, n))
    for start in range(0, n, c):
        xs, hs = x[start : start + c].astype(np.float64), x_hat[start : start + c]
        if scale == "unbiased":
            np.testing.assert_allclose(hs @ xs, xs @ xs, rtol=1e-5)
        else:
            assert abs((xs - hs) @ hs) <= 1e-5 * (xs @ xs)


@pytest.mark.parametrize("bits,bound", [(1, 0.60), (2, 0.16), (4, 0.012)])
def test_rotated_eden_error_is_the_papers(bits, bound):
    """Normalized error of one rotated, unbiased EDEN estimate (1 bit: pi/2 - 1 = 0.571)."""
    x = np.random.default_rng(0).lognormal(size=20000).astype(np.float32)  # skewed, positive
    codec = CodecSpec(quant_bits=bits, scheme="eden", rotate="client")
    payload = encode_update({"x": x}, server_round=1, codec=codec, rng=np.random.default_rng(1))
    x_hat = decode_update(payload).tensors[0]
    nmse = np.sum((x_hat - x) ** 2) / np.sum(x**2)
    assert nmse < bound
    plain = CodecSpec(quant_bits=bits, quant_chunk=1024)  # (min, max) stochastic: far worse
    p = encode_update({"x": x}, server_round=1, codec=plain, rng=np.random.default_rng(1))
    assert np.sum((decode_update(p).tensors[0] - x) ** 2) / np.sum(x**2) > nmse


def test_rotated_one_bit_eden_is_unbiased_over_rotations():
    """Monte Carlo over 1000 client rotations of a spiky vector: the mean estimate approaches x
    (the error of the mean is ~ sqrt(0.57/1000) = 0.024 of ||x||), while the least-squares
    scale stays biased (shrunk by ~2/pi); one H D pass alone leaves a bias (wire.rotation)."""
    x = np.random.default_rng(3).normal(size=300).astype(np.float32)
    x[:5] *= 20  # a few large coordinates
    x_norm = np.linalg.norm(x)
    means = {}
    for scale in ("unbiased", "mse"):
        codec = CodecSpec(quant_bits=1, scheme="eden", eden_scale=scale, rotate="client")
        rng = np.random.default_rng(11)
        estimates = [
            decode_update(encode_update({"x": x}, server_round=1, codec=codec, rng=rng)).tensors[0]
            for _ in range(1000)
        ]
        means[scale] = np.mean(estimates, axis=0)
    assert np.linalg.norm(means["unbiased"] - x) < 0.04 * x_norm
    assert np.linalg.norm(means["mse"] - x) > 0.25 * x_norm
    one_pass = np.zeros(300)
    for t in range(1000):
        y = rotate(x, t, 512, rounds=1)
        codes, scales = eden_quantize(y, 1, 1024, "unbiased")
        one_pass += unrotate(eden_dequantize(codes, scales, 1, 1024), t, 512, 300, rounds=1)
    assert np.linalg.norm(one_pass / 1000 - x) > 0.1 * x_norm


@pytest.mark.parametrize(
    "codec",
    [
        CodecSpec(quant_bits=1, scheme="sign", quant_chunk=1 << 24),
        CodecSpec(quant_bits=1, scheme="eden", eden_scale="mse", rotate="client"),
    ],
    ids=["ef-signsgd", "rotated-1-bit-mse"],
)
def test_error_feedback_makes_the_running_sum_of_sent_updates_track_the_true_sum(codec):
    """EF: sum of decoded payloads over T rounds = sum of deltas - the last residual, so the
    gap stays bounded while T grows (Karimireddy et al. 2019)."""
    rng = np.random.default_rng(0)
    residual = np.zeros(500, np.float32)
    true_sum, sent_sum = np.zeros(500), np.zeros(500)
    for t in range(60):
        delta = rng.normal(size=500).astype(np.float32) * 0.1 + 0.05
        target = delta + residual
        p = encode_update({"d": target}, server_round=t + 1, codec=codec, rng=rng)
        sent = decode_update(p).tensors[0]
        residual = target - sent
        true_sum += delta
        sent_sum += sent
    np.testing.assert_allclose(sent_sum, true_sum - residual, atol=1e-3)
    assert np.linalg.norm(residual) < 0.2 * np.linalg.norm(true_sum)


def test_eden_composes_with_top_k_and_a_pruning_mask():
    from wire import MaskSet

    rng = np.random.default_rng(0)
    update = {"w": rng.normal(size=(40, 50)).astype(np.float32), "b": rng.normal(size=50)}
    update["b"] = update["b"].astype(np.float32)
    masks = MaskSet({"w": rng.random((40, 50)) > 0.7})
    codec = CodecSpec(quant_bits=1, scheme="eden", rotate="client", topk=0.1)
    payload = encode_update(update, server_round=1, codec=codec, masks=masks, rng=rng)
    header = read_header(payload)
    assert [s["name"] for s in header["stages"]] == ["select", "topk", "rotate", "eden"]
    specs = [TensorSpec("w", (40, 50)), TensorSpec("b", (50,))]
    decoded = decode_update(payload, expected=specs, masks=masks)
    w, b = decoded.tensors
    assert not w[~masks.masks["w"]].any()  # pruned coordinates stay zero
    flat = np.concatenate([update["w"][masks.masks["w"]], update["b"]])
    chosen = topk_indices(flat, header["stages"][1]["params"]["k"])
    sent = np.concatenate([w[masks.masks["w"]], b])
    assert not np.delete(sent, chosen).any()  # only the top-k coordinates carry values
    assert np.corrcoef(sent[chosen], flat[chosen])[0, 1] > 0.5
    assert len(payload) < 0.05 * 4 * (2000 + 50)
