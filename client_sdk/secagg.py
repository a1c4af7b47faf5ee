"""The client's side of secure aggregation (SecAgg+: Bonawitz et al. CCS 2017, Bell et al. CCS
2020) over Flower's Message API.

Four stages, each checked against the round's nonce and the stage this node reached before:

1. ``query.secagg_keys``: make two X25519 key pairs (share encryption, pairwise masks) and a
   256-bit self-mask seed; reply with the public keys.
2. ``query.secagg_shares``: Shamir-share the seed and the mask private key among the
   neighbours the server assigned (threshold t), seal each neighbour's shares with AES-GCM
   under a key agreed with that neighbour; the server only relays ciphertexts.
3. the train message: quantize the update to integers (:mod:`wire.secagg_vector`), add the
   self mask and +/- one pairwise mask per neighbour still in the protocol, upload m bits per
   kept coordinate.
4. ``query.secagg_unmask``: open the relayed shares; release the seed share of a neighbour
   that uploaded and the mask-key share of one that dropped, never both for one neighbour.

Secrets stay in ``context.state`` (this node's, never sent) and are deleted after stage 4.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from client_sdk.secagg_auth import (
    Identity,
    SecAggConfigError,
    check_neighbour_keys,
    consistency_check,
    identity,
    signed_keys,
)
from wire import PAYLOAD_FIELD, UPDATE_RECORD_KEY, RejectReason, UpdateRejected
from wire.ddp_vector import vector_spec_from_config
from wire.secagg import (
    KEY_BYTES,
    MAX_SHARES,
    SHARE_BYTES,
    agree_each,
    decrypt,
    encrypt,
    mask_stream,
    new_private_key,
    new_seed,
    public_key,
    split_secret,
)
from wire.secagg_protocol import (
    MASK_PURPOSE,
    MAX_NODES,
    PRIVATE_METRICS,
    SEALED_SHARE_BYTES,
    SECAGG_RECORD_KEY,
    SHARE_METRICS_FIELD,
    SHARE_PURPOSE,
    STAGE_MASKED,
    check_graph,
    chunks,
    field_bytes,
    field_flag,
    field_ids,
    field_int,
    id_set,
    ids_bytes,
    node_ids,
    share_context,
    view_statement,
)

log = logging.getLogger(__name__)

STATE_KEY = "pollen.secagg-state"

# (private key, peers' public keys, HKDF purpose) -> one agreed key per peer
Agreement = Callable[[bytes, list[bytes], bytes], list[bytes]]


def _check(record: ConfigRecord, state: ConfigRecord | None, stage: str, before: str) -> None:
    """The server's message belongs to this node's current session and comes in order."""
    if state is None or state.get("stage") != before:
        raise UpdateRejected(
            RejectReason.STAGE_ORDER,
            f"secure aggregation stage {stage!r} arrived before stage {before!r} completed",
        )
    answered = record.get("round")
    if (
        record.get("nonce") != state["nonce"]
        or type(answered) is not int
        or answered != state["round"]
    ):
        raise UpdateRejected(
            RejectReason.REPLAYED,
            f"stage {stage!r} names another session (round {record.get('round')}) than this "
            f"node's (round {state['round']})",
        )


def _identity(context: Context) -> Identity:
    mine = identity(context)
    if mine is None:
        raise SecAggConfigError("this node's signing keys disappeared during the round")
    return mine


def _reply(msg: Message, context: Context, fields: dict) -> Message:
    record = ConfigRecord(
        {
            "stage": msg.metadata.message_type,
            "round": msg.content[SECAGG_RECORD_KEY]["round"],
            "nonce": msg.content[SECAGG_RECORD_KEY]["nonce"],
            "node-id": str(context.node_id),
            **fields,
        }
    )
    return Message(content=RecordDict({SECAGG_RECORD_KEY: record}), reply_to=msg)


def _server_record(msg: Message) -> ConfigRecord:
    record = msg.content.get(SECAGG_RECORD_KEY)
    if not isinstance(record, ConfigRecord):
        raise UpdateRejected(RejectReason.MISSING_PAYLOAD, f"no {SECAGG_RECORD_KEY!r} record")
    return record


def advertise_keys(msg: Message, context: Context) -> Message:
    """Stage 1: fresh keys for this round; only the public halves leave the node."""
    record = _server_record(msg)
    c_sk, s_sk = new_private_key(), new_private_key()
    mine = identity(context)
    context.state[STATE_KEY] = state = ConfigRecord(
        {
            "stage": "keys",
            "round": field_int(record, "round", low=0, high=2**63 - 1),
            "nonce": field_bytes(record, "nonce", most=64),
            "c-sk": c_sk,
            "s-sk": s_sk,
            "seed": new_seed(),
        }
    )
    keys = {"pk-c": public_key(c_sk), "pk-s": public_key(s_sk)}
    if mine is not None:  # signed: see client_sdk.secagg_auth
        state["signed"] = True
        keys.update(signed_keys(mine, state, context.node_id, keys["pk-c"], keys["pk-s"]))
    return _reply(msg, context, keys)


def share_keys(msg: Message, context: Context, agree: Agreement = agree_each) -> Message:
    """Stage 2: seal Shamir shares of the seed and mask key for each assigned neighbour
    (``agree``: how pairwise keys are agreed; a simulator may share them between a pair)."""
    record = _server_record(msg)
    state = context.state.get(STATE_KEY)
    _check(record, state, "shares", before="keys")
    me = context.node_id
    neighbours = field_ids(record, "neighbours", most=MAX_SHARES)
    threshold = field_int(record, "threshold", low=0, high=MAX_SHARES)
    if me in neighbours:
        raise UpdateRejected(RejectReason.BAD_SECAGG, "neighbour list holds this node")
    if neighbours != sorted(neighbours):
        raise UpdateRejected(RejectReason.BAD_SECAGG, "neighbour list must be sorted node ids")
    try:  # a safe minimum, and above half (else the server could gather both shares)
        check_graph(len(neighbours), threshold)
    except ValueError as err:
        raise UpdateRejected(RejectReason.BAD_SECAGG, f"refusing to share: {err}") from None
    pk_c = chunks(field_bytes(record, "pk-c"), KEY_BYTES, len(neighbours), "pk-c")
    pk_s = chunks(field_bytes(record, "pk-s"), KEY_BYTES, len(neighbours), "pk-s")
    if state.get("signed"):  # before anything is sealed: substituted keys abort the node
        mine = _identity(context)
        state["sig-keys"] = check_neighbour_keys(record, mine, state, neighbours, pk_c, pk_s)
    seed_shares = split_secret(state["seed"], threshold, len(neighbours))
    key_shares = split_secret(state["s-sk"], threshold, len(neighbours))
    nonce, server_round = state["nonce"], state["round"]
    keys = agree(state["c-sk"], pk_c, SHARE_PURPOSE)
    sealed = b"".join(
        encrypt(keys[i], seed_shares[i] + key_shares[i], share_context(nonce, server_round, me, j))
        for i, j in enumerate(neighbours)
    )
    state.update(
        {
            "stage": "shares",
            "threshold": threshold,
            "neighbours": ids_bytes(neighbours),
            "pk-c": b"".join(pk_c),
            "pk-s": b"".join(pk_s),
        }
    )
    return _reply(msg, context, {"to": ids_bytes(neighbours), "sealed": sealed})


@dataclass(frozen=True)
class MaskPeers:
    """What stage 3 masks with, read from this node's state once the round's record checks."""

    me: int
    seed: bytes  # the self-mask seed
    private: bytes  # the pairwise-mask private key (s-sk)
    peers: list[tuple[int, bytes]]  # live neighbours, with the public key held for each
    alive: bytes  # the round's alive set, sorted ids


@functools.lru_cache(maxsize=4)
def _alive_ids(raw: bytes) -> tuple[frozenset[int], bytes]:
    """The alive set and its sorted ids, once per round's list (the same for its clients)."""
    alive = id_set(raw)
    return alive, ids_bytes(sorted(alive))


