import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from simulations.batched import pcg64
from simulations.batched.pcg64 import uniform_float32, uniform_float64

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
