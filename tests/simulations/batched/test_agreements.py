"""Pairwise agreements computed once per pair: the same keys as each end computing its own."""

import numpy as np
import pytest

from client_sdk import secagg
from simulations.batched.agreements import AgreementCache
from strategies.secagg import SecAggSession, SecAggSettings
from strategies.stats import RoundStats
from tests.strategies import secagg_grid
from wire import UpdateRejected
from wire.secagg import agree_each, new_private_key, public_key
from wire.secagg_protocol import STAGE_SHARES, STAGE_UNMASK
from wire.secagg_vector import SecAggVectorSpec


def test_each_pair_is_agreed_once_and_equals_agree_each():
    privates = [new_private_key() for _ in range(4)]
    publics = [public_key(p) for p in privates]
    cache = AgreementCache()
    for i, mine in enumerate(privates):
        others = publics[:i] + publics[i + 1 :]
        assert cache.agree_each(mine, others, b"x") == agree_each(mine, others, b"x")
    assert cache.computed == 6 and cache.found == 6  # 4 choose 2 pairs, each found once
    assert cache.agree_each(privates[0], publics[1:], b"y") == agree_each(
        privates[0], publics[1:], b"y"
    )  # another purpose is another key
    assert cache.computed == 9


def test_a_wrong_public_key_is_agreed_for_itself_and_bad_lengths_are_refused():
    a, b, c = (new_private_key() for _ in range(3))
    cache = AgreementCache()
    cache.agree_each(a, [public_key(b)], b"x")
    # b was handed c's key as a's: nobody agreed that pair before, so it is computed
    assert cache.agree_each(b, [public_key(c)], b"x") == agree_each(b, [public_key(c)], b"x")
    assert cache.computed == 2 and cache.found == 0
    with pytest.raises(UpdateRejected, match="32 bytes"):
        cache.agree_each(a, [public_key(c), b"short"], b"x")


def test_a_secure_round_with_shared_agreements_unmasks_the_exact_sum(monkeypatch):
    spec = SecAggVectorSpec(bits=8, clip=1.0, max_weight=16, clients=8)
    rng = np.random.default_rng(0)
    vectors = {
        node: spec.quantize(rng.normal(0, 0.3, 99).astype(np.float32), 3, rng)[0]
        for node in range(10, 18)
    }
    cache = AgreementCache()
    for stage, handler in ((STAGE_SHARES, secagg.share_keys), (STAGE_UNMASK, secagg.unmask)):
        monkeypatch.setitem(
            secagg_grid.HANDLERS, stage, lambda m, c, h=handler: h(m, c, cache.agree_each)
        )
    grid = secagg_grid.SecAggGrid(vectors)
    grid.drop_at_train = {10}  # its masks are rebuilt from the mask-key shares it sealed
    session = SecAggSession(SecAggSettings(degree=5), 1, grid, RoundStats(server_round=1))
    record = session.setup(grid.get_node_ids(), np.random.default_rng(1))
    shared = cache.computed
    replies = grid.send_and_receive(
        [m for m in grid.train_messages(record) if m.metadata.dst_node_id in session.alive]
    )
    total = session.aggregate(replies, 100)
    survivors = [v for n, v in vectors.items() if n != 10]
    assert np.array_equal(total, np.sum(survivors, axis=0, dtype=np.uint64).astype(np.uint32))
    assert shared == 8 * 5 // 2  # stage 2: one agreement per pair of neighbours
    assert cache.computed == shared  # stage 4 found every share key stage 2 agreed
