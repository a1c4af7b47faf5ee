"""Pollen's batched simulation engine: a Flower ``Grid`` whose virtual nodes train K at a time.

The ServerApp and its strategies run unchanged: they create Messages, push them and pull
replies as on any Grid. Train messages that share one content (a strategy sends the same model
and config to every sampled node) are trained together by :mod:`.training`; every other
message (query, evaluate) and every train message of a Task vmap cannot run (BatchNorm
buffers, dropout, a loss that is not a per-sample mean) goes through the SDK's own ClientApp,
one client at a time, with the reason logged once. Replies are built by the same SDK code as
on a device (:func:`client_sdk.rounds.upload_reply`), or byte-for-byte what it would build; when
the server's strategy needs only the weighted mean, a chunk's uncompressed updates travel as
one pool (:mod:`.replies`, :mod:`wire.pooling`), unless ``pool_uploads`` is off. Chunks are
formed in descending order of client size, so clients of unequal sizes train beside others of
about their own step count (:func:`.training.train_clients` drops each one as it finishes). Secure
aggregation's share and unmask stages run the SDK's own functions with each pair's keys agreed
once (:mod:`.agreements`), and a secure round's masks are computed for all its clients before
the first chunk trains (:mod:`.secure`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from client_sdk import ClientData, DataProvider, build_client_app, secagg
from client_sdk.rounds import (
    RoundPlan,
    TaskSource,
    UpdateHook,
    partition_id_of,
    plan_round,
)
from simulations.batched.layouts import cudnn_benchmark, pick_layout
from simulations.batched.memory import MemoryPlanner
from simulations.batched.replies import chunk_replies, error_reply
from simulations.batched.secure import SecureRound, round_masks
from simulations.batched.training import (
    KERNELS,
    ClientBatch,
    NotVectorizable,
    check_sample_mean_loss,
    default_layout,
    stack_clients,
    train_clients,
    vectorization_blocker,
)
from wire.secagg_protocol import STAGE_KEYS, STAGE_SHARES, STAGE_UNMASK

log = logging.getLogger(__name__)


@dataclass
class EngineStats:
    """What the engine did, for ``summary.json``."""

    vectorized_clients: int = 0
    looped_clients: int = 0
    fallback_reason: str = ""
    train_seconds: float = 0.0  # vmapped local training, device synchronised
    reply_seconds: float = 0.0  # deltas to host, encoding (secure masks too), reply Messages
    pooled_clients: int = 0  # replies sent inside a pool (the server allowed pooling)
    sdk_encoded_clients: int = 0  # vectorized clients whose payload the SDK encoded one by one
    data_seconds: float = 0.0  # client data: generation (first use), padding, upload to device
    layout: str = ""  # grouped | channels-last | packed | unfold (training.LAYOUTS)
    layout_seconds: dict[str, float] = field(default_factory=dict)  # pick_layout's timings
    cudnn_benchmark: bool = False  # CUDA: the layout trains fastest in cuDNN's benchmark mode
    chunk_sizes: list[int] = field(default_factory=list)


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
        self._task, self._data, self._hook = task, data, update_hook
        # send a chunk's uncompressed updates as one pool when the server allows it (.replies)
        self.pool_uploads = pool_uploads
        # quantized and masked (secure) updates encoded for a chunk at once (.codec, .secure);
        # False: by the SDK's encoder, client by client
        self.encode_on_device = encode_on_device
        self._client_app = build_client_app(task, data, update_hook=update_hook)
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # quantized updates pooled too (the mean of what the server would decode): by default
        # on CUDA only, where it removes the server's per-client decode; on a CPU it saved
        # nothing (2000 clients: 691 against 722 us each) and the server's summation order
        # changes, so compressed runs there keep matching Flower's engine bit for bit
        self.pool_quantized = (
            self.device.type == "cuda" if pool_quantized is None else pool_quantized
        )
        self.memory = MemoryPlanner(self.device, fixed_k=clients_per_batch)
        self.stats = EngineStats()
        self._run: Run | None = None
        # Random 63-bit node ids, as a SuperLink hands out, but reproducible from the seed.
        ids = np.random.default_rng([seed, 0x6E6F6465]).choice(2**62, size=num_nodes, replace=False)
        self._contexts = {
            int(nid): Context(
                run_id=0,
                node_id=int(nid),
                node_config={"partition-id": pid, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for pid, nid in enumerate(ids.tolist())
        }
        self._secure = SecureRound()  # secure aggregation's pairwise keys and masks (.secure)
        self._pending: dict[str, Message] = {}
        self._replies: dict[str, Message] = {}
        self._blockers: dict[str, str | None] = {}
        self._data_cache: dict[tuple, ClientData] = {}
        self._batch_cache: dict[tuple, ClientBatch] = {}
        self._cache_budget = cache_bytes
        self._cached_bytes = 0

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
            # Flower's own in-memory Grid stamps message ids the same way.
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            self._pending[msg.metadata.message_id] = msg
            ids.append(msg.metadata.message_id)
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
        groups: dict[int, list[Message]] = {}
        if any(m.metadata.message_type == STAGE_KEYS for m in messages):
            self._secure = SecureRound()  # fresh keys: a new secure round
        for msg in messages:
            if msg.metadata.dst_node_id not in self._contexts:
                err = LookupError(f"node {msg.metadata.dst_node_id} is not connected")
                self._replies[msg.metadata.message_id] = error_reply(msg, err)
            elif msg.metadata.message_type == MessageType.TRAIN:
                groups.setdefault(id(msg.content), []).append(msg)
            else:
                self._loop([msg])
        for group in groups.values():
            self._train(group)

    def _loop(self, messages: list[Message]) -> None:
        """The reference path: the SDK's ClientApp, one client after the other."""
        for msg in messages:
            context = self._contexts[msg.metadata.dst_node_id]
            stage = msg.metadata.message_type
            try:
                if self.encode_on_device and stage in (STAGE_SHARES, STAGE_UNMASK):
                    # the SDK's own stage, its pairwise keys agreed once per pair (.agreements)
                    handler = secagg.share_keys if stage == STAGE_SHARES else secagg.unmask
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
        ready: list[tuple[Message, ClientData]] = []
        data_started, key = time.perf_counter(), self._data_key(plan)
        for msg in messages:
            try:
                ready.append((msg, self._client_data(msg, plan, key)))
            except Exception as err:
                self._replies[msg.metadata.message_id] = error_reply(msg, err)
        self.stats.data_seconds += time.perf_counter() - data_started
        try:
            self._train_chunks(plan, ready)
        except NotVectorizable as err:
            self._fall_back(
                [m for m, _ in ready if m.metadata.message_id not in self._replies], str(err)
            )

    def _blocker(self, plan: RoundPlan) -> str | None:
        name = plan.task.name
        if name not in self._blockers:
            self._blockers[name] = vectorization_blocker(plan.task)
        return self._blockers[name]

    def _client_data(self, msg: Message, plan: RoundPlan, key: tuple) -> ClientData:
        node = msg.metadata.dst_node_id
        if (key, node) not in self._data_cache:
            self._data_cache[key, node] = self._data(self._contexts[node], plan.config)
        return self._data_cache[key, node]

    @staticmethod
    def _data_key(plan: RoundPlan) -> tuple:
        c = plan.config
        return (c.get("task"), c.get("partition"), c.get("seed"), c.get("num-partitions"))

    def _train_chunks(self, plan: RoundPlan, ready: list[tuple[Message, ClientData]]) -> None:
        if not ready:
            return
        first = ready[0][1]
        check_sample_mean_loss(plan.task, first.x_train, first.y_train)
        n_max = max(len(d.y_train) for _, d in ready)
        self.memory.estimate(
            plan.task.build_model(seed=0), first.x_train, plan.schedule.batch_size, n_max
        )
        # the largest clients first (so each chunk holds clients of about the same step count,
        # whose shorter members training drops as they finish), then partition order: a
        # chunk of the same clients finds its data cached on device in the next round
        ready = sorted(
            ready,
            key=lambda item: (
                -len(item[1].y_train),
                partition_id_of(self._contexts[item[0].metadata.dst_node_id]),
            ),
        )
        if self.encode_on_device and self._hook is None:  # secure: the round's masks at once
            started = time.perf_counter()
            contexts = [self._contexts[m.metadata.dst_node_id] for m, _ in ready]
            self._secure.masks = round_masks(
                plan, [m for m, _ in ready], contexts, self.device, self._secure.agreements
            )
            self.stats.reply_seconds += time.perf_counter() - started
        try:
            self._train_ordered(plan, ready)
        finally:
            self._secure.masks = None

    def _train_ordered(self, plan: RoundPlan, ready: list[tuple[Message, ClientData]]) -> None:
        done = 0
        while done < len(ready):
            k = self.memory.clients_per_chunk(len(ready) - done)
            chunk = ready[done : done + k]
            try:
                self._train_chunk(plan, chunk)
            except torch.cuda.OutOfMemoryError:
                smaller = self.memory.shrink_after_oom(k)
                log.warning(
                    "batched engine: out of GPU memory at K=%d; retrying with %d", k, smaller
                )
                self._batch_cache.clear()
                self._cached_bytes = 0
                torch.cuda.empty_cache()
                if k == 1:
                    raise
                continue
            done += len(chunk)

    def _train_chunk(self, plan: RoundPlan, chunk: list[tuple[Message, ClientData]]) -> None:
        contexts = [self._contexts[m.metadata.dst_node_id] for m, _ in chunk]
        pids = [partition_id_of(c) for c in contexts]
        seeds = plan.seeds_for(pids)
        before = self.memory.start_chunk()
        data_started = time.perf_counter()
        self.stats.layout = self.stats.layout or default_layout(self.device)
        batch = self._device_batch(plan, pids, [d for _, d in chunk])
        self.stats.data_seconds += time.perf_counter() - data_started
        try:
            if not self.stats.layout:  # CUDA: measured once per run
                if batch.x.dim() == 5:
                    picked = pick_layout(plan, batch, seeds, self.device)
                    self.stats.layout, self.stats.cudnn_benchmark, times = picked
                    self.stats.layout_seconds = {n: round(t, 4) for n, t in times.items()}
                    log.info("batched engine: layout %s (timed: %s)", self.stats.layout, times)
                else:
                    self.stats.layout = "grouped"
            started = time.perf_counter()
            with cudnn_benchmark(self.stats.cudnn_benchmark):
                trained = train_clients(plan, batch, seeds, self.device, layout=self.stats.layout)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.stats.train_seconds += time.perf_counter() - started
        except (RuntimeError, TypeError, ValueError) as err:
            if isinstance(err, torch.cuda.OutOfMemoryError):
                raise
            if self.stats.layout in KERNELS and batch.x.dim() == 5:  # e.g. a .view()ing CNN
                log.warning(
                    "batched engine: the %s kernels could not run the Task (%s: %s); "
                    "using vmap's own batching rules",
                    self.stats.layout,
                    type(err).__name__,
                    err,
                )
                self.stats.layout = "grouped"
                self._train_chunk(plan, chunk)
                return
            raise NotVectorizable(
                f"vmap could not run the Task: {type(err).__name__}: {err}"
            ) from err
        self.memory.end_chunk(len(chunk), before)
        self.stats.chunk_sizes.append(len(chunk))
        started = time.perf_counter()
        messages = [m for m, _ in chunk]
        replies, pooled, by_sdk = chunk_replies(
            plan,
            messages,
            contexts,
            trained,
            self.device,
            self._hook,
            pool=self.pool_uploads,
            on_device=self.encode_on_device,
            secure=self._secure,
            pool_quantized=self.pool_quantized,
        )
        self.stats.pooled_clients += pooled
        self.stats.sdk_encoded_clients += by_sdk
        for msg, reply in zip(messages, replies, strict=True):
            self._replies[msg.metadata.message_id] = reply
        self.stats.reply_seconds += time.perf_counter() - started
        self.stats.vectorized_clients += len(chunk)

    def _device_batch(
        self, plan: RoundPlan, pids: list[int], data: list[ClientData]
    ) -> ClientBatch:
        channels_last = self.stats.layout == "packed"
        key = (*self._data_key(plan), channels_last, *pids)
        if key in self._batch_cache:
            return self._batch_cache[key]
        batch = stack_clients(data, self.device, channels_last=channels_last, task=plan.task)
        budget = self._cache_budget
        if budget is None:
            budget = int(
                0.3
                * (
                    torch.cuda.mem_get_info(self.device)[0]
                    if self.device.type == "cuda"
                    else 2 << 30
                )
            )
        if self._cached_bytes + batch.nbytes <= budget:
            self._batch_cache[key] = batch
            self._cached_bytes += batch.nbytes
        return batch
