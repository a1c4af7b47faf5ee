"""A rich progress display for a running simulation: rounds, the Task's metric, bytes moved."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


def round_progress(console: Console, metric: str = "accuracy") -> Progress:
    """Rounds done, the Task's metric, the clients' mean train loss, the upload so far (all
    rounds), elapsed time and an estimate of the time left."""
    short = {"accuracy": "acc", "perplexity": "ppl"}.get(metric, metric)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(short + " {task.fields[score]}"),
        TextColumn("train loss {task.fields[train_loss]}"),
        TextColumn("uploaded {task.fields[upload]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title="pollen simulate", show_header=False)
    for key in (
        "task",
        "strategy",
        "partition",
        "clients",
        "rounds",
        "primary_metric",
        f"final_{summary.get('primary_metric', 'accuracy')}",
        f"best_{summary.get('primary_metric', 'accuracy')}",
        "upload_bytes_total",
        "upload_bytes_per_client_round",
        "download_bytes_total",
        "final_sparsity",
        "rejected_updates",
        "failed_clients",
        "wall_s",
    ):
        value = summary.get(key)
        if "_bytes_" in key and isinstance(value, (int, float)):
            value = human_bytes(value)
        elif isinstance(value, float):
            value = f"{value:.4f}"
        table.add_row(key, str(value))
    return table
