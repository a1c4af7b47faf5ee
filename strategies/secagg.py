"""The server's side of secure aggregation (SecAgg+, Bell et al. CCS 2020) on the Message API.

:class:`SecAggSession` runs one round's protocol through Flower's ``Grid``: it collects public
keys, assigns each client its neighbours on a random k-regular graph (a Harary graph over a
random order of the nodes, as in Bell et al. §3), relays sealed shares, and after the masked
train replies asks the survivors for the shares that cancel the masks: the self-mask seed of a
client that uploaded, the mask key of one that dropped after sharing. The server only ever
adds masked vectors and removes masks from the running total, so no unmasked individual
update exists on this side. Every reply is checked for its round, stage and nonce (replays),
that its claimed node id is the sender Flower authenticated, and its lengths; a failing reply
is logged and counted, and the round goes on while enough honest clients remain.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from strategies.secagg_metrics import check_shared_metrics
from strategies.secagg_settings import SecAggFailed, SecAggSettings
from strategies.stats import Rejection, RoundStats
from wire import PAYLOAD_FIELD, UPDATE_RECORD_KEY, RejectReason, UpdateRejected
from wire.ddp_vector import VectorSpec
from wire.secagg import (
    KEY_BYTES,
    SIGNATURE_BYTES_MAX,
    SIGNING_KEY_BYTES_MAX,
    agree_each,
    combine_shares,
    mask_stream,
    signature_valid,
    usable_public_key,
)
from wire.secagg_protocol import (
    MASK_PURPOSE,
    SECAGG_RECORD_KEY,
    SHARE_METRICS_FIELD,
    STAGE_KEYS,
    STAGE_MASKED,
    STAGE_SHARES,
    STAGE_UNMASK,
    field_bytes,
    harary_neighbours,
    harary_offsets,
    ids_bytes,
    key_statement,
    shares_reply,
    threshold_core,
    unmask_reply,
    view_statement,
)
from wire.secagg_vector import SecAggVectorSpec

log = logging.getLogger(__name__)

__all__ = [
    "SecAggFailed",
    "SecAggSession",
    "SecAggSettings",
    "harary_neighbours",
    "harary_offsets",
    "threshold_core",
]


@dataclass
class SecAggSession:
    """One round of the protocol. ``setup`` before training, ``aggregate`` after it.

    Whatever a client sends, these methods raise nothing but :class:`SecAggFailed` (the round
    cannot finish): a malformed, oversized, replayed or inconsistent reply is that client's
    rejection, logged and counted, and the client leaves the round (Bonawitz et al. CCS 2017
    §4: the protocol treats a deviating client as one that dropped out)."""

    settings: SecAggSettings
    server_round: int
    grid: Grid
    stats: RoundStats
    nonce: bytes = field(default_factory=lambda: os.urandom(16))
    threshold: int = 0
    neighbours: dict[int, list[int]] = field(default_factory=dict)
    pk_s: dict[int, bytes] = field(default_factory=dict)
    alive: list[int] = field(default_factory=list)
    sealed: dict[int, dict[int, bytes]] = field(default_factory=dict)  # dst -> src -> box
    spec: VectorSpec | None = None
    # the round's vector spec for the alive count (distributed DP's); None: settings' grid
    spec_for: Callable[[int], VectorSpec] | None = None
    unmasked: int = 0  # uploads in the sum the server unmasked (0: none was)
    min_uploads: int = 0  # fewer are not unmasked (distributed DP's noise is sized for these)
    # signed rounds (client_sdk.secagg_auth): each node's public signing key, its key signature
    sig_keys: dict[int, bytes] = field(default_factory=dict)
    key_sigs: dict[int, bytes] = field(default_factory=dict)

    # ----------------------------------------------------------------- messages
    def _record(self, **fields: object) -> ConfigRecord:
        return ConfigRecord({"round": self.server_round, "nonce": self.nonce, **fields})

    def _ask(self, stage: str, records: dict[int, ConfigRecord]) -> dict[int, ConfigRecord]:
        """Send each node its record; return the valid replies' records by sender."""
        messages = [
            Message(
                content=RecordDict({SECAGG_RECORD_KEY: record}),
                dst_node_id=node,
                message_type=stage,
                group_id=str(self.server_round),
            )
            for node, record in records.items()
        ]
        valid: dict[int, ConfigRecord] = {}
        for reply in self.grid.send_and_receive(messages, timeout=self.settings.timeout):
            node = reply.metadata.src_node_id
            if node not in records or node in valid:
                continue  # not asked, or answered twice: the first answer stands
            if reply.has_error():
                self.stats.failures.append(Rejection(node, "client-error", reply.error.reason))
                log.warning("secure aggregation %s: node %d failed: %s", stage, node, reply.error)
                continue
            try:
                valid[node] = self.check(reply, stage)
            except UpdateRejected as err:
                self.reject(node, err, stage)
        return valid

    def check(self, reply: Message, stage: str) -> ConfigRecord:
        """The reply's record if it answers this session's ``stage`` from its true sender."""
        record = reply.content.get(SECAGG_RECORD_KEY)
        if not isinstance(record, ConfigRecord):
            raise UpdateRejected(RejectReason.MISSING_PAYLOAD, f"no {SECAGG_RECORD_KEY!r} record")
        if record.get("node-id") != str(reply.metadata.src_node_id):
            raise UpdateRejected(
                RejectReason.IDENTITY_MISMATCH,
                f"claims to be node {record.get('node-id')!r:.40} but comes from node "
                f"{reply.metadata.src_node_id}",
            )
        answered = record.get("round")
        if (
            record.get("stage") != stage
            or type(answered) is not int  # a bool or a float equal to the round is not one
            or answered != self.server_round
            or record.get("nonce") != self.nonce
        ):
            raise UpdateRejected(
                RejectReason.REPLAYED,
                f"answers stage {record.get('stage')!r:.40} of round {answered!r:.40}, "
                f"not stage {stage!r} of this round's session {self.server_round}",
            )
        return record

    def reject(self, node: int, err: UpdateRejected, stage: str) -> None:
        self.stats.rejected.append(Rejection(node, err.reason.value, f"{stage}: {err.detail}"))
        log.warning("secure aggregation %s: rejected node %d: %s", stage, node, err)

    # ----------------------------------------------------------------- stages 1-2
    def setup(self, nodes: Iterable[int], rng: np.random.Generator) -> ConfigRecord:
        """Keys and shares; the record for the train messages (raises SecAggFailed)."""
        nodes = sorted(nodes)
        keys = self._ask(STAGE_KEYS, {v: self._record() for v in nodes})
        pk_c: dict[int, bytes] = {}
        signed = any("sig-key" in record for record in keys.values())  # then all must be
        for node, record in keys.items():
            try:
                c = field_bytes(record, "pk-c", size=KEY_BYTES)
                s = field_bytes(record, "pk-s", size=KEY_BYTES)
                if not (usable_public_key(c) and usable_public_key(s)):
                    raise UpdateRejected(
                        RejectReason.BAD_SECAGG,
                        "a public key is a low-order X25519 point (e.g. all zeros): every "
                        "neighbour's key agreement with it would fail",
                    )
                if signed:  # a bad signature is its sender's fault, not its neighbours'
                    statement = key_statement(self.nonce, self.server_round, node, c, s)
                    sig_key = field_bytes(record, "sig-key", most=SIGNING_KEY_BYTES_MAX)
                    sig = self._signature(record, "key-sig", sig_key, statement)
                    self.sig_keys[node], self.key_sigs[node] = sig_key, sig
            except UpdateRejected as err:
                self.reject(node, err, STAGE_KEYS)
                continue
            pk_c[node], self.pk_s[node] = c, s
        ready = sorted(pk_c)
        try:
            degree, self.threshold = self.settings.graph(len(ready))
        except ValueError as err:
            raise SecAggFailed(f"{len(ready)} clients advertised keys: {err}") from None
        self.neighbours = harary_neighbours(ready, degree, rng)
        requests = {
            v: self._record(
                threshold=self.threshold,
                neighbours=ids_bytes(self.neighbours[v]),
                **{
                    "pk-c": b"".join(pk_c[u] for u in self.neighbours[v]),
                    "pk-s": b"".join(self.pk_s[u] for u in self.neighbours[v]),
                    **self._signed_keys(self.neighbours[v]),
                },
            )
            for v in ready
        }
        shared: list[int] = []
        for node, record in self._ask(STAGE_SHARES, requests).items():
            try:
                boxes = shares_reply(record, self.neighbours[node])
            except UpdateRejected as err:
                self.reject(node, err, STAGE_SHARES)
                continue  # a refused client leaves the round: it is not in the alive set
            for dst, box in boxes.items():
                self.sealed.setdefault(dst, {})[node] = box
            shared.append(node)
        self.alive = threshold_core(self.neighbours, shared, self.threshold)
        for node in sorted(set(shared) - set(self.alive)):
            self.stats.failures.append(
                Rejection(
                    node, "secagg-isolated", "fewer neighbours than the threshold shared keys"
                )
            )
        if len(self.alive) < self.threshold:
            raise SecAggFailed(
                f"{len(self.alive)} clients shared keys with enough neighbours, below the "
                f"threshold {self.threshold}"
            )
        if self.spec_for is not None:
            self.spec = self.spec_for(len(self.alive))
        else:
            self.spec = SecAggVectorSpec(
                bits=self.settings.bits,
                clip=self.settings.clip,
                max_weight=self.settings.max_weight,
                clients=len(self.alive),
            )
        optin = {SHARE_METRICS_FIELD: True} if self.settings.share_metrics else {}
        return self._record(alive=ids_bytes(self.alive), **self.spec.as_config(), **optin)

    # ----------------------------------------------------------------- stages 3-4
    def aggregate(self, replies: Iterable[Message], count: int) -> np.ndarray:
        """Sum the masked uploads and unmask the total: the plain sum of the clients' vectors."""
        if self.spec is None:
            raise SecAggFailed("no secure-aggregation setup for this round")
        total = np.zeros(count, dtype=np.uint32)
        survivors: list[int] = []
        seen: set[int] = set()  # survivors, for O(1) repeat checks
        alive = set(self.alive)
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                self.stats.failures.append(Rejection(node, "client-error", reply.error.reason))
                continue
            try:
                self.check(reply, STAGE_MASKED)
                if node not in alive or node in seen:
                    raise UpdateRejected(RejectReason.BAD_SECAGG, "not in this round's alive set")
                update = reply.content.get(UPDATE_RECORD_KEY)
                if not isinstance(update, ConfigRecord):
                    raise UpdateRejected(RejectReason.MISSING_PAYLOAD, "no masked upload record")
                payload = field_bytes(update, PAYLOAD_FIELD)
                if self.settings.share_metrics:
                    check_shared_metrics(reply)
                total += self.spec.unpack(payload, count)  # masked: wrap-around is the point
            except UpdateRejected as err:
                self.reject(node, err, STAGE_MASKED)
                continue
            self.stats.upload_bytes.append(len(payload))
            survivors.append(node)
            seen.add(node)
        if len(survivors) < self.threshold:
            raise SecAggFailed(
                f"{len(survivors)} masked uploads, below the threshold {self.threshold}"
            )
        if len(survivors) < self.min_uploads:  # unmasking them would release too little noise
            raise SecAggFailed(
                f"{len(survivors)} masked uploads, fewer than the {self.min_uploads} the "
                f"distributed DP noise was sized for (dp-dropout-tolerance); not unmasked"
            )
        dropped = sorted(alive - set(survivors))
        self._unmask(total, sorted(survivors), dropped)
        total &= np.uint32(self.spec.modulus_mask)
        self.unmasked = len(survivors)  # the server has seen this sum, used or not
        try:  # a client that masked values off the spec's range is caught here (not who)
            self.spec.check_sum(total, len(survivors))
        except ValueError as err:
            raise SecAggFailed(str(err)) from None
        self.stats.accepted = len(survivors)
        return total

    def _unmask(self, total: np.ndarray, survivors: list[int], dropped: list[int]) -> None:
        requests, senders_of = {}, {}
        survivor_ids, dropped_ids = ids_bytes(survivors), ids_bytes(dropped)  # once, not per node
        known = set(survivors) | set(dropped)
        view_sigs = self._consistency(survivors, survivor_ids, dropped_ids)
        for v in survivors if view_sigs is None else sorted(view_sigs):
            if view_sigs is not None:  # the neighbours' signatures of the same view
                signers = [u for u in self.neighbours[v] if u in view_sigs]
                confirmed = {
                    "view-signers": ids_bytes(signers),
                    "view-sigs": [view_sigs[u] for u in signers],
                }
            senders_of[v] = senders = sorted(u for u in self.sealed.get(v, {}) if u in known)
            requests[v] = self._record(
                survivors=survivor_ids,
                dropped=dropped_ids,
                sealed=b"".join(self.sealed[v][u] for u in senders),
                **{"from": ids_bytes(senders)},
                **({} if view_sigs is None else confirmed),
            )
        answers = self._ask(STAGE_UNMASK, requests)
        seed_shares: dict[int, dict[int, bytes]] = {}
        key_shares: dict[int, dict[int, bytes]] = {}
        owners_of = {"seed": set(survivors), "key": set(dropped)}
        for holder, record in answers.items():
            try:
                opened = unmask_reply(record, senders_of[holder], owners_of)
            except UpdateRejected as err:
                self.reject(holder, err, STAGE_UNMASK)  # none of its shares is used
                continue
            for kind, into in (("seed", seed_shares), ("key", key_shares)):
                for owner, share in opened[kind]:
                    into.setdefault(owner, {})[self.neighbours[owner].index(holder)] = share
            for src in opened["refused"]:
                self.stats.rejected.append(
                    Rejection(src, RejectReason.SHARE_TAMPERED.value, f"refused by {holder}")
                )
        for owner in survivors:
            seed = self._reconstruct(seed_shares, owner, "self-mask seed")
            total -= mask_stream(seed, total.size)
        alive_after = set(survivors)  # membership per dropped node's neighbour: O(1)
        for owner in dropped:
            secret = self._reconstruct(key_shares, owner, "mask key")
            peers = [peer for peer in self.neighbours[owner] if peer in alive_after]
            seeds = agree_each(secret, [self.pk_s[peer] for peer in peers], MASK_PURPOSE)
            for peer, seed in zip(peers, seeds, strict=True):
                stream = mask_stream(seed, total.size)
                if peer < owner:  # the survivor added +stream for this pair; take it out
                    total -= stream
                else:
                    total += stream

    # ----------------------------------------------------------------- signed rounds
    @staticmethod
    def _signature(record: ConfigRecord, key: str, sig_key: bytes, statement: bytes) -> bytes:
        sig = field_bytes(record, key, most=SIGNATURE_BYTES_MAX)
        if not signature_valid(sig_key, sig, statement):
            raise UpdateRejected(RejectReason.BAD_SECAGG, f"{key} is not its signing key's")
        return sig

    def _signed_keys(self, peers: list[int]) -> dict[str, list[bytes]]:
        if not self.sig_keys:
            return {}
        return {
            "sig-keys": [self.sig_keys[u] for u in peers],
            "key-sigs": [self.key_sigs[u] for u in peers],
        }

    def _consistency(
        self, survivors: list[int], survivor_ids: bytes, dropped_ids: bytes
    ) -> dict[int, bytes] | None:
        """Bonawitz et al.'s ConsistencyCheck in a signed round: each survivor signs the
        survivor and dropped sets; the valid signatures by node (None: an unsigned round)."""
        if not self.sig_keys:
            return None
        view = self._record(survivors=survivor_ids, dropped=dropped_ids)
        statement = view_statement(self.nonce, self.server_round, survivor_ids, dropped_ids)
        signed: dict[int, bytes] = {}
        for node, record in self._ask(STAGE_UNMASK, {v: view for v in survivors}).items():
            try:
                signed[node] = self._signature(record, "view-sig", self.sig_keys[node], statement)
            except UpdateRejected as err:
                self.reject(node, err, STAGE_UNMASK)
        return signed

    def _reconstruct(self, shares: dict[int, dict[int, bytes]], owner: int, what: str) -> bytes:
        held = shares.get(owner, {})
        if len(held) < self.threshold:
            raise SecAggFailed(
                f"the {what} of node {owner} has {len(held)} shares, below the threshold "
                f"{self.threshold}"
            )
        try:
            return combine_shares(held, self.threshold)
        except UpdateRejected as err:  # shares that are not one polynomial's: a lying holder
            raise SecAggFailed(f"the {what} of node {owner} cannot be rebuilt: {err}") from None
