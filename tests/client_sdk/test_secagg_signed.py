"""Signed secure aggregation against a malicious server (issue 17, B5): keys signed with the
nodes' enrolled EC keys, and Bonawitz et al.'s consistency check of the survivor set.

The server here is the real :class:`strategies.secagg.SecAggSession` with the attacker's
edits applied to its messages in flight (or, for the equivocation, the attacker's messages
built by hand); the clients are the SDK's real handlers with real P-384 keys on disk.
"""

from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client_sdk import secagg
from client_sdk.secagg_auth import SIGNING_KEY_CONFIG, TRUSTED_KEYS_CONFIG
from strategies.secagg import SecAggSession, SecAggSettings
from strategies.stats import RoundStats
from tests.strategies.secagg_grid import SecAggGrid, plain_sum, run_round, vectors_for
from wire import UpdateRejected
from wire.secagg import new_private_key, public_key
from wire.secagg_protocol import (
    SECAGG_RECORD_KEY,
    STAGE_KEYS,
    STAGE_SHARES,
    STAGE_UNMASK,
    ids_bytes,
    node_ids,
)
from wire.secagg_vector import SecAggVectorSpec

SPEC = SecAggVectorSpec(bits=8, clip=1.0, max_weight=64, clients=8)
SETTINGS = SecAggSettings(degree=4, threshold=3, bits=8, max_weight=64)


def _write_key(folder: Path, name: str) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    (folder / f"{name}.pub").write_bytes(public + f" {name}\n".encode())


def _signed_grid(tmp_path: Path, seed: int = 0, signed: bool = True) -> SecAggGrid:
    """Eight nodes, each with its enrolled P-384 key; ``trusted/`` holds every public key."""
    grid = SecAggGrid(vectors_for(8, SPEC, seed=seed))
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    for i, node in enumerate(grid.get_node_ids()):
        _write_key(trusted, f"node-{i}")
        config = {
            SIGNING_KEY_CONFIG: str(trusted / f"node-{i}.key"),
            TRUSTED_KEYS_CONFIG: str(trusted),
        }
        grid.contexts[node] = Context(
            run_id=1,
            node_id=node,
            node_config=config if signed else {},
            state=RecordDict(),
            run_config={},
        )
    return grid


def test_a_signed_round_sums_exactly_and_runs_the_consistency_check(tmp_path):
    grid = _signed_grid(tmp_path)
    session, total, stats = run_round(grid, SETTINGS)
    assert np.array_equal(total, plain_sum(grid.vectors, grid.vectors, SPEC))
    assert not stats.rejected and not grid.client_errors and len(session.sig_keys) == 8
    stages = [r.metadata.message_type for r in grid.replies]
    assert stages.count(STAGE_UNMASK) == 16  # a view signature, then the shares, per node
    assert all("key-sig" in r.content[SECAGG_RECORD_KEY] for r in grid.replies[:8])


def _substitute_key(victim: int, sig_too: bool):
    """The attacker's edit: one of the victim's neighbours' mask keys becomes the server's
    own (and, with ``sig_too``, its signing key and a valid signature by it)."""
    attacker = ec.generate_private_key(ec.SECP384R1())
    attacker_public = attacker.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )

    def hook(msg: Message) -> Message:
        if msg.metadata.message_type == STAGE_SHARES and msg.metadata.dst_node_id == victim:
            record = msg.content[SECAGG_RECORD_KEY]
            pk_s = bytearray(record["pk-s"])
            pk_s[:32] = public_key(new_private_key())  # the server knows this private key
            record["pk-s"] = bytes(pk_s)
            if sig_too:
                sig_keys = list(record["sig-keys"])
                sig_keys[0] = attacker_public
                record["sig-keys"] = sig_keys
        return msg

    return hook


@pytest.mark.parametrize(
    ("sig_too", "why"),
    [(False, "substituted"), (True, "not an enrolled node")],
)
def test_a_substituted_key_is_detected_and_the_victim_shares_nothing(tmp_path, sig_too, why):
    grid = _signed_grid(tmp_path, seed=1)
    victim = grid.get_node_ids()[2]
    grid.on_request = _substitute_key(victim, sig_too)
    session, total, _ = run_round(grid, SETTINGS)
    assert len(grid.client_errors) == 1 and grid.client_errors[0].startswith(str(victim))
    assert why in grid.client_errors[0]
    assert victim not in session.alive
    assert all(victim not in boxes for boxes in session.sealed.values())  # sealed nothing
    assert np.array_equal(total, plain_sum(grid.vectors, session.alive, SPEC))


def test_without_signing_keys_the_same_substitution_goes_unnoticed(tmp_path):
    """The control: what B5 adds (Flower's SecAgg+ has no such check either)."""
    grid = _signed_grid(tmp_path, seed=1, signed=False)
    victim = grid.get_node_ids()[2]
    grid.on_request = _substitute_key(victim, sig_too=False)
    session = SecAggSession(SETTINGS, 1, grid, RoundStats(server_round=1))
    session.setup(grid.get_node_ids(), np.random.default_rng(1))
    assert victim in session.alive and not grid.client_errors  # it sealed shares for the fake


