"""Run a Task with N virtual clients on one of two engines, with the same ServerApp.

``flower``: Flower's simulation engine (``run_simulation``, one Ray actor call per client).
``batched``: Pollen's :class:`~simulations.batched.BatchedGrid`, K clients per vmapped kernel
(the default when a CUDA GPU is present). Either way the ServerApp runs in this process, so a
callback sees every round as it ends; the result is ``metrics.jsonl``, ``final_model.npz``,
``summary.json`` and ``accuracy.png`` in the output directory.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from typing import Any

from client_sdk import Task, build_client_app
from client_sdk.tasks import get_task, portable_task_name
from server import EXPORT_FILE, MODEL_FILE, read_metrics
from server.app import build_server_app
from server.checkpoint import check_resumable, load_checkpoint
from server.federation import ABORT_FILE, RoundCallback, RunAborted, ServerHooks
from server.schema import defaults_of
from simulations.app import client_data_of
from simulations.attacks import attack_hook
from simulations.heterogeneity import (
    HeterogeneousGrid,
)
from simulations.partitioners import parse_partition
from simulations.plots import plot_run, settings_label
from simulations.settings import SimulatedClientsSection, SimulationRunSettings, SimulationSettings

log = logging.getLogger(__name__)


def resolve_engine(engine: str) -> str:
    import torch

    if engine == "auto":
        return "batched" if torch.cuda.is_available() else "flower"
    return engine


class DeviceError(ValueError):
    """The batched engine's ``--device`` names no device torch can use here."""


def resolve_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise DeviceError(f"{device!r} is not a device name; use auto, cpu or cuda[:N]") from None
    if resolved.type == "cuda":
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not visible:
            raise DeviceError(f"{device!r}: no CUDA GPU is visible to torch here; use cpu")
        if resolved.index is not None and resolved.index >= visible:
            raise DeviceError(f"{device!r}: torch sees {visible} CUDA GPU(s) (cuda:0..)")
    elif resolved.type != "cpu":
        raise DeviceError(f"{device!r}: the batched engine runs on cpu or cuda[:N]")
    return resolved


def check_partition(settings: SimulationSettings) -> None:
    """Fail before starting Ray if some client would get too little data."""
    task = get_task(settings.run.task)
    task.data.client_data(
        0,
        settings.clients,
        partitioner=parse_partition(settings.run.partition, min_samples=2),
        seed=settings.run.seed,
    )


def server_settings(settings: SimulationSettings) -> SimulationRunSettings:
    """The ServerApp's settings: the run's, with one partition per client and the out dir."""
    return SimulationRunSettings(
        **{
            **settings.run.__dict__,
            "task": portable_task_name(settings.run.task),  # a task file, for Ray workers too
            "num_partitions": settings.clients,
            "out_dir": str(settings.out_dir),
        }
    )


def check_resume(settings: SimulationSettings) -> None:
    """With ``resume``, refuse (:class:`~server.checkpoint.ResumeError`, naming the file) a
    checkpoint in the out dir that is corrupt or cannot continue this run."""
    run = server_settings(settings)
    if run.resume and (checkpoint := load_checkpoint(settings.out_dir)) is not None:
        check_resumable(checkpoint, asdict(run), defaults=defaults_of(SimulationRunSettings))


def simulate(
    settings: SimulationSettings,
    on_round: RoundCallback | None = None,
    hooks: ServerHooks | None = None,
) -> dict[str, Any]:
    """Run the simulation; return (and write) the summary."""
    check_partition(settings)
    out = settings.out_dir
    out.mkdir(parents=True, exist_ok=True)
    run = server_settings(settings)
    check_resume(settings)  # fail here, before Ray starts
    devices = settings.heterogeneity()
    server_app = build_server_app(
        run,
        out_dir=out,
        on_round=on_round,
        hooks=hooks,
        wrap_grid=None if devices is None else (lambda grid: HeterogeneousGrid(grid, devices)),
    )
    engine = resolve_engine(settings.engine)
    if engine == "batched" and run.dp_mode == "local":
        raise ValueError("dp-mode local runs in the SDK's client round: use --engine flower")
    started = time.perf_counter()
    if engine == "batched":
        engine_summary = _run_batched(server_app, settings)
    else:
        _run_flower(server_app, settings)
        engine_summary = {"engine": "flower"}
    wall = time.perf_counter() - started
    if (out / ABORT_FILE).exists():  # Flower's engine logs a ServerApp's error and returns
        raise RunAborted((out / ABORT_FILE).read_text().strip())
    metrics_path = out / "metrics.jsonl"
    if not (out / MODEL_FILE).exists() or not metrics_path.exists():
        raise RuntimeError(f"the simulation ended without a model in {out}; see the log above")
    task = get_task(run.task)
    summary = summarize(read_metrics(metrics_path), run, settings.clients, wall, task)
    summary.update(engine_summary)
    summary["export"] = json.loads((out / EXPORT_FILE).read_text())
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_run(
        read_metrics(metrics_path),
        out / "accuracy.png",
        metric=task.primary_metric,
        title=f"{task.name}, {settings.clients} clients, {run.partition}, "
        f"{settings_label(run, engine_summary['engine'])}",
    )
    return summary


