import pytest

from strategies import SeededSampler
from tests.strategies.fake_grid import QueryAnsweringGrid


def _chosen_partitions(grid, sampler, server_round, fraction=0.3):
    return sorted(grid.partitions[n] for n in sampler.sample(grid, server_round, fraction, 1))


def test_same_seed_samples_the_same_partitions_whatever_the_node_ids():
    a = QueryAnsweringGrid({1000 + 7 * p: p for p in range(20)})
    b = QueryAnsweringGrid({99 - 3 * p: p for p in range(20)})  # other ids, other id order
    for server_round in (1, 2, 3):
        chosen = _chosen_partitions(a, SeededSampler(seed=4), server_round)
        assert chosen == _chosen_partitions(b, SeededSampler(seed=4), server_round)
        assert len(chosen) == 6
    assert _chosen_partitions(a, SeededSampler(seed=4), 1) != _chosen_partitions(
        a, SeededSampler(seed=4), 2
    )
    assert _chosen_partitions(a, SeededSampler(seed=4), 1) != _chosen_partitions(
        a, SeededSampler(seed=5), 1
    )


def test_nodes_are_queried_once_and_not_at_all_for_full_participation():
    grid = QueryAnsweringGrid({n: n for n in range(10)})
    sampler = SeededSampler(seed=0)
    assert sorted(sampler.sample(grid, 1, 1.0, 1)) == list(range(10))
    assert grid.queries == 0
    sampler.sample(grid, 1, 0.5, 1)
    sampler.sample(grid, 2, 0.5, 1)
    assert grid.queries == 10


def test_min_nodes_overrides_a_small_fraction():
    grid = QueryAnsweringGrid({n: n for n in range(10)})
    assert len(SeededSampler(seed=0).sample(grid, 1, 0.1, 4)) == 4


def test_waiting_for_too_few_nodes_times_out_with_advice():
    grid = QueryAnsweringGrid({1: 0})
    sampler = SeededSampler(seed=0, min_available=3, wait_timeout_s=2, sleep=lambda s: None)
    with pytest.raises(TimeoutError, match="min-available-nodes"):
        sampler.sample(grid, 1, 1.0, 1)
