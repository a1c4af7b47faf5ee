"""The SecAgg+ graph and threshold rule (issue 17, B2): every federation size from 3 to 2,100
with default settings gets a regular Harary graph whose threshold every client accepts.

Today an odd degree on an odd number of nodes gives some nodes degree + 1 neighbours, the
threshold is then exactly half, and every client refuses (11 clients at degree 5: "0 clients
shared keys"; 257-512 and 1,025-2,048 clients at the default degree 27 / 33).
"""

import numpy as np
import pytest

from strategies.secagg import (
    SecAggSettings,
    harary_neighbours,
    harary_offsets,
    threshold_core,
)
from tests.strategies.secagg_grid import SecAggGrid, plain_sum, run_round, vectors_for
from wire.secagg_protocol import MIN_DEGREE, MIN_THRESHOLD, check_graph
from wire.secagg_vector import SecAggVectorSpec

SIZES = range(3, 2101)


def _client_accepts(neighbours: int, threshold: int) -> bool:
    try:
        check_graph(neighbours, threshold)  # the rule client_sdk.secagg.share_keys applies
    except ValueError:
        return False
    return True


def test_every_size_from_3_to_2100_gets_a_graph_every_client_accepts():
    settings = SecAggSettings()
    for n in SIZES:
        degree, threshold = settings.graph(n)
        offsets = harary_offsets(n, degree)
        # a circulant graph: every node has these offsets, each a distinct other node
        assert len(offsets) == degree and 0 not in offsets and max(offsets) < n, n
        assert sorted((n - o) % n for o in offsets) == offsets, n  # symmetric
        assert _client_accepts(degree, threshold), (n, degree, threshold)
        assert degree == min(n - 1, degree) and degree >= min(n - 1, 24), (n, degree)


@pytest.mark.parametrize("n", [3, 4, 5, 11, 25, 26, 257, 301, 511, 512, 1025, 2047, 2100])
def test_the_graph_itself_is_regular_and_symmetric(n):
    degree, threshold = SecAggSettings().graph(n)
    drawn = np.unique(np.random.default_rng(n).integers(1, 2**62, size=2 * n))
    nodes = [int(v) + 2**63 for v in drawn[:n]]  # Flower's ids are unsigned 64-bit
    graph = harary_neighbours(nodes, degree, np.random.default_rng(0))
    assert sorted(graph) == sorted(nodes)
    for v, peers in graph.items():
        assert len(peers) == len(set(peers)) == degree and v not in peers
        assert peers == sorted(peers)
    edges = {(a, b) for a, peers in graph.items() for b in peers}
    assert all((b, a) in edges for a, b in edges)
    assert threshold_core(graph, nodes, threshold) == sorted(nodes)


@pytest.mark.parametrize(
    ("n", "degree", "threshold", "expected"),
    [
        (11, 5, 0, (6, 4)),  # the reproduced case: odd x odd, one above
        (301, 0, 0, (28, 15)),  # default 27 on 301 clients
        (11, 5, 3, (4, 3)),  # 6 cannot carry threshold 3: one below
        (9, 0, 3, (4, 3)),  # automatic degree in [t, 2t - 1] = 5, odd: 4
        (3, 0, 0, (2, 2)),  # the smallest federation
    ],
)
def test_odd_degree_on_odd_clients_moves_to_an_even_degree(n, degree, threshold, expected):
    assert SecAggSettings(degree=degree, threshold=threshold).graph(n) == expected


def test_unsafe_or_impossible_pairs_are_refused():
    with pytest.raises(ValueError, match="safe minimum"):
        SecAggSettings().graph(2)  # degree 1: one neighbour holds the whole secret
    with pytest.raises(ValueError, match="safe minimum"):
        SecAggSettings(degree=4, threshold=1).graph(20)
    with pytest.raises(ValueError, match="above half the degree"):
        SecAggSettings(degree=8, threshold=4).graph(20)
    assert (MIN_DEGREE, MIN_THRESHOLD) == (2, 2)
    with pytest.raises(ValueError, match="even"):
        harary_neighbours(list(range(11)), 5, np.random.default_rng(0))


def test_threshold_core_drops_nodes_whose_secrets_could_not_be_rebuilt():
    graph = {1: [2, 3, 5], 2: [1, 3], 3: [1, 2], 4: [1, 6], 5: [4, 1]}  # 6 never shared
    assert threshold_core(graph, [1, 2, 3, 4, 5], 2) == [1, 2, 3]  # 4 falls, then 5


@pytest.mark.parametrize(("n", "degree"), [(11, 5), (7, 3), (3, 0)])
def test_full_rounds_at_odd_sizes_sum_exactly(n, degree):
    spec = SecAggVectorSpec(bits=8, clip=1.0, max_weight=64, clients=n)
    vectors = vectors_for(n, spec, seed=n)
    grid = SecAggGrid(vectors)
    session, total, stats = run_round(grid, SecAggSettings(degree=degree, bits=8, max_weight=64))
    assert np.array_equal(total, plain_sum(vectors, vectors, spec))
    assert stats.accepted == n and not grid.client_errors
    assert all(len(peers) % 2 == 0 for peers in session.neighbours.values())
