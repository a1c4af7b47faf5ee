import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from wire.quantize import ALLOWED_BITS, dequantize, quantize

finite = st.floats(-1e3, 1e3, width=32)


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float32, st.integers(1, 400), elements=finite),
    st.sampled_from(ALLOWED_BITS),
    st.integers(1, 64),
    st.booleans(),
)
def test_error_is_within_one_step(values, bits, chunk, stochastic):
    rng = np.random.default_rng(0) if stochastic else None
    q = quantize(values, bits, chunk, rng)
    out = dequantize(q, bits, chunk)
    steps = ((q.hi - q.lo) / ((1 << bits) - 1)).astype(np.float64)
    step = np.repeat(steps, chunk)[: values.size]
    bound = step * (1.0 if stochastic else 0.5) + 1e-4 * (np.abs(values) + 1)
    assert out.shape == values.shape
    assert np.all(np.abs(out.astype(np.float64) - values) <= bound)
    assert q.codes.max() < (1 << bits)


@pytest.mark.parametrize("bits", ALLOWED_BITS)
def test_stochastic_rounding_is_unbiased(bits):
    """Monte-Carlo: the mean of many dequantizations converges to the input."""
    values = np.random.default_rng(1).normal(size=64).astype(np.float32)
    rng = np.random.default_rng(2)
    trials = 4000
    mean = np.mean(
        [dequantize(quantize(values, bits, 16, rng), bits, 16) for _ in range(trials)], axis=0
    )
    q = quantize(values, bits, 16, rng)
    step = np.repeat((q.hi - q.lo) / ((1 << bits) - 1), 16)[: values.size]
    # std of one draw <= step/2, so the mean's error is within 5 standard errors
    assert np.all(np.abs(mean - values) <= 5 * (step / 2) / np.sqrt(trials) + 1e-6)


def test_nearest_rounding_is_biased_where_stochastic_is_not():
    values = np.full(1000, 0.3, np.float32)
    values[0], values[1] = 0.0, 1.0  # range [0, 1], 1 bit: levels 0 and 1
    nearest = dequantize(quantize(values, 1, 1000, None), 1, 1000)
    stochastic = dequantize(quantize(values, 1, 1000, np.random.default_rng(0)), 1, 1000)
    assert nearest[2:].mean() == 0.0
    assert abs(stochastic[2:].mean() - 0.3) < 0.05


def test_constant_chunks_are_exact_and_bits_are_checked():
    values = np.full(10, 2.5, np.float32)
    assert np.array_equal(dequantize(quantize(values, 2, 4, None), 2, 4), values)
    with pytest.raises(ValueError, match="bits"):
        quantize(values, 3, 4, None)
