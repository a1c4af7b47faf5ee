"""The client's own defences in secure aggregation (issue 17, B1, B6 and part A's fields).

A malicious server must not be able to unmask one client by showing it a small alive set
(Bonawitz et al. CCS 2017, round 2: "if |U2| < t abort"), nor weaken the sharing below a safe
minimum; whatever the server sends, the client answers with a typed refusal (an error reply
on a SuperNode), never another exception; and a masked upload carries no per-client
plaintext metrics unless the round opts in.
"""

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from client_sdk import secagg
from strategies.secagg import SecAggSession, SecAggSettings
from strategies.stats import RoundStats
from tests.strategies.secagg_grid import SecAggGrid, vectors_for
from wire import UpdateRejected
from wire.secagg import new_private_key, public_key
from wire.secagg_protocol import (
    PRIVATE_METRICS,
    SECAGG_RECORD_KEY,
    STAGE_KEYS,
    STAGE_SHARES,
    ids_bytes,
)
from wire.secagg_vector import SecAggVectorSpec

SPEC = SecAggVectorSpec(bits=8, clip=1.0, max_weight=64, clients=10)
SETTINGS = SecAggSettings(degree=6, threshold=4, bits=8, max_weight=64)


def _after_sharing(settings: SecAggSettings = SETTINGS, seed: int = 0):
    """Ten real clients through stages 1-2 with the real server session."""
    grid = SecAggGrid(vectors_for(10, SPEC, seed=seed))
    session = SecAggSession(settings, 1, grid, RoundStats(server_round=1))
    record = session.setup(grid.get_node_ids(), np.random.default_rng(seed))
    return grid, session, record


def _train_to(node: int, record: ConfigRecord, **changes: object) -> Message:
    mine = ConfigRecord({**dict(record), **changes})
    return Message(
        content=RecordDict({SECAGG_RECORD_KEY: mine}), dst_node_id=node, message_type="train"
    )


def _upload(grid: SecAggGrid, msg: Message) -> Message:
    node = msg.metadata.dst_node_id
    return secagg.masked_reply(msg, grid.contexts[node], grid.vectors[node])


def test_a_victim_shown_an_alive_set_of_itself_refuses_to_upload():
    """B1: with alive = {X}, X would add only its self mask, whose seed the server then gets
    from X's neighbours: X's update alone. X refuses; the honest round is untouched."""
    grid, session, record = _after_sharing()
    victim = session.alive[0]
    with pytest.raises(UpdateRejected, match="below the threshold 4"):
        _upload(grid, _train_to(victim, record, alive=ids_bytes([victim])))
    # its state did not advance: no masked upload of it exists anywhere
    assert grid.contexts[victim].state[secagg.STATE_KEY]["stage"] == "shares"


@pytest.mark.parametrize(("live", "refused"), [(0, True), (3, True), (4, False), (6, False)])
def test_a_client_uploads_only_with_threshold_many_live_neighbours(live, refused):
    grid, session, record = _after_sharing(seed=1)
    victim = session.alive[0]
    alive = [victim, *session.neighbours[victim][:live]]
    msg = _train_to(victim, record, alive=ids_bytes(alive))
    if refused:
        with pytest.raises(UpdateRejected, match="neighbours are in the alive set"):
            _upload(grid, msg)
    else:
        assert _upload(grid, msg).content[SECAGG_RECORD_KEY]["stage"] == "train"


def _shares_request(grid: SecAggGrid, **fields: object) -> tuple[Message, int]:
    node = grid.get_node_ids()[0]
    keys = Message(
        content=RecordDict({SECAGG_RECORD_KEY: ConfigRecord({"round": 1, "nonce": b"n" * 16})}),
        dst_node_id=node,
        message_type=STAGE_KEYS,
    )
    secagg.advertise_keys(keys, grid.contexts[node])
    peers = sorted(grid.get_node_ids()[1:])
    record = {
        "round": 1,
        "nonce": b"n" * 16,
        "threshold": 3,
        "neighbours": ids_bytes(peers),
        "pk-c": b"".join(public_key(new_private_key()) for _ in peers),
        "pk-s": b"".join(public_key(new_private_key()) for _ in peers),
    }
    record.update(fields)
    msg = Message(
        content=RecordDict({SECAGG_RECORD_KEY: ConfigRecord(record)}),
        dst_node_id=node,
        message_type=STAGE_SHARES,
    )
    return msg, node


