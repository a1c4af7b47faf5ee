"""Plots of a run's metrics (matplotlib, headless): accuracy per round and per uploaded byte."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _accuracy_plot(
    xs: Sequence[float], ys: Sequence[float], xlabel: str, path: Path, title: str
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(xs, ys, marker="o", markersize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("central test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_accuracy(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Central test accuracy per round, written as a PNG."""
    return _accuracy_plot(
        [r["round"] for r in rows], [r["accuracy"] for r in rows], "round", path, title
    )


def plot_accuracy_vs_upload(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Central test accuracy against the cumulative bytes clients uploaded, as a PNG."""
    total, xs = 0, []
    for row in rows:
        total += row.get("upload_bytes_total", 0)
        xs.append(total / 1e6)
    ys = [r["accuracy"] for r in rows]
    return _accuracy_plot(xs, ys, "cumulative upload (MB, all clients)", path, title)


def write_report(run_dir: Path) -> list[Path]:
    """PNG plots of a run directory's ``metrics.jsonl``; returns the files written."""
    from server import read_metrics

    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        raise FileNotFoundError(f"{metrics} not found: is {run_dir} a Pollen run directory?")
    rows = read_metrics(metrics)
    if not rows:
        raise ValueError(f"{metrics} has no rounds yet")
    title = run_dir.name
    return [
        plot_accuracy(rows, run_dir / "accuracy.png", title=title),
        plot_accuracy_vs_upload(rows, run_dir / "accuracy_vs_upload.png", title=title),
    ]