def mask_peers(record: ConfigRecord, context: Context) -> MaskPeers:
    """Check the train message's record against this node's state (raises UpdateRejected).

    A node refuses to upload when fewer than the threshold of its neighbours are in the alive
    set (Bonawitz et al. CCS 2017, round 2, "if |U2| < t abort"; Flower's secaggplus_mod does
    the same): else a server that showed it a small alive set (only itself, say) would remove
    its self mask with the other nodes' seed shares and see its update alone."""
    state = context.state.get(STATE_KEY)
    _check(record, state, "masked input", before="shares")
    me = context.node_id
    raw = field_bytes(record, "alive", most=8 * MAX_NODES)
    alive, alive_ids = _alive_ids(raw)  # the same for the round's clients
    if me not in alive:
        raise UpdateRejected(RejectReason.BAD_SECAGG, "this node is not in the round's alive set")
    neighbours = node_ids(bytes(state["neighbours"]))
    pk_s = chunks(bytes(state["pk-s"]), KEY_BYTES, len(neighbours), "pk-s")
    live = [(j, pk) for j, pk in zip(neighbours, pk_s, strict=True) if j in alive]
    threshold = int(state["threshold"])
    if len(live) < threshold:
        raise UpdateRejected(
            RejectReason.BAD_SECAGG,
            f"only {len(live)} of this node's {len(neighbours)} neighbours are in the alive set, "
            f"below the threshold {threshold}: the server could unmask this node's update "
            "alone, so it does not upload",
        )
    return MaskPeers(me, bytes(state["seed"]), bytes(state["s-sk"]), live, alive_ids)


