"""Client-side DP mechanisms: clipping, conditional rounding, the wrap bound and the distributed
discrete Gaussian chain client -> modular sum -> server. Seeded; tolerances stated per test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wire.dp import (
    DdpSpec,
    choose_scale,
    clip_l2,
    conditional_round,
    ddp_decode_sum,
    ddp_encode,
    gaussian_noise,
    l2_norm,
    modular_sum,
    rounded_l2_bound,
    wrap_probability,
)
from wire.rotation import block_for, rotate


def test_clip_l2():
    v = np.array([3.0, 4.0], dtype=np.float32)
    clipped, norm = clip_l2(v, 1.0)
    assert norm == 5.0 and np.allclose(clipped, [0.6, 0.8]) and clipped.dtype == np.float32
    same, _ = clip_l2(v, 10.0)
    assert np.array_equal(same, v)
    for bad in (np.array([np.nan]), np.array([np.inf])):
        with pytest.raises(ValueError):
            clip_l2(bad, 1.0)
    for clip in (0.0, -1.0, float("nan"), "1"):
        with pytest.raises(ValueError):
            clip_l2(v, clip)


def test_gaussian_noise_is_seeded():
    a = gaussian_noise(np.random.default_rng(1), 2.0, 10_000)
    assert np.array_equal(a, gaussian_noise(np.random.default_rng(1), 2.0, 10_000))
    assert abs(a.std() - 2.0) < 5 * 2.0 / math.sqrt(2 * 10_000)
    with pytest.raises(ValueError):
        gaussian_noise(np.random.default_rng(1), float("nan"), 3)


def test_conditional_rounding_respects_the_bound_and_is_nearly_unbiased():
    rng = np.random.default_rng(2)
    d, c = 256, 20.0
    x = rng.normal(size=d)
    x *= c / np.linalg.norm(x)
    bound = rounded_l2_bound(c, d)
    total = np.zeros(d)
    trials = 2000
    for _ in range(trials):
        r, tries = conditional_round(rng, x, bound)
        assert r.dtype == np.int64 and int(r @ r) <= bound * bound and tries >= 1
        total += r
    # rounding noise per coordinate <= 1/2 stddev: the mean is within 5 * 0.5 / sqrt(trials)
    # (conditioning on the norm biases it by far less than that here)
    assert np.max(np.abs(total / trials - x)) < 5 * 0.5 / math.sqrt(trials)


def test_plain_rounding_is_unbiased():
    rng = np.random.default_rng(3)
    x = np.full(50_000, 0.3)
    r, tries = conditional_round(rng, x, math.inf)
    assert tries == 1 and abs(r.mean() - 0.3) < 5 * math.sqrt(0.21 / 50_000)


def test_l2_norm_is_the_float64_norm():
    rng = np.random.default_rng(5)
    for x in (rng.normal(size=100_003).astype(np.float32), rng.normal(size=(7, 9)) * 1e150):
        assert math.isclose(l2_norm(x), float(np.linalg.norm(x.astype(np.float64))), rel_tol=1e-12)
    assert l2_norm(np.zeros(0)) == 0.0


def test_rounding_of_values_whose_squares_could_overflow_int64():
    """One coordinate near 2^31 among many: the int64 sum of squares is checked in float first."""
    x = np.zeros(64)
    x[0], x[1:] = 2.0e9 + 0.5, 0.3
    bound = float(np.linalg.norm(x)) + 2
    r, _ = conditional_round(np.random.default_rng(6), x, bound)
    assert r[0] in (2_000_000_000, 2_000_000_001) and int(r @ r) <= bound * bound


def test_rounding_refuses_an_unclipped_vector():
    with pytest.raises(ValueError, match="not clipped"):
        conditional_round(np.random.default_rng(4), np.full(16, 10.0), 1.0)


def spec_for(n, bits, d, clip=1.0, z=1.0, seed=7, wrap_bound=1e-6):
    local_sd = z * clip / math.sqrt(n)  # n shares sum to the central noise z * clip
    probe = DdpSpec(bits=bits, clip=clip, scale=1.0, local_variance=1.0, seed=seed)
    dim, block = probe.rotated_length(d), block_for(d, probe.block)
    scale = choose_scale(
        bits=bits,
        clients=n,
        clip=clip,
        dim=dim,
        block=block,
        local_stddev=local_sd,
        wrap_bound=wrap_bound,
    )
    spec = DdpSpec(
        bits=bits, clip=clip, scale=scale, local_variance=(local_sd * scale) ** 2, seed=seed
    )
    return spec, dim


@pytest.mark.parametrize(("n", "bits"), [(20, 16), (20, 12), (200, 16)])
def test_chosen_scale_meets_the_wrap_bound(n, bits):
    spec, dim = spec_for(n, bits, 3000)
    p = wrap_probability(
        bits=bits,
        clients=n,
        scaled_clip=spec.clip * spec.scale,
        dim=dim,
        block=block_for(3000, spec.block),
        local_variance=spec.local_variance,
    )
    assert p <= 1e-6 * (1 + 1e-9)
    with pytest.raises(ValueError, match="raise the bits"):
        choose_scale(bits=4, clients=n, clip=1.0, dim=dim, block=dim, local_stddev=0.1)


def test_an_update_whose_norm_sits_in_one_rotation_block_does_not_wrap():
    """The rotation mixes block by block: an update whose whole norm lies in one of 16 blocks
    keeps it there, so a coordinate's variance proxy is c^2 / block, not c^2 / dim. 100 clients
    sending that update: the noiseless sum stays inside the modulus (it wrapped 97 coordinates
    when the scale was chosen with c^2 / dim)."""
    n, bits, clip, values = 100, 16, 1.0, 16 * 4096
    spec, dim = spec_for(n, bits, values, clip=clip, z=0.3)
    update = np.zeros(values, np.float32)
    update[:4096] = np.random.default_rng(0).normal(size=4096)
    update *= clip / np.linalg.norm(update)
    rotated = rotate(update, spec.seed, block_for(values, spec.block)).astype(np.float64)
    assert np.abs(n * rotated * spec.scale).max() < 2 ** (bits - 1)


def test_wraps_happen_no_more_often_than_the_bound():
    # a deliberately loose bound (0.3) on a small problem: the same draws summed at 16 and at 32
    # bits give the true integer sum, so a wrap is seen directly; 200 rounds, 5 standard errors
    n, d, bits, bound = 5, 64, 16, 0.3
    spec, dim = spec_for(n, bits, d, wrap_bound=bound)
    wide = DdpSpec(
        bits=32, clip=spec.clip, scale=spec.scale, local_variance=spec.local_variance, seed=7
    )
    rng = np.random.default_rng(5)
    wraps = 0
    rounds = 200
    for r in range(rounds):
        xs = [rng.normal(size=d) for _ in range(n)]
        seeds = [1000 * r + i for i in range(n)]
        true = modular_sum(
            [ddp_encode(x, wide, np.random.default_rng(s)) for x, s in zip(xs, seeds, strict=True)],
            32,
        ).astype(np.int64)
        true = np.where(true >= 1 << 31, true - (1 << 32), true)
        wraps += bool(np.any((true < -(1 << (bits - 1))) | (true >= 1 << (bits - 1))))
    assert wraps / rounds <= bound + 5 * math.sqrt(bound * (1 - bound) / rounds)


@pytest.mark.parametrize(("n", "bits"), [(20, 16), (50, 12)])
def test_round_trip_client_sum_server(n, bits):
    d = 1000
    spec, dim = spec_for(n, bits, d)
    rng = np.random.default_rng(6)
    xs = [rng.normal(size=d).astype(np.float32) * 0.05 for _ in range(n)]  # norm ~1.6: clipped
    encoded = [ddp_encode(x, spec, rng) for x in xs]
    assert all(e.dtype == np.uint64 and e.size == dim and e.max() < spec.modulus for e in encoded)
    decoded = ddp_decode_sum(modular_sum(encoded, bits), spec, d)
    truth = np.sum([clip_l2(x, spec.clip)[0] for x in xs], axis=0)
    err = decoded - truth
    # noise: n shares of local variance + rounding (<= 1/4 each) in integer units, / scale
    expected = math.sqrt(n * (spec.local_variance + 0.25)) / spec.scale
    assert decoded.shape == (d,) and decoded.dtype == np.float32
    assert abs(err.mean()) < 5 * expected / math.sqrt(d)
    assert 0.9 * math.sqrt(n * spec.local_variance) / spec.scale < err.std() < 1.1 * expected


def test_dropouts_leave_the_survivors_sum_and_their_noise():
    n, d, bits = 20, 500, 16
    spec, _ = spec_for(n, bits, d)
    rng = np.random.default_rng(8)
    xs = [rng.normal(size=d).astype(np.float32) * 0.05 for _ in range(n)]
    encoded = [ddp_encode(x, spec, rng) for x in xs]
    survivors = list(range(0, n, 2))
    decoded = ddp_decode_sum(modular_sum([encoded[i] for i in survivors], bits), spec, d)
    truth = np.sum([clip_l2(xs[i], spec.clip)[0] for i in survivors], axis=0)
    expected = math.sqrt(len(survivors) * (spec.local_variance + 0.25)) / spec.scale
    assert (decoded - truth).std() < 1.1 * expected  # half the shares: sqrt(1/2) the noise


def test_wrong_length_and_hostile_specs():
    spec, dim = spec_for(10, 16, 300)
    with pytest.raises(ValueError, match="does not decode"):
        ddp_decode_sum(np.zeros(dim + 1, dtype=np.uint64), spec, 300)
    base = dict(bits=16, clip=1.0, scale=10.0, local_variance=4.0, seed=1)
    for bad in (
        {"bits": 1},
        {"bits": 33},
        {"bits": True},
        {"clip": float("nan")},
        {"scale": 0.0},
        {"local_variance": float("inf")},
        {"local_variance": 1e12},
    ):
        with pytest.raises(ValueError):
            DdpSpec(**(base | bad))
