"""Hostile SecAgg stage replies (issue 17, parts A and B3/B4): each is a typed rejection of the
client that sent it, which leaves the round; the round still sums the honest clients exactly.

Values of the wrong *type* (a bool for an int, a float equal to an int, a str, a list), of
absurd size (2**62, which a ``bytes(n)`` would try to allocate) and out of range, in every
field of every stage, pushed through the real server session and the SDK's real clients.
"""

import math

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from strategies.secagg import SecAggFailed, SecAggSession, SecAggSettings
from strategies.secagg_metrics import shared_train_loss
from strategies.stats import RoundStats
from tests.strategies.secagg_grid import SecAggGrid, plain_sum, run_round, vectors_for
from wire import PAYLOAD_FIELD, UPDATE_RECORD_KEY, RejectReason
from wire.ddp_vector import DdpVectorSpec
from wire.secagg import SHAMIR_PRIME, SHARE_BYTES
from wire.secagg_protocol import SECAGG_RECORD_KEY, STAGE_KEYS, STAGE_SHARES, STAGE_UNMASK
from wire.secagg_vector import SecAggVectorSpec

SPEC = SecAggVectorSpec(bits=8, clip=1.0, max_weight=64, clients=10)
SETTINGS = SecAggSettings(degree=6, threshold=4, bits=8, max_weight=64)
REASONS = {r.value for r in RejectReason}
# Wrong types and absurd sizes a ConfigRecord can carry (it refuses nested lists itself)
HOSTILE = [1.5, "x", 2**62, -1, 0, True, math.nan, [1, 2], [b"a" * 8], [1.5, 2.5], b""]
# Low-order X25519 points: 0, 1, a point of order 8, p - 1, and 0 with the ignored top bit set
LOW_ORDER = [
    bytes(32),
    b"\x01" + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes(31) + b"\x80",
]


def _tamper(node: int, stage: str, key: str, value: object):
    """An on_reply hook: ``node``'s ``stage`` reply gets ``value`` under ``key``."""

    def hook(reply: Message) -> Message:
        if reply.metadata.src_node_id == node and reply.metadata.message_type == stage:
            record = reply.content[UPDATE_RECORD_KEY if key == PAYLOAD_FIELD else SECAGG_RECORD_KEY]
            record[key] = value
        return reply

    return hook


def _hostile_round(stage: str, key: str, value: object, seed: int = 0):
    vectors = vectors_for(10, SPEC, seed=seed)
    grid = SecAggGrid(vectors)
    bad = list(vectors)[0]
    grid.on_reply = _tamper(bad, stage, key, value)
    session, total, stats = run_round(grid, SETTINGS)
    return vectors, bad, session, total, stats


def _rejected_once(stats: RoundStats, node: int) -> str:
    mine = [r for r in stats.rejected if r.node_id == node]
    assert len(mine) == 1 and mine[0].reason in REASONS, stats.rejected
    return mine[0].reason


@pytest.mark.parametrize("key", ["to", "sealed"])
@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_a_hostile_shares_reply_removes_its_client_and_the_round_goes_on(key, value):
    vectors, bad, session, total, stats = _hostile_round(STAGE_SHARES, key, value)
    _rejected_once(stats, bad)
    assert bad not in session.alive  # B4: a refused client leaves the alive set
    assert np.array_equal(total, plain_sum(vectors, list(vectors)[1:], SPEC))


def test_a_refused_shares_reply_does_not_fail_the_next_rounds():
    """B4: the node whose stage-2 reply is refused every round is never left in ``alive``
    (today: "the self-mask seed of node ... has 0 shares" in every round)."""
    vectors = vectors_for(10, SPEC, seed=1)
    grid = SecAggGrid(vectors)
    bad = list(vectors)[3]
    grid.on_reply = _tamper(bad, STAGE_SHARES, "to", b"\x00" * 8)
    for server_round in (1, 2, 3):
        session, total, stats = run_round(grid, SETTINGS, server_round)
        assert bad not in session.alive and stats.accepted == 9
        assert np.array_equal(total, plain_sum(vectors, [v for v in vectors if v != bad], SPEC))


