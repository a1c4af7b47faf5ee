"""Pollen's batched simulation engine: a Flower ``Grid`` whose virtual nodes train K at a time.

The ServerApp and its strategies run unchanged: they create Messages, push them and pull
replies as on any Grid. This module is the transport: node contexts, message ids, and which
path answers each message. Train messages that share one content (a strategy sends the same
RecordDict to every sampled node) are one round's clients: their data comes from
:mod:`.caches` and :class:`.chunks.ChunkRunner` trains and answers them K at a time. Every
other message (query, evaluate) and every train message of a Task vmap cannot run (BatchNorm
buffers, dropout, a loss that is not a per-sample mean) goes through the SDK's own ClientApp,
one client at a time, with the reason logged once. Replies are built by the SDK's client-round
code (:mod:`client_sdk.client_round`), or byte-for-byte what it would build (:mod:`.replies`).
Secure aggregation's share and unmask stages run the SDK's own functions with each pair's keys
agreed once (:mod:`.agreements`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from client_sdk import DataProvider, RoundPlan, build_client_app, plan_round
from client_sdk.client_round import TaskSource, UpdateHook, share_keys, unmask
from simulations.batched.caches import ClientCaches, data_key
from simulations.batched.chunks import ChunkRunner, Ready
from simulations.batched.flower_private import stamp_message_id
from simulations.batched.layouts import LayoutTuner
from simulations.batched.memory import MemoryPlanner
from simulations.batched.replies import ReplyOptions, error_reply
from simulations.batched.secure import SecureRound
from simulations.batched.stats import EngineStats
from simulations.batched.training import NotVectorizable, vectorization_blocker
from wire import keys
from wire.secagg_protocol import STAGE_KEYS, STAGE_SHARES, STAGE_UNMASK

log = logging.getLogger(__name__)

__all__ = ["BatchedGrid", "EngineStats"]


class BatchedGrid(Grid):
    """``num_nodes`` virtual SuperNodes in this process; node i holds partition i."""

    def __init__(
        self,
        *,
        task: TaskSource,
        data: DataProvider,
        num_nodes: int,
        update_hook: UpdateHook | None = None,
        device: torch.device | None = None,
        clients_per_batch: int = 0,
        seed: int = 0,
        cache_bytes: int | None = None,
        pool_uploads: bool = True,
        encode_on_device: bool = True,
        pool_quantized: bool | None = None,
    ) -> None:
        self._task, self._hook = task, update_hook
        # send a chunk's uncompressed updates as one pool when the server allows it (.replies)
        self.pool_uploads = pool_uploads
        # quantized and masked (secure) updates encoded for a chunk at once (.codec, .secure);
        # False: by the SDK's encoder, client by client
        self.encode_on_device = encode_on_device
        self._client_app = build_client_app(
            task, data, update_hook=update_hook, allow_seeded_noise=True
        )
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # quantized updates pooled too (the mean of what the server would decode): by default
        # on CUDA only, where it removes the server's per-client decode; on a CPU it saved
        # nothing and the server's summation order changes, so compressed runs there keep
        # matching Flower's engine bit for bit
        self.pool_quantized = (
            self.device.type == "cuda" if pool_quantized is None else pool_quantized
        )
        self.memory = MemoryPlanner(self.device, fixed_k=clients_per_batch)
        self.stats = EngineStats()
        self.caches = ClientCaches(data, self.device, cache_bytes)
        self.layouts = LayoutTuner(self.device)
        self._runner = ChunkRunner(
            device=self.device,
            memory=self.memory,
            caches=self.caches,
            tuner=self.layouts,
            stats=self.stats,
        )
        self._run: Run | None = None
        # Random 63-bit node ids, as a SuperLink hands out, but reproducible from the seed.
        ids = np.random.default_rng([seed, 0x6E6F6465]).choice(2**62, size=num_nodes, replace=False)
        self._contexts = {
            int(nid): Context(
                run_id=0,
                node_id=int(nid),
                node_config={keys.PARTITION_ID: pid, keys.NUM_PARTITIONS: num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for pid, nid in enumerate(ids.tolist())
        }
        self._secure = SecureRound()  # secure aggregation's pairwise keys and masks (.secure)
        self._pending: dict[str, Message] = {}
        self._replies: dict[str, Message] = {}
        self._blockers: dict[str, str | None] = {}

    # ------------------------------------------------------------------ Grid interface
    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        if self._run is None:
            raise RuntimeError("BatchedGrid.set_run() was not called")
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            message_id = str(uuid.uuid4())
            stamp_message_id(msg, message_id)
            self._pending[message_id] = msg
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        wanted = list(message_ids)
        todo = [self._pending.pop(mid) for mid in wanted if mid in self._pending]
        if todo:
            self._deliver(todo)
        return [self._replies.pop(mid) for mid in wanted if mid in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Every virtual node answers at once; ``timeout`` cannot expire in simulated time."""
        return self.pull_messages(self.push_messages(messages))

    # ------------------------------------------------------------------ delivery
    def _deliver(self, messages: list[Message]) -> None:
        # one round's train messages share one content object (what the strategy sent);
        # keyed by identity, as each message holds its content alive while it is grouped
        rounds: dict[int, list[Message]] = {}
        if any(m.metadata.message_type == STAGE_KEYS for m in messages):
            self._secure = SecureRound()  # fresh keys: a new secure round
        for msg in messages:
            if msg.metadata.dst_node_id not in self._contexts:
                err = LookupError(f"node {msg.metadata.dst_node_id} is not connected")
                self._replies[msg.metadata.message_id] = error_reply(msg, err)
            elif msg.metadata.message_type == MessageType.TRAIN:
                rounds.setdefault(id(msg.content), []).append(msg)
            else:
                self._loop([msg])
        for group in rounds.values():
            self._train(group)

    def _loop(self, messages: list[Message]) -> None:
        """The reference path: the SDK's ClientApp, one client after the other."""
        for msg in messages:
            context = self._contexts[msg.metadata.dst_node_id]
            stage = msg.metadata.message_type
            try:
                if self.encode_on_device and stage in (STAGE_SHARES, STAGE_UNMASK):
                    # the SDK's own stage, its pairwise keys agreed once per pair (.agreements)
                    handler = share_keys if stage == STAGE_SHARES else unmask
                    reply = handler(msg, context, self._secure.agreements.agree_each)
                else:
                    reply = self._client_app(msg, context)
            except Exception as err:  # a failing client answers with an error, as a node does
                log.warning("node %d: %s", msg.metadata.dst_node_id, err)
                reply = error_reply(msg, err)
            self._replies[msg.metadata.message_id] = reply
            if msg.metadata.message_type == MessageType.TRAIN:
                self.stats.looped_clients += 1

    def _fall_back(self, messages: list[Message], reason: str) -> None:
        if reason != self.stats.fallback_reason:
            log.warning("batched engine: training clients one by one: %s", reason)
            self.stats.fallback_reason = reason
        self._loop(messages)

    def _train(self, messages: list[Message]) -> None:
        try:
            plan = plan_round(self._task, messages[0])
        except Exception:  # each client reports the bad config itself
            self._loop(messages)
            return
        if (blocker := self._blocker(plan)) is not None:
            self._fall_back(messages, blocker)
            return
        ready: list[Ready] = []
        data_started, key = time.perf_counter(), data_key(plan)
        for msg in messages:
            node = msg.metadata.dst_node_id
            context = self._contexts[node]
            try:
                ready.append((msg, context, self.caches.client_data(key, node, context, plan)))
            except Exception as err:
                self._replies[msg.metadata.message_id] = error_reply(msg, err)
        self.stats.data_seconds += time.perf_counter() - data_started
        options = ReplyOptions(
            hook=self._hook,
            pool=self.pool_uploads,
            on_device=self.encode_on_device,
            pool_quantized=self.pool_quantized,
        )
        try:
            self._runner.run(plan, ready, options, self._secure, self._replies)
        except NotVectorizable as err:
            self._fall_back(
                [m for m, _, _ in ready if m.metadata.message_id not in self._replies], str(err)
            )

    def _blocker(self, plan: RoundPlan) -> str | None:
        name = plan.task.name
        if name not in self._blockers:
            self._blockers[name] = vectorization_blocker(plan.task)
        return self._blockers[name]