def test_a_server_that_strips_the_signatures_is_refused(tmp_path):
    grid = _signed_grid(tmp_path, seed=2)
    victim = grid.get_node_ids()[5]

    def strip(msg: Message) -> Message:
        if msg.metadata.message_type == STAGE_SHARES and msg.metadata.dst_node_id == victim:
            del msg.content[SECAGG_RECORD_KEY]["sig-keys"]
        return msg

    grid.on_request = strip
    session, _, _ = run_round(grid, SETTINGS)
    assert victim not in session.alive and "sig-keys" in grid.client_errors[0]


def test_a_node_whose_key_signature_is_bad_is_rejected_alone(tmp_path):
    grid = _signed_grid(tmp_path, seed=3)
    bad = grid.get_node_ids()[1]

    def forge(reply: Message) -> Message:
        if reply.metadata.src_node_id == bad and reply.metadata.message_type == STAGE_KEYS:
            reply.content[SECAGG_RECORD_KEY]["key-sig"] = b"\x30" * 100
        return reply

    grid.on_reply = forge
    session, total, stats = run_round(grid, SETTINGS)
    assert [r.node_id for r in stats.rejected] == [bad] and not grid.client_errors
    assert np.array_equal(total, plain_sum(grid.vectors, session.alive, SPEC))


def _unmask_request(grid, session, node, survivors, dropped, **extra) -> Message:
    record = ConfigRecord(
        {
            "round": 1,
            "nonce": session.nonce,
            "survivors": ids_bytes(survivors),
            "dropped": ids_bytes(dropped),
            "sealed": b"".join(session.sealed[node][u] for u in sorted(session.sealed[node])),
            "from": ids_bytes(sorted(session.sealed[node])),
            **extra,
        }
    )
    return Message(
        content=RecordDict({SECAGG_RECORD_KEY: record}), dst_node_id=node, message_type=STAGE_UNMASK
    )


def _uploaded(grid: SecAggGrid, settings: SecAggSettings = SETTINGS):
    """Stages 1-3 with the real session; every node uploaded (its state: masked)."""
    session = SecAggSession(settings, 1, grid, RoundStats(server_round=1))
    record = session.setup(grid.get_node_ids(), np.random.default_rng(4))
    grid.send_and_receive(grid.train_messages(record))
    return session


@pytest.mark.parametrize("signed", [True, False])
def test_a_lied_dropout_set_is_detected_by_the_node_it_is_shown_to(tmp_path, signed):
    """The server tells victim V that its neighbour X dropped (to collect X's mask-key share)
    while X uploaded and every other node was shown X among the survivors (whose seed shares
    it collects). Signed: V signs the lie, the neighbours' signatures are over the true set,
    V aborts and releases nothing. Unsigned (the control): V releases X's mask-key share."""
    grid = _signed_grid(tmp_path, seed=5, signed=signed)
    session = _uploaded(grid)
    everyone = sorted(grid.get_node_ids())
    victim = everyone[0]
    x = session.neighbours[victim][0]
    lie = ([v for v in everyone if v != x], [x])
    if not signed:
        reply = secagg.unmask(_unmask_request(grid, session, victim, *lie), grid.contexts[victim])
        assert x in node_ids(reply.content[SECAGG_RECORD_KEY]["key-of"])
        return
    honest = {}
    for u in session.neighbours[victim]:  # their signatures of the true set
        reply = secagg.unmask(_unmask_request(grid, session, u, everyone, []), grid.contexts[u])
        honest[u] = reply.content[SECAGG_RECORD_KEY]["view-sig"]
    first = secagg.unmask(_unmask_request(grid, session, victim, *lie), grid.contexts[victim])
    assert "view-sig" in first.content[SECAGG_RECORD_KEY]  # it signed what it was shown
    second = _unmask_request(
        grid,
        session,
        victim,
        *lie,
        **{
            "view-signers": ids_bytes(sorted(honest)),
            "view-sigs": [honest[u] for u in sorted(honest)],
        },
    )
    with pytest.raises(UpdateRejected, match="did not sign the survivor set"):
        secagg.unmask(second, grid.contexts[victim])
    # and it signs one view per round: asking it to sign the true set now is refused
    with pytest.raises(UpdateRejected, match="stage-order"):
        secagg.unmask(_unmask_request(grid, session, victim, everyone, []), grid.contexts[victim])


def test_a_view_changed_between_signing_and_unmasking_is_refused(tmp_path):
    grid = _signed_grid(tmp_path, seed=6)
    session = _uploaded(grid)
    everyone = sorted(grid.get_node_ids())
    victim, x = everyone[1], session.neighbours[everyone[1]][0]
    secagg.unmask(_unmask_request(grid, session, victim, everyone, []), grid.contexts[victim])
    later = _unmask_request(
        grid,
        session,
        victim,
        [v for v in everyone if v != x],
        [x],
        **{"view-signers": b"", "view-sigs": []},
    )
    with pytest.raises(UpdateRejected, match="differs from the one this node signed"):
        secagg.unmask(later, grid.contexts[victim])
