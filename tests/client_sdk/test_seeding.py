import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client_sdk.seeding import client_seed, client_seeds

# Entropy words numpy splits differently: one word, two words (>= 2**32), three and more.
SEEDS = st.one_of(
    st.integers(0, 2**32 - 1), st.integers(2**32, 2**64 - 1), st.integers(2**64, 2**130)
)


@settings(max_examples=200, deadline=None)
@given(
    seed=SEEDS,
    server_round=st.one_of(st.integers(0, 1000), st.integers(2**32, 2**40)),
    pids=st.lists(st.integers(-1, 2**32 - 2), max_size=40),
)
def test_batched_seeds_equal_numpy_seed_sequence_per_client(seed, server_round, pids):
    assert client_seeds(seed, server_round, pids) == [
        client_seed(seed, server_round, pid) for pid in pids
    ]


def test_partition_ids_past_one_word_and_numpy_arrays_take_numpys_path():
    pids = [0, 2**32 - 1, 2**40]  # pid + 1 needs two words from 2**32 - 1 on
    assert client_seeds(5, 2, pids) == [client_seed(5, 2, pid) for pid in pids]
    assert client_seeds(5, 2, np.arange(3)) == [client_seed(5, 2, pid) for pid in range(3)]
    assert client_seeds(5, 2, []) == []


def test_negative_entropy_is_refused_as_numpy_refuses_it():
    with pytest.raises(ValueError):
        client_seeds(-1, 2, [0, 1])
    with pytest.raises(ValueError):
        client_seeds(3, 2, [-2])
