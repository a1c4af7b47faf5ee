import math
from collections import Counter

import numpy as np
import pytest

from strategies import SeededSampler
from strategies.privacy.accounting import RoundPlan
from strategies.sampling import PoissonSampler, poisson_rate
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


def _poisson_counts(grid, seed, rounds, fraction):
    sampler = PoissonSampler(seed=seed)
    return [sampler.sample_train(grid, r, fraction, 1) for r in range(1, rounds + 1)]


def test_poisson_sampling_trains_each_node_with_probability_m_over_n_reproducibly():
    grid = QueryAnsweringGrid({500 + p: p for p in range(40)})
    drawn = _poisson_counts(grid, seed=3, rounds=400, fraction=0.25)  # q = 10 / 40
    counts = np.array([len(nodes) for nodes in drawn])
    q, n = poisson_rate(40, 0.25, 1), 40
    assert q == 0.25 == RoundPlan(population=40, per_round=10, rounds=1, delta=1e-3).rate
    sd = math.sqrt(n * q * (1 - q))  # Binomial(N, q) cohorts
    assert abs(counts.mean() - n * q) < 5 * sd / math.sqrt(len(counts))
    assert 0.75 < counts.std() / sd < 1.25 and len(set(counts)) > 5  # not a fixed size
    joins = Counter(nid for nodes in drawn for nid in nodes)  # every node, about q of the rounds
    assert set(joins) == set(grid.partitions)
    assert all(abs(k / 400 - q) < 5 * math.sqrt(q * (1 - q) / 400) for k in joins.values())
    other_ids = QueryAnsweringGrid({9000 - 7 * p: p for p in range(40)})
    again = _poisson_counts(other_ids, seed=3, rounds=400, fraction=0.25)
    assert [sorted(grid.partitions[i] for i in a) for a in drawn] == [
        sorted(other_ids.partitions[i] for i in b) for b in again
    ]  # the same partitions whatever the node ids
    assert drawn != _poisson_counts(grid, seed=4, rounds=400, fraction=0.25)


def test_poisson_sampling_may_draw_nobody_and_evaluation_still_samples_a_fixed_number():
    grid = QueryAnsweringGrid({n: n for n in range(8)})
    sizes = [len(nodes) for nodes in _poisson_counts(grid, seed=2, rounds=50, fraction=0.125)]
    assert 0 in sizes and max(sizes) > 1
    assert len(PoissonSampler(seed=2).sample(grid, 1, 0.125, 1, purpose=1)) == 1
    assert len(PoissonSampler(seed=2).sample_train(grid, 1, 1.0, 1)) == 8  # q = 1: everyone


def test_poisson_sampling_at_the_accounted_rate_whatever_is_connected():
    """dp-population 1000 at q = 0.1, 10 nodes connected, min-train-nodes 2: from the
    connected nodes the rate would be 2/10; every node joins with the accounted 0.1."""
    grid = QueryAnsweringGrid({n: n for n in range(10)})
    assert poisson_rate(10, 0.1, 2) == 0.2
    sampler = PoissonSampler(seed=5, rate=0.1)
    joined = sum(len(sampler.sample_train(grid, r, 0.1, 2)) for r in range(1, 1001))
    assert abs(joined / 10_000 - 0.1) < 4 * (0.1 * 0.9 / 10_000) ** 0.5  # 4 sigma
    for bad in (0.0, 1.5, "0.1", float("nan"), True):
        with pytest.raises(ValueError, match="rate"):
            PoissonSampler(seed=0, rate=bad)
