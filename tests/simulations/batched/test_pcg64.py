import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from simulations.batched import codec, pcg64
from simulations.batched.pcg64 import uniform_float32, uniform_float64
from tests.simulations.batched.test_codec import (
    test_device_payloads_and_residuals_are_the_sdks_over_two_rounds as codec_case,
)
from tests.simulations.batched.test_secure import test_masked_uploads_are_the_sdks as secure_case
from tests.simulations.batched.test_training import CPU

DEVICES = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
SEEDS = st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=4)


@pytest.mark.parametrize("device", DEVICES, ids=str)
@settings(max_examples=25, deadline=None)
@given(seeds=SEEDS, count=st.integers(1, 700))
def test_draws_are_numpys_default_rng_value_for_value(device, seeds, count):
    f32 = uniform_float32(seeds, count, device).cpu().numpy()
    f64 = uniform_float64(seeds, count, device).cpu().numpy()
    for k, seed in enumerate(seeds):
        assert f32[k].tobytes() == np.random.default_rng(seed).random(count, np.float32).tobytes()
        assert f64[k].tobytes() == np.random.default_rng(seed).random(count).tobytes()


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_blocks_of_a_few_generators_give_the_same_draws(device, monkeypatch):
    seeds = list(range(7))
    whole = uniform_float32(seeds, 999, device)
    monkeypatch.setattr(pcg64, "BLOCK_ELEMENTS", 1000)  # two generators per block
    assert torch.equal(uniform_float32(seeds, 999, device), whole)
    assert uniform_float32([], 5, device).shape == (0, 5)


@pytest.mark.parametrize("case", ["8-bit stochastic", "2-bit stochastic + EF, pruned"])
def test_the_device_codec_with_device_draws_sends_the_sdks_bytes(case, monkeypatch):
    """The engine computes the noise on the device on CUDA only; forced here on the CPU."""
    monkeypatch.setattr(codec, "DEVICE_DRAWS", {"cpu", "cuda"})
    codec_case(case, CPU)


def test_secure_uploads_with_device_draws_are_the_sdks(monkeypatch):
    monkeypatch.setattr(codec, "DEVICE_DRAWS", {"cpu", "cuda"})
    monkeypatch.setattr("simulations.batched.secure.DEVICE_DRAWS", {"cpu", "cuda"})
    secure_case("plain", CPU)
