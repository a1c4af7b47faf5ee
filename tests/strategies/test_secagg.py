"""Secure aggregation, server and client together: exact sums, dropouts, thresholds, attacks."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from scipy import stats as scipy_stats

from strategies.secagg import SecAggFailed, SecAggSettings, harary_neighbours
from tests.strategies.secagg_grid import SecAggGrid, plain_sum, run_round, vectors_for
from wire import PAYLOAD_FIELD, UPDATE_RECORD_KEY
from wire.secagg_protocol import SECAGG_RECORD_KEY, STAGE_SHARES, STAGE_UNMASK, ids_bytes
from wire.secagg_vector import SecAggVectorSpec

SPEC = SecAggVectorSpec(bits=8, clip=1.0, max_weight=64, clients=10)


@pytest.mark.parametrize("degree", [0, 4, 9])
def test_unmasked_sum_equals_the_plain_sum_bit_for_bit(degree):
    vectors = vectors_for(10, SPEC)
    grid = SecAggGrid(vectors)
    _, total, stats = run_round(grid, SecAggSettings(degree=degree, bits=8, max_weight=64))
    assert np.array_equal(total, plain_sum(vectors, vectors, SPEC))
    assert stats.accepted == 10 and not stats.rejected and not grid.client_errors


@pytest.mark.parametrize("degree", [0, 8, 9])  # 0: the complete graph for N = 10
def test_bit_for_bit_when_30_percent_drop_after_sharing_keys(degree):
    vectors = vectors_for(10, SPEC, seed=1)
    grid = SecAggGrid(vectors)
    gone = set(list(vectors)[:3])
    grid.drop_at_train = gone
    _, total, stats = run_round(grid, SecAggSettings(degree=degree, bits=8, max_weight=64))
    survivors = [v for v in vectors if v not in gone]
    assert np.array_equal(total, plain_sum(vectors, survivors, SPEC))
    assert stats.accepted == 7


def test_below_the_threshold_the_round_fails_with_a_reason():
    vectors = vectors_for(10, SPEC, seed=2)
    grid = SecAggGrid(vectors)
    grid.drop_at_train = set(list(vectors)[:6])  # 4 survivors, threshold 5 of 8 neighbours
    with pytest.raises(SecAggFailed, match="below the threshold"):
        run_round(grid, SecAggSettings(degree=8, threshold=5, bits=8, max_weight=64))


def test_a_masked_upload_looks_uniform_and_the_server_never_sees_a_plain_vector(monkeypatch):
    vectors = vectors_for(10, SPEC, seed=3)
    seen: list[np.ndarray] = []
    unpack = SecAggVectorSpec.unpack

    def spy(self, payload, count):
        values = unpack(self, payload, count)
        seen.append(values.copy())
        return values

    monkeypatch.setattr(SecAggVectorSpec, "unpack", spy)
    grid = SecAggGrid(vectors)
    _, total, _ = run_round(grid, SecAggSettings(bits=8, max_weight=64))
    assert np.array_equal(total, plain_sum(vectors, vectors, SPEC))
    assert len(seen) == 10
    m = SPEC.modulus_bits
    for values in seen:
        assert not any(np.mean(values == plain) > 0.01 for plain in vectors.values())
        # chi-square on 32 equal bins of Z_2^m and KS against the uniform law
        counts = np.bincount(values >> np.uint32(m - 5), minlength=32)
        assert scipy_stats.chisquare(counts).pvalue > 1e-4
        assert scipy_stats.kstest(values / 2**m, "uniform").pvalue > 1e-4
    # the plain vectors are far from uniform (weights * 8-bit levels)
    plain = next(iter(vectors.values()))
    assert scipy_stats.kstest(plain / 2**m, "uniform").pvalue < 1e-6


def _flip_one_sealed_share(target: int):
    def hook(msg: Message) -> Message:
        if msg.metadata.message_type == STAGE_UNMASK and msg.metadata.dst_node_id == target:
            record = msg.content[SECAGG_RECORD_KEY]
            sealed = bytearray(record["sealed"])
            sealed[20] ^= 1
            record["sealed"] = bytes(sealed)
        return msg

    return hook


def test_a_tampered_share_is_refused_and_the_round_goes_on():
    vectors = vectors_for(10, SPEC, seed=4)
    grid = SecAggGrid(vectors)
    grid.on_request = _flip_one_sealed_share(list(vectors)[0])
    _, total, stats = run_round(grid, SecAggSettings(degree=6, threshold=4, bits=8, max_weight=64))
    assert np.array_equal(total, plain_sum(vectors, vectors, SPEC))
    assert [r.reason for r in stats.rejected] == ["share-tampered"]


def test_replayed_wrong_length_and_impersonating_replies_are_rejected():
    vectors = vectors_for(10, SPEC, seed=5)
    grid = SecAggGrid(vectors)
    nodes = list(vectors)
    # round 1 completes; its replies are kept for the replay
    run_round(grid, SecAggSettings(degree=6, threshold=4, bits=8, max_weight=64))
    old_keys = {r.metadata.src_node_id: r for r in grid.replies[:10]}

    def attack(reply: Message) -> Message:
        node, kind = reply.metadata.src_node_id, reply.metadata.message_type
        record = reply.content[SECAGG_RECORD_KEY]
        if node == nodes[0] and "keys" in kind:  # replay last round's stage-1 reply
            return Message(content=old_keys[node].content, reply_to=_request_of(reply))
        if node == nodes[1] and kind == "train":  # one byte short
            payload = reply.content[UPDATE_RECORD_KEY][PAYLOAD_FIELD]
            reply.content[UPDATE_RECORD_KEY][PAYLOAD_FIELD] = payload[:-1]
        if node == nodes[2] and kind == STAGE_SHARES:  # claims to be node 3
            record["node-id"] = str(nodes[3])
        return reply

    grid.on_reply = attack
    _, total, stats = run_round(
        grid, SecAggSettings(degree=6, threshold=4, bits=8, max_weight=64), 2
    )
    reasons = {r.node_id: r.reason for r in stats.rejected}
    assert reasons == {
        nodes[0]: "replayed",
        nodes[1]: "length-mismatch",
        nodes[2]: "identity-mismatch",
    }
    # nodes 0 and 2 left before training; node 1's masks were removed as a dropout's
    assert np.array_equal(total, plain_sum(vectors, nodes[3:], SPEC))


def test_clients_refuse_an_inconsistent_unmask_request():
    vectors = vectors_for(10, SPEC, seed=7)
    grid = SecAggGrid(vectors)
    nodes = list(vectors)
    outsider = ids_bytes([12345])

    def lie(msg: Message) -> Message:
        if msg.metadata.message_type != STAGE_UNMASK:
            return msg
        record = msg.content[SECAGG_RECORD_KEY]
        node = msg.metadata.dst_node_id
        if node == nodes[0]:  # a node both survived and dropped
            record["dropped"] = bytes(record["survivors"])[:8]
        elif node == nodes[1]:  # a node that never shared keys
            record["dropped"] = outsider
        elif node == nodes[2]:  # the node itself left out of the survivors
            record["survivors"] = ids_bytes([n for n in nodes if n != nodes[2]])
        return msg

    grid.on_request = lie
    _, total, _ = run_round(grid, SecAggSettings(degree=9, threshold=5, bits=8, max_weight=64))
    assert np.array_equal(total, plain_sum(vectors, vectors, SPEC))  # 7 honest answers do
    refused = sorted(e.split(":")[0] for e in grid.client_errors)
    assert refused == sorted(str(n) for n in nodes[:3])
    assert all("overlap, name nodes outside the round" in e for e in grid.client_errors)


def _request_of(reply: Message) -> Message:
    return Message(
        content=RecordDict(),
        dst_node_id=reply.metadata.src_node_id,
        message_type=reply.metadata.message_type,
    )


def test_clients_refuse_out_of_order_and_foreign_session_messages():
    vectors = vectors_for(4, SecAggVectorSpec(bits=8, max_weight=64, clients=4), seed=6)
    grid = SecAggGrid(vectors)
    node = next(iter(vectors))
    foreign = ConfigRecord({"round": 1, "nonce": b"x" * 16})
    msg = Message(
        content=RecordDict({SECAGG_RECORD_KEY: foreign}),
        dst_node_id=node,
        message_type=STAGE_UNMASK,
    )
    assert grid.send_and_receive([msg]) == []
    assert "stage-order" in grid.client_errors[0]


def test_harary_graph_is_regular_and_symmetric():
    nodes = list(range(100, 130))
    for degree in (4, 5, 8):
        graph = harary_neighbours(nodes, degree, np.random.default_rng(0))
        assert all(len(v) == degree for v in graph.values())
        assert all(a in graph[b] for a in graph for b in graph[a])


def test_default_graph_sizes():
    assert SecAggSettings().graph(10) == (9, 5)  # small: complete graph
    assert SecAggSettings().graph(1000) == (30, 16)  # 3 log2 N neighbours
    assert SecAggSettings(threshold=2).graph(4) == (3, 2)  # degree kept in [t, 2t - 1]
    with pytest.raises(ValueError, match="above half the degree"):
        SecAggSettings(degree=8, threshold=3).graph(20)