def mark_masked(context: Context, peers: MaskPeers) -> None:
    """Stage 3 done: stage 4 will accept only the alive set this node masked for."""
    context.state[STATE_KEY].update({"stage": "masked", "alive": peers.alive})


def mask_vector(vector: np.ndarray, record: ConfigRecord, context: Context) -> np.ndarray:
    """Stage 3: ``vector`` plus the self mask and one signed pairwise mask per live neighbour.

    ``record`` is the train message's secure-aggregation record: it names the nodes that
    finished stage 2 (``alive``); pairwise masks with neighbours outside it are not added.
    The lower node id of a pair adds the pair's mask, the higher one subtracts it.
    """
    mine = mask_peers(record, context)
    seeds = agree_each(mine.private, [pk for _, pk in mine.peers], MASK_PURPOSE)
    masked = vector + mask_stream(mine.seed, vector.size)
    for (j, _), seed in zip(mine.peers, seeds, strict=True):
        stream = mask_stream(seed, vector.size)
        masked = masked + stream if mine.me < j else masked - stream
    mark_masked(context, mine)
    return masked


def masked_reply(
    msg: Message, context: Context, vector: np.ndarray, metrics: MetricRecord | None = None
) -> Message:
    """Stage 3's reply to the train message: ``vector`` masked and packed to m bits."""
    record = _server_record(msg)
    spec = vector_spec_from_config(record)
    payload = spec.pack(mask_vector(vector, record, context))
    return masked_message(msg, context, payload, int(vector.size), metrics)


def masked_message(
    msg: Message, context: Context, payload: bytes, count: int, metrics: MetricRecord | None
) -> Message:
    """The reply carrying a masked upload of ``count`` values (``upload-bytes`` set).

    ``metrics`` keeps its per-client values (train-loss, clipped-fraction, partition-id) only
    when the round's record opts in (``share-metrics``): secure aggregation promises the
    server the sum alone, and a plaintext loss or partition id next to a masked upload says
    more about one client than the sum does."""
    record = _server_record(msg)
    info = ConfigRecord(
        {
            "stage": STAGE_MASKED,
            "round": record["round"],
            "nonce": record["nonce"],
            "node-id": str(context.node_id),
            "count": count,
        }
    )
    content = RecordDict(
        {UPDATE_RECORD_KEY: ConfigRecord({PAYLOAD_FIELD: payload}), SECAGG_RECORD_KEY: info}
    )
    if metrics is not None:
        if not field_flag(record, SHARE_METRICS_FIELD):
            metrics = MetricRecord({k: v for k, v in metrics.items() if k not in PRIVATE_METRICS})
        metrics["upload-bytes"] = len(payload)
        content["metrics"] = metrics
    return Message(content=content, reply_to=msg)