@pytest.mark.parametrize("key", ["pk-c", "pk-s"])
@pytest.mark.parametrize("value", [*HOSTILE, *LOW_ORDER], ids=lambda v: repr(v)[:24])
def test_a_bad_or_low_order_public_key_is_its_senders_fault(key, value):
    """B3: an all-zero (or other low-order) key would make every neighbour's key agreement
    raise; it is rejected at setup as its sender's fault, and the honest nodes finish."""
    vectors, bad, session, total, stats = _hostile_round(STAGE_KEYS, key, value, seed=2)
    _rejected_once(stats, bad)
    assert bad not in session.neighbours and not stats.failures
    assert np.array_equal(total, plain_sum(vectors, list(vectors)[1:], SPEC))


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_a_hostile_masked_upload_is_rejected_and_its_masks_recovered(value):
    vectors, bad, _, total, stats = _hostile_round("train", PAYLOAD_FIELD, value, seed=3)
    _rejected_once(stats, bad)
    assert np.array_equal(total, plain_sum(vectors, list(vectors)[1:], SPEC))


@pytest.mark.parametrize("value", [True, 1.0, "1", [1]], ids=repr)
def test_a_round_number_of_the_wrong_type_is_a_replay(value):
    vectors, bad, _, total, stats = _hostile_round(STAGE_SHARES, "round", value, seed=4)
    assert _rejected_once(stats, bad) == "replayed"
    assert np.array_equal(total, plain_sum(vectors, list(vectors)[1:], SPEC))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("seed-of", 2**62),
        ("seed-of", 1.5),
        ("seed-of", "x"),
        ("seed-of", [1, 2]),
        ("seed-shares", 2**62),
        ("seed-shares", True),
        ("key-of", b"\x01" * 8),
        ("refused", 7),
        ("refused", b"\x02" * 8),
    ],
    ids=repr,
)
def test_a_hostile_unmask_reply_is_rejected_and_its_shares_unused(key, value):
    vectors, bad, _, total, stats = _hostile_round(STAGE_UNMASK, key, value, seed=5)
    _rejected_once(stats, bad)
    assert np.array_equal(total, plain_sum(vectors, vectors, SPEC))  # 9 other holders do


def _seed_share_at_or_above_the_prime(bad: int):
    def hook(reply: Message) -> Message:
        if reply.metadata.src_node_id == bad and reply.metadata.message_type == STAGE_UNMASK:
            record = reply.content[SECAGG_RECORD_KEY]
            shares = bytearray(record["seed-shares"])
            shares[:SHARE_BYTES] = SHAMIR_PRIME.to_bytes(SHARE_BYTES, "big")
            record["seed-shares"] = bytes(shares)
        return reply

    return hook


def test_a_seed_share_at_or_above_the_field_prime_is_that_holders_rejection():
    """Today an UpdateRejected escaped aggregate_train from combine_shares."""
    vectors = vectors_for(10, SPEC, seed=6)
    grid = SecAggGrid(vectors)
    bad = list(vectors)[0]
    grid.on_reply = _seed_share_at_or_above_the_prime(bad)
    _, total, stats = run_round(grid, SETTINGS)
    assert _rejected_once(stats, bad) == "bad-secagg"
    assert np.array_equal(total, plain_sum(vectors, vectors, SPEC))


@pytest.mark.parametrize("stage", [STAGE_KEYS, STAGE_SHARES, STAGE_UNMASK, "train"])
@pytest.mark.parametrize("record", [MetricRecord({"a": 1.0}), ArrayRecord()], ids=repr)
def test_a_record_of_the_wrong_type_is_a_rejection(stage, record):
    vectors = vectors_for(10, SPEC, seed=7)
    grid = SecAggGrid(vectors)
    bad = list(vectors)[0]
    key = UPDATE_RECORD_KEY if stage == "train" else SECAGG_RECORD_KEY

    def hook(reply: Message) -> Message:
        if reply.metadata.src_node_id == bad and reply.metadata.message_type == stage:
            reply.content[key] = record
        return reply

    grid.on_reply = hook
    _, total, stats = run_round(grid, SETTINGS)
    _rejected_once(stats, bad)
    survivors = list(vectors) if stage == STAGE_UNMASK else list(vectors)[1:]
    assert np.array_equal(total, plain_sum(vectors, survivors, SPEC))


