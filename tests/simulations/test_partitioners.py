import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulations.partitioners import (
    DirichletPartitioner,
    IidPartitioner,
    PartitionError,
    ShardPartitioner,
    parse_partition,
)

LABELS = np.repeat(np.arange(10), 200)  # 2,000 examples, 10 balanced classes


def _proportions(labels, parts):
    return np.array([np.bincount(labels[p], minlength=10) / len(p) for p in parts])


def _assert_exact_cover(parts, n):
    joined = np.concatenate(parts)
    assert len(joined) == n and len(np.unique(joined)) == n


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 60), st.integers(0, 2**32 - 1))
def test_every_partitioner_covers_each_example_exactly_once(clients, seed):
    shards = [ShardPartitioner(2)] if clients * 2 >= 10 else []
    for part in (IidPartitioner(), DirichletPartitioner(0.5), *shards):
        _assert_exact_cover(part(LABELS, clients, np.random.default_rng(seed)), len(LABELS))


def test_iid_proportions_match_the_global_label_distribution():
    parts = IidPartitioner()(LABELS, 10, np.random.default_rng(0))
    props = _proportions(LABELS, parts)
    assert np.abs(props - 0.1).max() < 0.05
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_dirichlet_proportions_match_alpha():
    """Small alpha: clients dominated by few labels; large alpha: close to the global mix."""
    rng = np.random.default_rng(0)
    skewed = _proportions(LABELS, DirichletPartitioner(0.1)(LABELS, 20, rng))
    mixed = _proportions(LABELS, DirichletPartitioner(1000.0)(LABELS, 20, rng))
    assert skewed.max(axis=1).mean() > 0.5
    assert np.abs(mixed - 0.1).max() < 0.06


def test_dirichlet_shares_of_the_first_class_have_the_dirichlet_variance():
    """Class 0 is dealt before any client is full, so its shares are exactly Dir(alpha):
    each share has mean 1/n and variance (1/n)(1 - 1/n)/(n*alpha + 1)."""
    n, alpha = 5, 0.5
    shares = []
    for seed in range(300):
        parts = DirichletPartitioner(alpha)(LABELS, n, np.random.default_rng(seed))
        shares += [np.sum(LABELS[p] == 0) / 200 for p in parts]
    assert np.mean(shares) == pytest.approx(1 / n, abs=1e-9)
    assert np.var(shares) == pytest.approx((1 / n) * (1 - 1 / n) / (n * alpha + 1), rel=0.15)


def test_dirichlet_min_samples_guard():
    parts = DirichletPartitioner(0.3, min_samples=20)(LABELS, 30, np.random.default_rng(1))
    assert min(map(len, parts)) >= 20
    with pytest.raises(PartitionError, match="minimum"):
        DirichletPartitioner(0.01, min_samples=60, max_tries=3)(
            LABELS, 30, np.random.default_rng(1)
        )


@pytest.mark.parametrize(("clients", "k"), [(25, 2), (3, 3), (10, 1), (7, 10)])
def test_shards_give_each_client_k_classes(clients, k):
    parts = ShardPartitioner(k)(LABELS, clients, np.random.default_rng(0))
    assert all(len(np.unique(LABELS[p])) == k for p in parts)


def test_same_seed_same_partition():
    a = DirichletPartitioner(0.5)(LABELS, 7, np.random.default_rng(3))
    b = DirichletPartitioner(0.5)(LABELS, 7, np.random.default_rng(3))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    "spec",
    ["dirichlet:0", "dirichlet:-1", "dirichlet:x", "shards:0", "shards:", "zipf:2", "iid:3"],
)
def test_bad_specs_are_refused(spec):
    with pytest.raises(PartitionError):
        parse_partition(spec)


def test_specs_parse():
    assert parse_partition("natural") is None
    assert parse_partition("dirichlet:0.5") == DirichletPartitioner(0.5)
    assert parse_partition("shards:3", min_samples=4) == ShardPartitioner(3, min_samples=4)
    with pytest.raises(PartitionError, match="only 5 examples"):
        IidPartitioner()(LABELS[:5], 6, np.random.default_rng(0))
    with pytest.raises(PartitionError, match="more classes"):
        ShardPartitioner(11)(LABELS, 3, np.random.default_rng(0))


@pytest.mark.parametrize("spec", ["dirichlet:nan", "dirichlet:inf", "dirichlet:-inf"])
def test_non_finite_dirichlet_alpha_is_refused(spec):
    with pytest.raises(PartitionError, match="finite number > 0"):
        parse_partition(spec)
