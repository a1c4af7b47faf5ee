"""The chunk runner: one round's train messages trained K clients at a time, then answered.

Clients are sorted largest first (so each chunk holds clients of about the same step count,
whose shorter members training drops as they finish, :func:`.training.train_clients`), then
in partition order, so a chunk of the same clients finds its data cached on the device in the
next round (:mod:`.caches`). K comes from the memory planner (:mod:`.memory`); a chunk that
runs out of GPU memory is retried with K halved. Each chunk trains in the layout the tuner
chose (:mod:`.layouts`) and its replies are built by :func:`.replies.chunk_replies`. A secure
round's masks are computed for all its clients before the first chunk trains (:mod:`.secure`).
"""

from __future__ import annotations

import logging
import time

import torch
from flwr.app import Context, Message

from client_sdk import ClientData, RoundPlan, partition_id_of
from simulations.batched.caches import ClientCaches
from simulations.batched.chunk_job import ChunkJob
from simulations.batched.layouts import LayoutTuner, cudnn_benchmark
from simulations.batched.memory import MemoryPlanner
from simulations.batched.replies import ReplyOptions, chunk_replies
from simulations.batched.secure import SecureRound, round_masks
from simulations.batched.stats import EngineStats
from simulations.batched.training import NotVectorizable, check_sample_mean_loss, train_clients

log = logging.getLogger(__name__)

# (message, its node's context, the node's data): one client of a round, ready to train
Ready = tuple[Message, Context, ClientData]


class ChunkRunner:
    """Trains a round's ready clients chunk by chunk and stores each reply in ``outbox``
    (message id -> reply), updating ``stats``."""

    def __init__(
        self,
        *,
        device: torch.device,
        memory: MemoryPlanner,
        caches: ClientCaches,
        tuner: LayoutTuner,
        stats: EngineStats,
    ) -> None:
        self.device, self.memory, self.caches = device, memory, caches
        self.tuner, self.stats = tuner, stats

    def run(
        self,
        plan: RoundPlan,
        ready: list[Ready],
        options: ReplyOptions,
        secure: SecureRound,
        outbox: dict[str, Message],
    ) -> None:
        """Train and answer ``ready``; raises :class:`NotVectorizable` (the clients answered
        so far are in ``outbox``) when vmap cannot run the Task."""
        if not ready:
            return
        first = ready[0][2]
        check_sample_mean_loss(plan.task, first.x_train, first.y_train)
        n_max = max(len(d.y_train) for _, _, d in ready)
        self.memory.estimate(
            plan.task.build_model(seed=0), first.x_train, plan.schedule.batch_size, n_max
        )
        ready = sorted(ready, key=lambda item: (-len(item[2].y_train), partition_id_of(item[1])))
        if options.on_device and options.hook is None:  # secure: the round's masks at once
            started = time.perf_counter()
            messages, contexts = [m for m, _, _ in ready], [c for _, c, _ in ready]
            secure.masks = round_masks(plan, messages, contexts, self.device, secure.agreements)
            self.stats.reply_seconds += time.perf_counter() - started
        try:
            self._chunks(plan, ready, options, secure, outbox)
        finally:
            secure.masks = None

    def _chunks(
        self,
        plan: RoundPlan,
        ready: list[Ready],
        options: ReplyOptions,
        secure: SecureRound,
        outbox: dict[str, Message],
    ) -> None:
        """Chunk after chunk, K as the planner says; K halved after running out of memory."""
        done = 0
        while done < len(ready):
            k = self.memory.clients_per_chunk(len(ready) - done)
            chunk = ready[done : done + k]
            try:
                self._chunk(plan, chunk, options, secure, outbox)
            except torch.cuda.OutOfMemoryError:
                smaller = self.memory.shrink_after_oom(k)
                log.warning(
                    "batched engine: out of GPU memory at K=%d; retrying with %d", k, smaller
                )
                self.caches.drop_batches()
                torch.cuda.empty_cache()
                if k == 1:
                    raise
                continue
            done += len(chunk)

    def _chunk(
        self,
        plan: RoundPlan,
        chunk: list[Ready],
        options: ReplyOptions,
        secure: SecureRound,
        outbox: dict[str, Message],
    ) -> None:
        contexts = [c for _, c, _ in chunk]
        pids = [partition_id_of(c) for c in contexts]
        seeds = plan.seeds_for(pids)
        before = self.memory.start_chunk()
        data_started = time.perf_counter()
        channels_last = self.tuner.stored_channels_last()
        batch = self.caches.device_batch(
            plan, pids, [d for _, _, d in chunk], channels_last=channels_last
        )
        self.stats.data_seconds += time.perf_counter() - data_started
        try:
            layout = self.tuner.layout_for(plan, batch, seeds)
            self._note_layout()
            started = time.perf_counter()
            with cudnn_benchmark(self.tuner.cudnn_benchmark):
                trained = train_clients(plan, batch, seeds, self.device, layout=layout)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.stats.train_seconds += time.perf_counter() - started
        except (RuntimeError, TypeError, ValueError) as err:
            if isinstance(err, torch.cuda.OutOfMemoryError):
                raise
            if self.tuner.give_up_kernels(batch, err):  # e.g. a CNN that .view()s
                self._note_layout()
                self._chunk(plan, chunk, options, secure, outbox)
                return
            raise NotVectorizable(
                f"vmap could not run the Task: {type(err).__name__}: {err}"
            ) from err
        self.memory.end_chunk(len(chunk), before)
        self.stats.chunk_sizes.append(len(chunk))
        started = time.perf_counter()
        messages = [m for m, _, _ in chunk]
        job = ChunkJob(plan, messages, contexts, trained, self.device)
        built = chunk_replies(job, options, secure)
        self.stats.pooled_clients += built.pooled
        self.stats.sdk_encoded_clients += built.by_sdk
        for msg, reply in zip(messages, built.replies, strict=True):
            outbox[msg.metadata.message_id] = reply
        self.stats.reply_seconds += time.perf_counter() - started
        self.stats.vectorized_clients += len(chunk)

    def _note_layout(self) -> None:
        """The tuner's choice, as ``summary.json`` reports it."""
        self.stats.layout = self.tuner.layout or ""
        self.stats.cudnn_benchmark = self.tuner.cudnn_benchmark
        self.stats.layout_seconds = self.tuner.timings
