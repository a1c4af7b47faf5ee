"""Plots of runs (matplotlib, headless): the Task's primary metric and the loss per round, and
the metric against cumulative uploaded bytes; one run, or several overlaid (``pollen report``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from server import RunSettings


def primary_metric(run_dir: Path, rows: Sequence[dict[str, Any]]) -> str:
    """The metric a run follows: its summary's, else accuracy if logged, else the loss."""
    summary = run_dir / "summary.json"
    try:
        metric = json.loads(summary.read_text()).get("primary_metric")
    except (OSError, ValueError, AttributeError):
        metric = None
    if isinstance(metric, str) and rows and metric in rows[-1]:
        return metric
    return "accuracy" if rows and "accuracy" in rows[-1] else "loss"


def settings_label(run: RunSettings, engine: str) -> str:
    """The settings a reader needs to tell runs apart: compression, secure aggregation, engine."""
    parts = [run.strategy, f"{engine} engine"]
    if run.quant_bits:
        parts.append(f"{run.quant_bits}-bit" + ("+EF" if run.error_feedback else ""))
    elif run.error_feedback:
        parts.append("EF")
    if run.topk:
        parts.append(f"top-{run.topk:.0%}")
    if run.prune:
        parts.append(f"pruned {run.prune:.0%}")
    if run.download_bits:
        parts.append(f"{run.download_bits}-bit download")
    if run.secure_agg:
        parts.append(f"SecAgg+ {run.secagg_bits}-bit")
    return ", ".join(parts)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    return plt, MaxNLocator


def _cumulative_upload_mb(rows: Sequence[dict[str, Any]]) -> list[float]:
    total, xs = 0, []
    for row in rows:
        total += row.get("upload_bytes_total", 0)
        xs.append(total / 1e6)
    return xs


def plot_run(rows: Sequence[dict[str, Any]], path: Path, *, metric: str, title: str = "") -> Path:
    """The central ``metric`` and the central loss per round (whole-number rounds), as a PNG."""
    plt, MaxNLocator = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 6), dpi=100, sharex=True)
    rounds = [r["round"] for r in rows]
    top.plot(rounds, [r.get(metric) for r in rows], marker="o", markersize=3)
    top.set_ylabel(f"central test {metric}")
    if metric == "accuracy":
        top.set_ylim(0, 1)
    bottom.plot(rounds, [r.get("loss") for r in rows], marker="o", markersize=3, color="C1")
    bottom.set_ylabel("central test loss")
    bottom.set_xlabel("round")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    if title:
        top.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_runs(
    runs: Sequence[tuple[str, Sequence[dict[str, Any]]]], path: Path, *, metric: str, title: str
) -> Path:
    """Several runs overlaid: ``metric`` per round and per cumulative uploaded MB."""
    plt, MaxNLocator = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100, sharey=True)
    for label, rows in runs:
        ys = [r.get(metric) for r in rows]
        left.plot([r["round"] for r in rows], ys, marker="o", markersize=3, label=label)
        right.plot(_cumulative_upload_mb(rows), ys, marker="o", markersize=3, label=label)
    left.set_xlabel("round")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_xlabel("cumulative upload (MB, all clients)")
    left.set_ylabel(f"central test {metric}")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _read(run_dir: Path) -> list[dict[str, Any]]:
    from server import read_metrics

    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        raise FileNotFoundError(f"{metrics} not found: is {run_dir} a Pollen run directory?")
    rows = read_metrics(metrics)
    if not rows:
        raise ValueError(f"{metrics} has no rounds yet")
    return rows


def write_report(run_dirs: Sequence[Path], out: Path | None = None) -> list[Path]:
    """PNG plots of one run directory (written into it), or of several overlaid (written to
    ``out``, default the working directory); returns the files written."""
    loaded = [(run_dir, _read(run_dir)) for run_dir in run_dirs]
    if len(loaded) == 1:
        run_dir, rows = loaded[0]
        metric = primary_metric(run_dir, rows)
        return [
            plot_run(rows, run_dir / "accuracy.png", metric=metric, title=run_dir.name),
            plot_runs(
                [(run_dir.name, rows)],
                run_dir / "accuracy_vs_upload.png",
                metric=metric,
                title=run_dir.name,
            ),
        ]
    metrics = {primary_metric(run_dir, rows) for run_dir, rows in loaded}
    metric = metrics.pop() if len(metrics) == 1 else "loss"  # runs of different Tasks
    target = (out or Path.cwd()) / "report.png"
    labels = [run_dir.name or str(run_dir) for run_dir, _ in loaded]
    runs = list(zip(labels, [rows for _, rows in loaded], strict=True))
    return [plot_runs(runs, target, metric=metric, title=f"{len(runs)} runs: {metric}")]
