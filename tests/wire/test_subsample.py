"""EDEN's fractional bits (wire.subsample): golden subset, unbiasedness, EF residual, sizes."""

import numpy as np
import pytest

from server import RunSettings
from server.schema import SettingError
from wire import CodecSpec, TensorSpec, decode_update, encode_update
from wire.codec import CodecConfigError
from wire.format import read_header
from wire.rotation import rotate
from wire.subsample import expand, keep_of, positions, subsample, subset_seed

SPECS = [TensorSpec("w", (300,))]


def _codec(fraction: float, scale: str = "unbiased") -> CodecSpec:
    return CodecSpec(
        quant_bits=1,
        scheme="eden",
        rotate="client",
        rotate_block=64,
        quant_fraction=fraction,
        eden_scale=scale,
    )


def test_golden_subset_and_seed():
    """Pinned draws: the wire format depends on them (a change needs a new format version)."""
    assert positions(7, 16, 4).tolist() == [3, 6, 8, 10]
    assert subset_seed(0) == 735527434
    assert subset_seed(2**63 - 1) == 1263786333
    assert [keep_of(f, 1024) for f in (1e-9, 0.18, 0.25, 0.5, 1.0)] == [1, 185, 256, 512, 1024]
    values = np.arange(32, dtype=np.float32)  # two blocks of 16
    sent = subsample(values, 7, 16, 4)
    assert sent.tolist() == [3, 6, 8, 10, 19, 22, 24, 26]
    back = expand(sent, 7, 16, 4, 32, unbiased=True)
    assert back[[3, 19]].tolist() == [12.0, 76.0] and np.count_nonzero(back) == 8


def test_rotated_subsampled_eden_is_unbiased_and_the_none_scale_is_not():
    """The mean of many clients' decodes of x approaches x with the 1/p scale (EDEN, Sec. b < 1)
    and is about p x without it. Per decode, 1 bit at p = 1/2 has normalized variance near
    (pi/2)/p - 1 = 2.1, so the mean of 100 misses by ~0.15 ||x||; without 1/p, by ~0.7."""
    x = np.random.default_rng(0).normal(size=300).astype(np.float32)
    x[:5] *= 20  # a few spikes: the rotation spreads them
    means = {}
    for scale in ("unbiased", "mse"):
        total = np.zeros_like(x)
        for seed in range(100):
            payload = encode_update(
                {"w": x}, server_round=1, codec=_codec(0.5, scale), rng=np.random.default_rng(seed)
            )
            total += decode_update(payload, expected=SPECS).tensors[0]
        means[scale] = total / 100
    assert np.linalg.norm(means["unbiased"] - x) / np.linalg.norm(x) < 0.4
    shrink = float(means["mse"] @ x / (x @ x))
    assert 0.2 < shrink < 0.45  # p times EDEN's mse shrink (2/pi): biased, for error feedback


def test_the_error_feedback_residual_keeps_the_unsent_rotated_coordinates():
    """320 values: no padding, whose rotated coordinates the decoded vector leaves out."""
    x = np.random.default_rng(1).normal(size=320).astype(np.float32)
    payload = encode_update(
        {"w": x}, server_round=1, codec=_codec(0.25, "mse"), rng=np.random.default_rng(3)
    )
    decoded = decode_update(payload, expected=[TensorSpec("w", (320,))]).tensors[0]
    stages = {s["name"]: s["params"] for s in read_header(payload)["stages"]}
    seed, block = stages["rotate"]["seed"], stages["rotate"]["block"]
    sent = np.zeros(rotate(x, seed, block).size, bool)
    sent.reshape(-1, block)[:, positions(subset_seed(seed), block, stages["subsample"]["keep"])] = 1
    residual = rotate(x - decoded, seed, block)
    np.testing.assert_allclose(residual[~sent], rotate(x, seed, block)[~sent], atol=1e-5)
    assert np.abs(residual[sent]).mean() < np.abs(rotate(x, seed, block)[sent]).mean()


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.25, 0.18])
def test_the_body_is_one_bit_per_sent_coordinate_and_a_scale_per_block(fraction):
    """9,610 values (the digits MLP) in 10 rotation blocks of 1,024."""
    x = np.random.default_rng(2).normal(size=9610).astype(np.float32)
    codec = CodecSpec(quant_bits=1, scheme="eden", rotate="client", quant_fraction=fraction)
    payload = encode_update({"w": x}, server_round=1, codec=codec, rng=np.random.default_rng(0))
    decoded = decode_update(payload, expected=[TensorSpec("w", (9610,))])
    keep = keep_of(fraction, 1024)  # one scale per block, with or without a subset
    assert decoded.section_bytes == {"scales": 4 * 10, "codes": -(-10 * keep // 8)}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"quant_fraction": 0.0},
        {"quant_fraction": 1.5},
        {"quant_fraction": float("nan")},
        {"quant_fraction": "0.5"},
        {"quant_fraction": 0.5, "quant_bits": 4},  # uniform scheme
        {"quant_fraction": 0.5, "quant_bits": 1, "scheme": "eden"},  # no rotation
        {"quant_fraction": 0.5, "quant_bits": 1, "scheme": "eden", "rotate": "shared"},
        {"quant_fraction": 0.5, "quant_bits": 1, "scheme": "eden", "rotate": "client", "topk": 0.1},
    ],
    ids=str,
)
def test_an_impossible_fraction_is_refused(kwargs):
    with pytest.raises(CodecConfigError, match="quant-fraction"):
        CodecSpec(**kwargs)


def test_the_setting_names_its_key():
    RunSettings(quant_bits=1, quant_scheme="eden", rotate="client", quant_fraction=0.25)
    with pytest.raises(SettingError, match="quant-fraction"):
        RunSettings(quant_bits=1, quant_scheme="eden", quant_fraction=0.25)
    with pytest.raises(SettingError, match="quant-fraction"):
        RunSettings(quant_fraction=0.0)