def test_the_honest_shares_request_of_this_helper_is_accepted():
    grid = SecAggGrid(vectors_for(5, SPEC))
    msg, node = _shares_request(grid)
    reply = secagg.share_keys(msg, grid.contexts[node])
    assert len(reply.content[SECAGG_RECORD_KEY]["to"]) == 8 * 4


@pytest.mark.parametrize(
    "fields",
    [
        {"threshold": 1},  # one holder would have the whole secret
        {"threshold": 2},  # not above half of 4
        {"threshold": True},
        {"threshold": 3.0},
        {"threshold": "3"},
        {"threshold": 2**62},
        {"threshold": -3},
        {"threshold": math.nan},
        {"neighbours": 2**62},  # bytes(2**62) would try to allocate 4 EiB
        {"neighbours": [1, 2]},
        {"neighbours": "x"},
        {"pk-c": 2**62},
        {"pk-s": 1.5},
        {"pk-c": bytes(32 * 4)},  # low-order (all-zero) keys substituted by the server
    ],
    ids=repr,
)
def test_a_client_refuses_a_hostile_or_unsafe_shares_request(fields):
    grid = SecAggGrid(vectors_for(5, SPEC))
    msg, node = _shares_request(grid, **fields)
    with pytest.raises(UpdateRejected):
        secagg.share_keys(msg, grid.contexts[node])


def test_a_client_refuses_a_single_neighbour():
    """B1: degree 1 / threshold 1 put the secret in one neighbour's box."""
    grid = SecAggGrid(vectors_for(5, SPEC))
    one = ids_bytes([grid.get_node_ids()[1]])
    key = public_key(new_private_key())
    msg, node = _shares_request(grid, neighbours=one, threshold=1, **{"pk-c": key, "pk-s": key})
    with pytest.raises(UpdateRejected, match="safe minimum"):
        secagg.share_keys(msg, grid.contexts[node])


@pytest.mark.parametrize(
    "changes",
    [
        {"bits": True},
        {"bits": 8.0},
        {"clients": 2**62},
        {"max-weight": "64"},
        {"clip": math.nan},
        {"vector": "ddp"},  # a dp vector's record without its fields
        {"vector": 3},
        {"alive": 2**62},
        {"alive": [1, 2]},
        {"round": True},
    ],
    ids=repr,
)
def test_a_client_refuses_a_hostile_train_record(changes):
    grid, session, record = _after_sharing(seed=2)
    node = session.alive[0]
    with pytest.raises(UpdateRejected):
        _upload(grid, _train_to(node, record, **changes))


def _metrics() -> MetricRecord:
    return MetricRecord({"train-loss": 0.75, "partition-id": 3, "clipped-fraction": 0.1})


@pytest.mark.parametrize("share", [False, True])
def test_masked_uploads_carry_per_client_metrics_only_when_the_round_opts_in(share):
    """B6: by default the reply holds the masked vector and its byte count, nothing that
    tells one client's loss, data partition or clipping apart."""
    settings = SecAggSettings(degree=6, threshold=4, bits=8, max_weight=64, share_metrics=share)
    grid, session, record = _after_sharing(settings, seed=3)
    node = session.alive[0]
    msg = _train_to(node, record)
    reply = secagg.masked_reply(msg, grid.contexts[node], grid.vectors[node], _metrics())
    metrics = reply.content["metrics"]
    assert "upload-bytes" in metrics
    assert all((key in metrics) == share for key in PRIVATE_METRICS)
