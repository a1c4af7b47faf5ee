"""The chunk runner: one round's train messages trained K clients at a time, then answered.

Clients are sorted largest first (so each chunk holds clients of about the same step count,
whose shorter members training drops as they finish, :func:`.training.train_clients`), then
in partition order, so a chunk of the same clients finds its data cached on the device in the
next round (:mod:`.caches`). K comes from the memory planner (:mod:`.memory`); a chunk that
runs out of GPU memory is retried with K halved. Each chunk trains in the layout the tuner
chose (:mod:`.layouts`) and its replies are built by :func:`.replies.chunk_replies`. A secure
round's masks are computed for all its clients before the first chunk trains (:mod:`.secure`).
On a CPU with several threads, chunks train at once, one thread each, as pfl-research's
worker processes train users (a chunk trains exactly as alone on one thread).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

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
from simulations.batched.training import (
    ClientBatch,
    NotVectorizable,
    TrainedChunk,
    check_sample_mean_loss,
    train_clients,
)

log = logging.getLogger(__name__)

# (message, its node's context, the node's data): one client of a round, ready to train
Ready = tuple[Message, Context, ClientData]
# Chunks trained at once on a CPU but not yet answered, at most (their data stays in memory).
MAX_PENDING = 32


@dataclass
class _Job:
    """A chunk ready to train: its clients, their seeds, data, and the layout it trains in."""

    chunk: list[Ready]
    seeds: list[int]
    batch: ClientBatch
    before: int  # device memory allocated before the chunk (MemoryPlanner.start_chunk)
    layout: str = ""
    train_seconds: float = 0.0


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
        """Chunk after chunk, K as the planner says; K halved after running out of memory.

        On a CPU with several threads, the chunks train at once, one thread each (chunks share
        nothing; a worker that finishes a short chunk takes the next while a long one runs,
        as pfl-research's workers balance users), and are answered in order."""
        workers = torch.get_num_threads() if self.device.type == "cpu" else 1
        if workers < 2:
            self._in_order(plan, ready, options, secure, outbox, None)
            return
        torch.set_num_threads(1)  # one thread per chunk: every chunk trains as on one core
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="pollen-chunk") as pool:
                self._in_order(plan, ready, options, secure, outbox, pool)
        finally:
            torch.set_num_threads(workers)

    def _in_order(
        self,
        plan: RoundPlan,
        ready: list[Ready],
        options: ReplyOptions,
        secure: SecureRound,
        outbox: dict[str, Message],
        pool: ThreadPoolExecutor | None,
    ) -> None:
        """Prepare every chunk (training it in ``pool`` when given), then answer them in order."""
        done, started = 0, []
        while done < len(ready):
            k = self.memory.clients_per_chunk(len(ready) - done)
            chunk = ready[done : done + k]
            try:
                job = self._prepare(plan, chunk)
                if pool is None:
                    trained = self._trained(plan, job)
                else:
                    started.append((job, pool.submit(self._train, plan, job)))
                    if len(started) > MAX_PENDING:  # bounds the data held by waiting chunks
                        job, future = started.pop(0)
                        trained = self._trained(plan, job, future)
                        self._answer(plan, job, trained, options, secure, outbox)
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
            if pool is None:
                self._answer(plan, job, trained, options, secure, outbox)
            done += len(chunk)
        for job, future in started:
            self._answer(plan, job, self._trained(plan, job, future), options, secure, outbox)

    def _prepare(self, plan: RoundPlan, chunk: list[Ready]) -> _Job:
        """The chunk's data on the device and the layout it trains in."""
        contexts = [c for _, c, _ in chunk]
        pids = [partition_id_of(c) for c in contexts]
        before = self.memory.start_chunk()
        data_started = time.perf_counter()
        channels_last = self.tuner.stored_channels_last()
        batch = self.caches.device_batch(
            plan, pids, [d for _, _, d in chunk], channels_last=channels_last
        )
        self.stats.data_seconds += time.perf_counter() - data_started
        job = _Job(chunk, plan.seeds_for(pids), batch, before)
        job.layout = self.tuner.layout_for(plan, batch, job.seeds)
        self._note_layout()
        return job

    def _train(self, plan: RoundPlan, job: _Job) -> TrainedChunk:
        started = time.perf_counter()
        with cudnn_benchmark(self.tuner.cudnn_benchmark):
            trained = train_clients(plan, job.batch, job.seeds, self.device, layout=job.layout)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        job.train_seconds += time.perf_counter() - started  # added up by _answer
        return trained

    def _trained(self, plan: RoundPlan, job: _Job, future: Future | None = None) -> TrainedChunk:
        """The chunk trained (``future``'s result, or trained here); on an error from Pollen's
        kernels, trained again with vmap's own rules, else :class:`NotVectorizable`."""
        try:
            return future.result() if future is not None else self._train(plan, job)
        except (RuntimeError, TypeError, ValueError) as err:
            if isinstance(err, torch.cuda.OutOfMemoryError):
                raise
            # e.g. a CNN that .view()s; a chunk already running when another gave up retrains
            if job.layout != self.tuner.layout or self.tuner.give_up_kernels(job.batch, err):
                self._note_layout()
                job.layout = self.tuner.layout_for(plan, job.batch, job.seeds)
                return self._trained(plan, job)
            raise NotVectorizable(
                f"vmap could not run the Task: {type(err).__name__}: {err}"
            ) from err

    def _answer(
        self,
        plan: RoundPlan,
        job: _Job,
        trained: TrainedChunk,
        options: ReplyOptions,
        secure: SecureRound,
        outbox: dict[str, Message],
    ) -> None:
        chunk = job.chunk
        self.memory.end_chunk(len(chunk), job.before)
        self.stats.chunk_sizes.append(len(chunk))
        self.stats.train_seconds += job.train_seconds  # summed over the workers
        started = time.perf_counter()
        messages, contexts = [m for m, _, _ in chunk], [c for _, c, _ in chunk]
        built = chunk_replies(
            ChunkJob(plan, messages, contexts, trained, self.device), options, secure
        )
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
