"""Fit the chunk planner's CPU cost model (``simulations/batched/chunks.py``) to timings.

``plan_chunks`` plans a chunk's one-thread cost per step as one unit per client still training
plus a fixed part worth ``STEP_FIXED_ROWS`` clients, and chunk after chunk on W threads as that
cost over ``THREADS_SPEEDUP``. This times one chunk of K tutorial-CNN clients with equal step
counts (packed layout, channels-last images: what the engine trains in on a CPU) on one and
on two torch threads, alternating, and fits by least squares

- one thread, seconds per step ~ a + b*K  (STEP_FIXED_ROWS = a / b, in clients);
- two threads, the speedup of one chunk: t1 ~ s * t2 over every K (THREADS_SPEEDUP = s),
  and each K's own t1/t2;
- two copies of the chunk at once, one thread each (as ``plan_chunks``' balanced chunks
  train): how much slower each runs than alone (t_pair / t1; the planner takes it as 1), and
  the pair at once against the two chunk after chunk on two threads (2 * t2 / t_pair).

    flock /tmp/pollen-heavy.lock .venv/bin/python benchmarks/chunk_costs.py --reps 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, Metadata, RecordDict

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from client_sdk import model_arrays  # noqa: E402
from client_sdk.rounds import RoundPlan, plan_round  # noqa: E402
from client_sdk.tasks import get_task  # noqa: E402
from simulations.batched.training import ClientBatch, stack_clients, train_clients  # noqa: E402

CPU = torch.device("cpu")
KS = (1, 2, 4, 8, 16, 32, 50)


def _plan(samples: int, batch: int, epochs: int) -> RoundPlan:
    """Round 2 of the tutorial CNN as a client would plan it."""
    task = get_task(f"tutorial-cnn:{samples}")
    arrays = model_arrays(task.build_model(seed=1))
    config = {"server-round": 2, "seed": 3, "batch-size": batch, "local-epochs": epochs}
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "config": ConfigRecord(config),
        }
    )
    metadata = Metadata(
        run_id=1,
        message_id="m1",
        src_node_id=0,
        dst_node_id=5,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=3600.0,
        message_type=MessageType.TRAIN,
    )
    return plan_round(task, Message(content=content, metadata=metadata))


def _batch(plan: RoundPlan, k: int, samples: int) -> ClientBatch:
    data = [
        plan.task.data.client_data(i, k, partitioner=None, seed=0) for i in range(k)
    ]  # natural partition: each client generates its own images
    return stack_clients(data, CPU, channels_last=True, task=plan.task)


def _time(plan: RoundPlan, batch: ClientBatch, threads: int) -> float:
    torch.set_num_threads(threads)
    seeds = list(range(len(batch.sizes)))
    started = time.perf_counter()
    train_clients(plan, batch, seeds, CPU, layout="packed")
    return time.perf_counter() - started


def _pair(plan: RoundPlan, batch: ClientBatch, pool: ThreadPoolExecutor) -> float:
    """Two trainings of ``batch`` at once on two one-thread workers (as ChunkRunner._at_once)."""
    torch.set_num_threads(1)
    seeds = list(range(len(batch.sizes)))
    started = time.perf_counter()
    jobs = [pool.submit(train_clients, plan, batch, seeds, CPU, layout="packed") for _ in "ab"]
    for job in jobs:
        job.result()
    return time.perf_counter() - started


def _lstsq(columns: list[np.ndarray], target: np.ndarray) -> np.ndarray:
    return np.linalg.lstsq(np.stack(columns, axis=1), target, rcond=None)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50, help="images per client")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5, help="timed runs per K and thread count")
    parser.add_argument("--ks", type=int, nargs="+", default=list(KS))
    args = parser.parse_args()
    plan = _plan(args.samples, args.batch, args.epochs)
    steps = -(-args.samples // args.batch) * args.epochs
    threads_before = torch.get_num_threads()
    rows = []
    pool = ThreadPoolExecutor(2, thread_name_prefix="chunk-costs")
    for k in args.ks:
        batch = _batch(plan, k, args.samples)
        _time(plan, batch, 1), _time(plan, batch, 2), _pair(plan, batch, pool)  # warm
        one, two, pair = [], [], []
        for _ in range(args.reps):  # alternated, so load changes hit all three alike
            one.append(_time(plan, batch, 1))
            two.append(_time(plan, batch, 2))
            pair.append(_pair(plan, batch, pool))
        rows.append((k, *(statistics.median(t) for t in (one, two, pair))))
    pool.shutdown()
    torch.set_num_threads(threads_before)
    ks = np.array([r[0] for r in rows], dtype=float)
    t1 = np.array([r[1] for r in rows]) / steps
    t2 = np.array([r[2] for r in rows]) / steps
    tp = np.array([r[3] for r in rows]) / steps
    # relative least squares (each K weighs alike, not the largest chunk only)
    a, b = _lstsq([1.0 / t1, ks / t1], np.ones_like(t1))
    speedup = float(np.sum(t1 * t1) / np.sum(t1 * t2))  # least squares of t1 ~ s * t2
    print(f"tutorial CNN, {args.samples} images per client, batch {args.batch}, "
          f"{args.epochs} epochs: {steps} steps per client, {args.reps} reps (median)")  # fmt: skip
    print(
        f"{'K':>3} | {'1 thread ms/step':>16} | {'fit':>7} | {'resid':>6} | "
        f"{'2 threads ms/step':>17} | {'t1/t2':>5} | {'fit s':>5} | "
        f"{'pair ms/step':>12} | {'pair/t1':>7} | {'2*t2/pair':>9}"
    )
    for (k, *_), one, two, both in zip(rows, t1, t2, tp, strict=True):
        fit = a + b * k
        print(
            f"{k:>3} | {one * 1e3:16.2f} | {fit * 1e3:7.2f} | {(one - fit) / fit:+6.1%} | "
            f"{two * 1e3:17.2f} | {one / two:5.2f} | {speedup:5.2f} | "
            f"{both * 1e3:12.2f} | {both / one:7.2f} | {2 * two / both:9.2f}"
        )
    print(f"one thread: a = {a * 1e3:.3f} ms/step, b = {b * 1e3:.3f} ms per client-step")
    print(f"STEP_FIXED_ROWS = a / b = {a / b:.2f}")
    print(f"THREADS_SPEEDUP = {speedup:.2f} (least squares of t1 ~ s * t2)")
    slowdown = float(np.sum(tp * t1) / np.sum(t1 * t1))  # least squares of t_pair ~ d * t1
    print(f"at once, one thread each: each chunk {slowdown:.2f}x its time alone (planned 1)")
    big = ks >= 8
    if big.any():
        at_big = float(np.sum(t1[big] ** 2) / np.sum(t1[big] * t2[big]))
        print(f"THREADS_SPEEDUP at K >= 8 only: {at_big:.2f}")


if __name__ == "__main__":
    main()
