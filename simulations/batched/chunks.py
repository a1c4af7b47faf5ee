"""The chunk runner: one round's train messages trained K clients at a time, then answered.

Clients are sorted largest first (so each chunk holds clients of about the same step count,
whose shorter members training drops as they finish, :func:`.training.train_clients`), then
in partition order, so a chunk of the same clients finds its data cached on the device in the
next round (:mod:`.caches`). K comes from the memory planner (:mod:`.memory`); a chunk that
runs out of GPU memory is retried with K halved. Each chunk trains in the layout the tuner
chose (:mod:`.layouts`) and its replies are built by :func:`.replies.chunk_replies`. A secure
round's masks are computed for all its clients before the first chunk trains (:mod:`.secure`).

On a CPU with several threads, a round whose planned steps fill every core for most of it
trains its chunks at once, one torch thread each (:func:`plan_chunks`; as pfl-research's
worker processes train users, Granqvist et al. 2024); a chunk trains exactly as alone on one
thread, so the replies do not depend on which thread trained which chunk.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
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
# The planned cost of a chunk on one thread, in client-steps: each of its steps costs one per
# client still training plus a fixed part (vmap, autograd, the optimizer) worth this many.
# Both constants are least-squares fits to one tutorial-CNN chunk of K = 1..50 clients on one
# and two threads (benchmarks/chunk_costs.py; benchmarks/README.md, "Simulation engines",
# fourth session).
STEP_FIXED_ROWS = 2.0
# How much faster every thread trains one chunk than one thread does (what a round trained
# chunk after chunk gets from the other cores).
THREADS_SPEEDUP = 1.5
# Chunks trained at once but not yet answered, at most (their data stays in memory).
MAX_PENDING = 32


@dataclass(frozen=True)
class ChunkPlan:
    """The round's chunks (positions in its clients sorted largest first) and whether they
    train at once, one thread each."""

    chunks: list[list[int]]
    at_once: bool


def chunk_cost(steps: np.ndarray) -> float:
    """Planned one-thread cost of a chunk whose clients take ``steps`` steps (client-steps)."""
    return float(steps.sum() + STEP_FIXED_ROWS * steps.max())


def _makespan(costs: list[float], workers: int) -> float:
    """Time to train chunks of ``costs`` on ``workers`` threads, largest first into the
    least-loaded thread (as a pool runs them when they are submitted largest first)."""
    load = [0.0] * workers
    for cost in sorted(costs, reverse=True):
        load[load.index(min(load))] += cost
    return max(load)


def plan_chunks(steps: np.ndarray, k: int, workers: int) -> ChunkPlan:
    """Chunks of at most ``k`` clients for ``steps`` (each client's planned steps, largest
    first) on ``workers`` CPU threads.

    In order (chunk after chunk, every thread in each) unless balanced chunks trained at once
    are planned to finish first: clients largest first into the least-loaded of ``workers``
    groups (counting each chunk's fixed cost), each group cut into chunks of ``k``, one thread
    per chunk, listed costliest first (the order a pool should take them in). A round of
    fewer than two chunks per worker stays in order: one chunk on one thread lost at 50 equal
    clients, and at 100 skewed clients (two chunks) balanced chunks at once lost three passes
    of three at Pareto(2) (benchmarks/README.md). Deterministic: it reads only the planned
    steps.
    """
    n = len(steps)
    in_order = ChunkPlan([list(range(s, min(n, s + k))) for s in range(0, n, k)], False)
    if workers < 2 or len(in_order.chunks) < 2 * workers:
        return in_order
    load, groups = [0.0] * workers, [[] for _ in range(workers)]
    for i, count in enumerate(steps.tolist()):
        w = load.index(min(load))
        starts_chunk = len(groups[w]) % k == 0  # largest first: this client sets its length
        load[w] += count * (1.0 + (STEP_FIXED_ROWS if starts_chunk else 0.0))
        groups[w].append(i)
    balanced = [g[s : s + k] for g in groups for s in range(0, len(g), k)]
    costs = [chunk_cost(steps[c]) for c in balanced]
    alone = sum(chunk_cost(steps[c]) for c in in_order.chunks) / THREADS_SPEEDUP
    if _makespan(costs, workers) >= alone:
        return in_order
    costliest = sorted(range(len(balanced)), key=lambda i: (-costs[i], i))
    return ChunkPlan([balanced[i] for i in costliest], True)


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
            chunks = self._cpu_plan(plan, ready)
            if chunks is None:
                self._in_order(plan, ready, options, secure, outbox)
            else:
                chosen = [[ready[i] for i in chunk] for chunk in chunks]
                self._at_once(plan, chosen, options, secure, outbox)
        finally:
            secure.masks = None

    def _cpu_plan(self, plan: RoundPlan, ready: list[Ready]) -> list[list[int]] | None:
        """Balanced chunks to train at once (:func:`plan_chunks`), or None: chunk after chunk."""
        workers = torch.get_num_threads() if self.device.type == "cpu" else 1
        # the cost constants were measured with the packed kernels on image models
        if workers < 2 or ready[0][2].x_train.ndim != 4 or not self.tuner.stored_channels_last():
            return None
        sizes = np.array([len(d.y_train) for _, _, d in ready], dtype=np.int64)
        steps = -(-sizes // plan.schedule.batch_size) * plan.schedule.epochs  # as batch_schedule
        chosen = plan_chunks(steps, self.memory.clients_per_chunk(len(ready)), workers)
        return chosen.chunks if chosen.at_once else None

    def _in_order(
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
                job = self._prepare(plan, chunk)
                trained = self._trained(plan, job)
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
            self._answer(plan, job, trained, options, secure, outbox)
            done += len(chunk)

    def _at_once(
        self,
        plan: RoundPlan,
        chunks: list[list[Ready]],
        options: ReplyOptions,
        secure: SecureRound,
        outbox: dict[str, Message],
    ) -> None:
        """The chunks in a pool of one-thread workers, in the plan's order (a worker that
        finishes takes the next) and answered in that order here, at most
        :data:`MAX_PENDING` prepared ahead (their data stays in memory)."""
        workers = torch.get_num_threads()
        pending: deque[tuple[_Job, Future]] = deque()
        torch.set_num_threads(1)  # each chunk trains as on one core
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="pollen-chunk") as pool:
                try:
                    for chunk in chunks:
                        job = self._prepare(plan, chunk)
                        pending.append((job, pool.submit(self._train, plan, job)))
                        if len(pending) > MAX_PENDING:
                            self._finish(plan, *pending.popleft(), options, secure, outbox)
                    while pending:
                        self._finish(plan, *pending.popleft(), options, secure, outbox)
                except BaseException:
                    pool.shutdown(cancel_futures=True)
                    raise
        finally:
            torch.set_num_threads(workers)

    def _finish(
        self,
        plan: RoundPlan,
        job: _Job,
        future: Future,
        options: ReplyOptions,
        secure: SecureRound,
        outbox: dict[str, Message],
    ) -> None:
        self._answer(plan, job, self._trained(plan, job, future), options, secure, outbox)

    def _prepare(self, plan: RoundPlan, chunk: list[Ready]) -> _Job:
        """The chunk's data on the device and the layout it trains in."""
        pids = [partition_id_of(c) for _, c, _ in chunk]
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
                again = self._prepare(plan, job.chunk)  # stored as the new layout reads it
                job.batch, job.layout, job.before = again.batch, again.layout, again.before
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
