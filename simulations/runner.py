"""Run a Task with N virtual clients through Flower's simulation engine (Ray).

``run_simulation`` hosts the ServerApp in this process, so a callback sees every round as it
ends; the result is ``metrics.jsonl``, ``final_model.npz``, ``summary.json`` and ``accuracy.png``
in the output directory.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from client_sdk.tasks import get_task, natural_partition
from server import EXPORT_FILE, MODEL_FILE, RunSettings, read_metrics
from server.app import build_server_app
from server.checkpoint import check_resumable, load_checkpoint
from server.federation import RoundCallback
from simulations.app import clientapp
from simulations.partitioners import PartitionError, parse_partition
from simulations.plots import plot_accuracy

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SimulationSettings:
    run: RunSettings
    clients: int
    out_dir: Path
    cpus_per_client: float = 1.0
    ray_logs: bool = False  # forward Ray workers' output (Flower's client logs) to this console

    def __post_init__(self) -> None:
        if self.clients < 1:
            raise PartitionError(f"clients must be >= 1, got {self.clients}")
        natural = natural_partition(self.run.task)
        spec = parse_partition(self.run.partition)
        if natural and spec is not None:
            raise PartitionError(
                f"task {self.run.task!r} has a natural partition; use partition 'natural'"
            )
        if not natural and spec is None:
            raise PartitionError(f"task {self.run.task!r} needs iid, dirichlet:ALPHA or shards:K")


def check_partition(settings: SimulationSettings) -> None:
    """Fail before starting Ray if some client would get too little data."""
    task = get_task(settings.run.task)
    task.data.client_data(
        0,
        settings.clients,
        partitioner=parse_partition(settings.run.partition, min_samples=2),
        seed=settings.run.seed,
    )


def simulate(settings: SimulationSettings, on_round: RoundCallback | None = None) -> dict[str, Any]:
    """Run the simulation; return (and write) the summary."""
    from flwr.simulation import run_simulation

    check_partition(settings)
    out = settings.out_dir
    out.mkdir(parents=True, exist_ok=True)
    run = RunSettings(
        **{**settings.run.__dict__, "num_partitions": settings.clients, "out_dir": str(out)}
    )
    if run.resume and (checkpoint := load_checkpoint(out)) is not None:
        check_resumable(checkpoint, asdict(run))  # fail here, before Ray starts
    server_app = build_server_app(run, out_dir=out, on_round=on_round)
    # Ray >= 2.5x warns on every start unless told how to treat CUDA_VISIBLE_DEVICES.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    started = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=clientapp,
        num_supernodes=settings.clients,
        backend_config={
            "client_resources": {"num_cpus": settings.cpus_per_client, "num_gpus": 0.0},
            "init_args": {
                "include_dashboard": False,
                "num_cpus": os.cpu_count() or 1,
                "log_to_driver": settings.ray_logs,
            },
        },
    )
    wall = time.perf_counter() - started
    metrics_path = out / "metrics.jsonl"
    if not (out / MODEL_FILE).exists() or not metrics_path.exists():
        raise RuntimeError(f"the simulation ended without a model in {out}; see the log above")
    summary = summarize(read_metrics(metrics_path), run, settings.clients, wall)
    summary["export"] = json.loads((out / EXPORT_FILE).read_text())
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_accuracy(
        read_metrics(metrics_path),
        out / "accuracy.png",
        title=f"{run.task}, {settings.clients} clients, {run.partition}, {run.strategy}",
    )
    return summary


def summarize(
    rows: list[dict[str, Any]], run: RunSettings, clients: int, wall_s: float
) -> dict[str, Any]:
    trained = [r for r in rows if r["round"] > 0]
    return {
        "task": run.task,
        "strategy": run.strategy,
        "partition": run.partition,
        "seed": run.seed,
        "clients": clients,
        "fraction_train": run.fraction_train,
        "rounds": len(trained),
        "final_accuracy": rows[-1]["accuracy"] if rows else None,
        "best_accuracy": max((r["accuracy"] for r in rows), default=None),
        "final_loss": rows[-1]["loss"] if rows else None,
        "wall_s": round(wall_s, 3),
        "upload_bytes_total": sum(r.get("upload_bytes_total", 0) for r in trained),
        "download_bytes_total": sum(r.get("download_bytes_total", 0) for r in trained),
        "rejected_updates": sum(r.get("rejected_updates", 0) for r in trained),
        "upload_bytes_per_client_round": (
            sum(r.get("upload_bytes_total", 0) for r in trained)
            / max(
                sum(r.get("accepted_updates", 0) + r.get("rejected_updates", 0) for r in trained), 1
            )
        ),
        "final_sparsity": trained[-1].get("sparsity", 0.0) if trained else 0.0,
        "failed_clients": sum(r.get("failed_clients", 0) for r in trained),
    }