def _run_batched(server_app, settings: SimulationSettings) -> dict[str, Any]:
    from simulations.batched import BatchedGrid, run_server_app

    grid = BatchedGrid(
        task=get_task,
        data=client_data_of(settings.run),
        num_nodes=settings.clients,
        update_hook=attack_hook(settings.run.section(SimulatedClientsSection)),
        device=resolve_device(settings.device),
        clients_per_batch=settings.clients_per_batch,
        seed=settings.run.seed,
        pool_uploads=settings.pool_uploads,
    )
    run_server_app(server_app, grid)
    stats = grid.stats
    return {
        "engine": "batched",
        "device": str(grid.device),
        "peak_memory_bytes": grid.memory.peak_bytes,
        "peak_memory_kind": "cuda max_memory_allocated"
        if grid.device.type == "cuda"
        else "process peak RSS",
        "clients_per_batch": max(stats.chunk_sizes, default=0),
        "vectorized_client_updates": stats.vectorized_clients,
        "looped_client_updates": stats.looped_clients,
        "pooled_client_updates": stats.pooled_clients,
        "sdk_encoded_client_updates": stats.sdk_encoded_clients,
        "fallback_reason": stats.fallback_reason,
        "train_s": round(stats.train_seconds, 3),
        "reply_s": round(stats.reply_seconds, 3),
        "data_s": round(stats.data_seconds, 3),
        "layout": stats.layout,
        "layout_s": stats.layout_seconds,  # CUDA: each layout's time on the first chunk
        "cudnn_benchmark": stats.cudnn_benchmark,
    }


def _run_flower(server_app, settings: SimulationSettings) -> None:
    from flwr.simulation import run_simulation

    # Ray >= 2.5x warns on every start unless told how to treat CUDA_VISIBLE_DEVICES.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    resources = {"num_cpus": settings.client_cpus, "num_gpus": settings.client_gpus}
    flower_log = logging.getLogger("flwr")
    hide = _HideRunSimulationDeprecation()  # the user never called run_simulation: we did
    flower_log.addFilter(hide)
    try:
        run_simulation(
            server_app=server_app,
            client_app=build_client_app(
                get_task,
                client_data_of(settings.run),
                update_hook=attack_hook(settings.run.section(SimulatedClientsSection)),
                allow_seeded_noise=True,
            ),
            num_supernodes=settings.clients,
            backend_config={
                "client_resources": resources,
                "init_args": {
                    "include_dashboard": False,
                    "num_cpus": os.cpu_count() or 1,
                    "log_to_driver": settings.ray_logs,
                },
            },
        )
    finally:
        flower_log.removeFilter(hide)


class _HideRunSimulationDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            str(record.msg).startswith("DEPRECATED FEATURE")
            and "run_simulation" in record.getMessage()
        )


def effective_settings(run: SimulationRunSettings, task: Task) -> dict[str, Any]:
    """Every setting the run used: the run config, with the Task's own values where the run
    config left them at 0 ("the Task's")."""
    used = asdict(run)
    used["lr"] = run.lr or task.optimizer.lr
    used["local_epochs"] = run.local_epochs or task.local_epochs
    used["batch_size"] = run.batch_size or task.batch_size
    used["optimizer"] = task.optimizer.name
    return used


def summarize(
    rows: list[dict[str, Any]],
    run: SimulationRunSettings,
    clients: int,
    wall_s: float,
    task: Task,
) -> dict[str, Any]:
    trained = [r for r in rows if r["round"] > 0]
    metric = task.primary_metric
    scores = [r[metric] for r in rows if isinstance(r.get(metric), (int, float))]
    best = max if task.higher_is_better else min
    return {
        "task": run.task,
        "primary_metric": metric,
        f"final_{metric}": scores[-1] if scores else None,
        f"best_{metric}": best(scores, default=None),
        "settings": effective_settings(run, task),
        "strategy": run.strategy,
        "partition": run.partition,
        "seed": run.seed,
        "clients": clients,
        "fraction_train": run.fraction_train,
        "rounds": len(trained),
        "final_loss": rows[-1]["loss"] if rows else None,
        "wall_s": round(wall_s, 3),
        "upload_bytes_total": sum(r.get("upload_bytes_total", 0) for r in trained),
        "download_bytes_total": sum(r.get("download_bytes_total", 0) for r in trained),
        "rejected_updates": sum(r.get("rejected_updates", 0) for r in trained),
        "pooled_updates": sum(r.get("pooled_updates", 0) for r in trained),
        "aggregate_s": round(sum(r.get("aggregate_s", 0.0) for r in trained), 3),
        "upload_bytes_per_client_round": (
            sum(r.get("upload_bytes_total", 0) for r in trained)
            / max(
                sum(r.get("accepted_updates", 0) + r.get("rejected_updates", 0) for r in trained), 1
            )
        ),
        "final_sparsity": trained[-1].get("sparsity", 0.0) if trained else 0.0,
        "failed_clients": sum(r.get("failed_clients", 0) for r in trained),
        "dropped_clients": sum(r.get("dropped_clients", 0) for r in trained),
        **(
            {
                "simulated_time_s": trained[-1].get("simulated_time_s", 0.0),
                "offline_clients": sum(r.get("offline_clients", 0) for r in trained),
                "straggler_clients": sum(r.get("straggler_clients", 0) for r in trained),
            }
            if trained and "simulated_time_s" in trained[-1]
            else {}
        ),
        # the privacy spent: the ledger's total after the last released round
        **(
            {
                "dp_epsilon": max(r.get("dp_epsilon", 0.0) for r in trained),
                "dp_epsilon_per_round": [r.get("dp_epsilon_round", 0.0) for r in trained],
                "dp_delta": trained[-1].get("dp_delta"),
            }
            if any("dp_epsilon" in r for r in trained)
            else {}
        ),
    }