@pytest.mark.parametrize("loss", [[0.5, 0.5], math.nan, math.inf, -math.inf, 10**30, [1]])
def test_a_hostile_train_loss_is_a_rejection_when_metrics_are_shared(loss):
    """``train-loss = [.5, .5]`` in a secure reply raised TypeError where losses were averaged."""
    vectors = vectors_for(10, SPEC, seed=8)
    grid = SecAggGrid(vectors)
    bad = list(vectors)[0]

    def hook(reply: Message) -> Message:
        if reply.metadata.message_type == "train":
            value = loss if reply.metadata.src_node_id == bad else 0.25
            reply.content["metrics"] = MetricRecord({"train-loss": value})
        return reply

    grid.on_reply = hook
    settings = SecAggSettings(degree=6, threshold=4, bits=8, max_weight=64, share_metrics=True)
    stats = RoundStats(server_round=1)
    session = SecAggSession(settings, 1, grid, stats)
    record = session.setup(grid.get_node_ids(), np.random.default_rng(1))
    replies = grid.send_and_receive(grid.train_messages(record))
    total = session.aggregate(replies, len(next(iter(vectors.values()))))
    finite = math.isfinite(loss) if isinstance(loss, float) else isinstance(loss, int)
    if finite:  # a finite number is a (silly) loss, not a fault
        assert not stats.rejected
        return
    _rejected_once(stats, bad)
    assert np.array_equal(total, plain_sum(vectors, list(vectors)[1:], SPEC))
    assert shared_train_loss(replies)["train-loss"] == pytest.approx(0.25)


def test_the_shared_train_loss_skips_losses_that_are_not_finite_numbers():
    replies = []
    for node, loss in enumerate([[0.5, 0.5], math.nan, 0.5, 1.5], start=1):
        content = RecordDict(
            {
                SECAGG_RECORD_KEY: ConfigRecord({"round": 1}),
                "metrics": MetricRecord({"train-loss": loss}),
            }
        )
        replies.append(Message(content=content, dst_node_id=node, message_type="train"))
    assert shared_train_loss(replies) == {"train-loss": pytest.approx(1.0)}


def test_an_upload_off_the_grid_fails_the_round_instead_of_poisoning_it():
    """A client can mask any m-bit values; honest sums have weight in [1, N x max-weight] and
    coordinates at most weight x levels, so a sum outside is refused, never averaged."""
    vectors = vectors_for(10, SPEC, seed=9)
    bad = list(vectors)[0]
    others = sum(int(v[0]) for node, v in vectors.items() if node != bad)
    vectors[bad] = vectors[bad].copy()
    vectors[bad][0] = SPEC.modulus_mask - others  # the sum's first value: 2^m - 1, no wrap
    with pytest.raises(SecAggFailed, match="off the shared grid"):
        run_round(SecAggGrid(vectors), SETTINGS)


def test_a_false_upload_count_fails_a_distributed_dp_round_but_the_sum_was_seen():
    """Distributed DP's vectors end in a count of 1; a client that masks another count is
    caught by the unmasked sum (not who), the round is not used, and the session records that
    the server did unmask a sum (DistributedDp spends it all the same)."""
    spec = DdpVectorSpec(
        bits=16, clip=1.0, scale=100.0, local_variance=1.0, seed=1, block=4096, length=50,
        clients=6,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    nodes = list(range(11, 17))
    vectors = {n: spec.quantize(rng.normal(0, 0.1, 50), 1, rng)[0] for n in nodes}
    vectors[11][-1] = 2
    grid = SecAggGrid(vectors)
    session = SecAggSession(SecAggSettings(degree=5), 1, grid, RoundStats(server_round=1))
    session.spec_for = lambda alive: spec
    record = session.setup(nodes, np.random.default_rng(1))
    replies = grid.send_and_receive(grid.train_messages(record))
    with pytest.raises(SecAggFailed, match="counts 7 uploads, not the 6"):
        session.aggregate(replies, spec.vector_size(50))
    assert session.unmasked == 6