@functools.lru_cache(maxsize=4)
def _outcome_consistent(survivors: frozenset, dropped: frozenset, alive: frozenset) -> bool:
    """Survivors and dropped nodes are disjoint and all in the alive set (the same for every
    client of a round: cached, frozensets hash once)."""
    return not survivors & dropped and (survivors | dropped) <= alive


def unmask(msg: Message, context: Context, agree: Agreement = agree_each) -> Message:
    """Stage 4: open relayed shares, release one share per neighbour, then forget the secrets."""
    record = _server_record(msg)
    state = context.state.get(STATE_KEY)
    signed = state is not None and state.get("signed") is True
    _check(
        record, state, "unmask", before="viewed" if signed and "view-sigs" in record else "masked"
    )
    me = context.node_id
    survivors = id_set(field_bytes(record, "survivors", most=8 * MAX_NODES))
    dropped = id_set(field_bytes(record, "dropped", most=8 * MAX_NODES))
    alive = id_set(bytes(state["alive"]))
    threshold = int(state["threshold"])
    if not _outcome_consistent(survivors, dropped, alive) or me not in survivors:
        raise UpdateRejected(
            RejectReason.BAD_SECAGG,
            "survivor and dropped sets overlap, name nodes outside the round, or omit this node",
        )
    if len(survivors) < threshold:
        raise UpdateRejected(
            RejectReason.BAD_SECAGG,
            f"only {len(survivors)} survivors, below the threshold {threshold}: refusing to unmask",
        )
    if signed:  # the consistency check: sign this view, later see neighbours sign it too
        statement = view_statement(
            state["nonce"], state["round"], ids_bytes(set(survivors)), ids_bytes(set(dropped))
        )
        view_sig = consistency_check(record, _identity(context), state, statement, threshold)
        if view_sig is not None:
            return _reply(msg, context, {"view-sig": view_sig})
    neighbours = node_ids(bytes(state["neighbours"]))
    pk_c = dict(
        zip(
            neighbours,
            chunks(bytes(state["pk-c"]), KEY_BYTES, len(neighbours), "pk-c"),
            strict=True,
        )
    )
    senders = field_ids(record, "from", most=len(neighbours))
    sealed = chunks(field_bytes(record, "sealed"), SEALED_SHARE_BYTES, len(senders), "sealed")
    seed_of, key_of, refused = [], [], []
    seed_shares, key_shares = [], []
    known = [j for j in senders if j in pk_c and (j in survivors or j in dropped)]
    opened_keys = agree(state["c-sk"], [pk_c[j] for j in known], SHARE_PURPOSE)
    keys = dict(zip(known, opened_keys, strict=True))
    for j, box in zip(senders, sealed, strict=True):
        if j not in keys:
            refused.append(j)
            continue
        try:
            opened = decrypt(keys[j], box, share_context(state["nonce"], state["round"], j, me))
        except UpdateRejected as err:
            log.warning("secure aggregation: share from node %d refused: %s", j, err)
            refused.append(j)
            continue
        if j in survivors:
            seed_of.append(j)
            seed_shares.append(opened[:SHARE_BYTES])
        else:
            key_of.append(j)
            key_shares.append(opened[SHARE_BYTES:])
    del context.state[STATE_KEY]
    return _reply(
        msg,
        context,
        {
            "seed-of": ids_bytes(seed_of),
            "seed-shares": b"".join(seed_shares),
            "key-of": ids_bytes(key_of),
            "key-shares": b"".join(key_shares),
            "refused": ids_bytes(refused),
        },
    )
