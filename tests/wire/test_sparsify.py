import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from wire.sparsify import BITMAP, GAPS, decode_positions, encode_positions, topk_indices


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=5), st.data())
def test_positions_round_trip_and_beat_32_bit_indices(lengths, data):
    total = sum(lengths)
    positions = np.array(
        sorted(
            data.draw(st.sets(st.integers(0, max(total - 1, 0)), max_size=total)) if total else []
        ),
        dtype=np.int64,
    )
    parts, codes = encode_positions(positions, lengths)
    buffer = memoryview(b"".join(parts))
    assert np.array_equal(decode_positions(buffer, codes, lengths), positions)
    assert len(buffer) <= 4 * positions.size or len(buffer) <= sum((n + 7) // 8 for n in lengths)
    for code, length in zip(codes, lengths, strict=True):
        assert code.nbytes <= (length + 7) // 8  # never worse than a bitmap


def test_sparse_segments_use_gaps_dense_ones_a_bitmap():
    lengths = [10_000, 64]
    positions = np.array(
        [5, 900, 9_000, 10_000 + 1, 10_000 + 2, 10_000 + 40] + list(range(10_010, 10_060))
    )
    _, codes = encode_positions(np.unique(positions), lengths)
    assert codes[0].coding == GAPS and codes[1].coding == BITMAP


def test_topk_picks_largest_magnitudes_with_stable_ties():
    v = np.array([0.1, -5.0, 3.0, 0.0, 3.0, -0.2], np.float32)
    assert topk_indices(v, 2).tolist() == [1, 2]
    assert topk_indices(v, 3).tolist() == [1, 2, 4]
    assert topk_indices(v, 0).tolist() == [] and topk_indices(v, 9).tolist() == list(range(6))
    rng = np.random.default_rng(0)
    big = rng.normal(size=10_000)
    ref = np.sort(np.argsort(-np.abs(big), kind="stable")[:100])
    assert np.array_equal(topk_indices(big, 100), ref)
