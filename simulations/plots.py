"""Plots of a run's metrics (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_accuracy(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Central test accuracy per round, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in rows]
    accuracy = [r["accuracy"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(rounds, accuracy, marker="o", markersize=3)
    ax.set_xlabel("round")
    ax.set_ylabel("central test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
