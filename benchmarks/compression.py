"""Compression benchmark: upload bytes vs accuracy, float32 FedAvg as the baseline of the same run.

On digits (50 clients, Dirichlet 0.5), FedProx Synthetic(1,1) (30 clients, natural split) and
the shapes CNN (22,618 parameters, 30 clients, Dirichlet 0.5; client_sdk/tasks/shapes.py), with
the same seeds for every row: float32 FedAvg; today's (min, max) quantization (4 and 1 bit + EF)
and top-5% + 4-bit + EF; the rotation rows of issue 20: randomized Hadamard rotation + EDEN/DRIVE
at 1/2/4 bits (unbiased), 1 bit with the least-squares scale + EF, EF-signSGD, rotation + top-k
and rotation + pruning; EDEN's fractional bits (a seeded random fraction p of the rotated values,
``quant-fraction``; unbiased, and mse + EF). Prints one table (upload bytes per client per
round, ratio vs float32, final accuracy as the mean over ``--seeds`` seeds, delta accuracy in
points with the per-seed deltas) and writes accuracy_vs_bytes.png (one panel per task). Pruning
ramps from 50% to 90% sparsity over rounds 1-10 (cubic, one global magnitude threshold). Runs on
the batched engine on the CPU by default (``--engine``); a run never aborts (max-failed-rounds 0).

    .venv/bin/python benchmarks/compression.py [--rounds 30] [--seeds 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from simulations.runner import SimulationSettings, simulate
from simulations.settings import SimulationRunSettings

PRUNE = {"prune": 0.9, "prune_initial": 0.5, "prune_end_round": 10, "prune_scope": "global"}
EDEN = {"quant_scheme": "eden", "rotate": "client"}
EDEN_EF = {**EDEN, "eden_scale": "mse", "error_feedback": True}  # the biased-with-EF variant
ROWS: list[tuple[str, dict[str, Any]]] = [
    ("float32 FedAvg", {}),
    ("4-bit + EF", {"quant_bits": 4, "error_feedback": True}),
    ("1-bit + EF", {"quant_bits": 1, "error_feedback": True}),
    ("top-5% + 4-bit + EF", {"topk": 0.05, "quant_bits": 4, "error_feedback": True}),
    ("rot + 1-bit EDEN", {**EDEN, "quant_bits": 1}),
    ("rot + 2-bit EDEN", {**EDEN, "quant_bits": 2}),
    ("rot + 4-bit EDEN", {**EDEN, "quant_bits": 4}),
    ("rot + 1-bit mse + EF", {**EDEN_EF, "quant_bits": 1}),
    # Karimireddy et al. 2019: one mean-|x| scale for the whole vector
    (
        "EF-signSGD",
        {"quant_scheme": "sign", "quant_bits": 1, "quant_chunk": 1 << 24, "error_feedback": True},
    ),
    ("top-5% + rot + 1-bit + EF", {**EDEN_EF, "quant_bits": 1, "topk": 0.05}),
    ("90% pruned + rot + 1-bit + EF", {**PRUNE, **EDEN_EF, "quant_bits": 1}),
    # EDEN's fractional bits: a seeded random fraction p of each rotated block (wire.subsample)
    *(
        (f"rot + 1-bit EDEN, p={p}", {**EDEN, "quant_bits": 1, "quant_fraction": p})
        for p in (0.5, 0.25, 0.18, 0.15)
    ),
    *(
        (f"rot + 1-bit mse + EF, p={p}", {**EDEN_EF, "quant_bits": 1, "quant_fraction": p})
        for p in (0.5, 0.25, 0.18, 0.15)
    ),
]
SHAPES = "client_sdk.tasks.shapes:shapes_task"
TASKS = {
    "digits": {"task": "digits", "partition": "dirichlet:0.5", "clients": 50},
    "synthetic(1,1)": {"task": "synthetic:1,1", "partition": "natural", "clients": 30},
    "shapes-cnn": {"task": SHAPES, "partition": "dirichlet:0.5", "clients": 30},
}


def run_row(
    task: dict[str, Any],
    options: dict[str, Any],
    rounds: int,
    seed: int,
    out: Path,
    engine: str = "batched",
) -> dict:
    run = SimulationRunSettings(
        task=task["task"],
        partition=task["partition"],
        num_server_rounds=rounds,
        min_available_nodes=task["clients"],
        seed=seed,
        max_failed_rounds=0,  # a diverging codec (1-bit + EF) keeps its model, is not aborted
        **options,
    )
    settings = SimulationSettings(
        run=run, clients=task["clients"], out_dir=out, engine=engine, device="cpu"
    )
    return simulate(settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1, same for every row")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    parser.add_argument(
        "--rows",
        nargs="*",
        default=[name for name, _ in ROWS],
        choices=[name for name, _ in ROWS],
        help="rerun only these rows and merge them into an existing compression.json",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--engine",
        default="batched",
        choices=["batched", "flower"],
        help="batched (on the CPU; numerically Flower's, see fidelity.py) or flower (Ray)",
    )
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    previous = args.out / "compression.json"
    results: dict[str, list[dict[str, Any]]] = (
        json.loads(previous.read_text()) if previous.exists() else {}
    )
    for task_name in args.tasks:
        task = TASKS[task_name]
        done = {row["row"]: row for row in results.get(task_name, [])}
        for row_name, options in ROWS:
            if row_name not in args.rows:
                continue
            name = task_name.replace(":", "-").replace("(", "").replace(")", "").replace(",", "-")
            slug = f"{name}-{row_name.replace(' ', '').replace('%', 'pct')}"
            runs = [
                run_row(
                    task,
                    options,
                    args.rounds,
                    seed,
                    args.out / "runs" / f"{slug}-s{seed}",
                    args.engine,
                )
                for seed in range(args.seeds)
            ]
            done[row_name] = {
                "row": row_name,
                "accuracies": [r["final_accuracy"] for r in runs],
                "final_accuracy": float(np.mean([r["final_accuracy"] for r in runs])),
                "upload_bytes_per_client_round": float(
                    np.mean([r["upload_bytes_per_client_round"] for r in runs])
                ),
                "download_bytes_per_client_round": float(
                    np.mean(
                        [r["download_bytes_total"] / (r["rounds"] * r["clients"]) for r in runs]
                    )
                ),
            }
            print(f"done: {task_name} / {row_name}: {done[row_name]['accuracies']}", flush=True)
            results[task_name] = [done[name] for name, _ in ROWS if name in done]
            args.out.mkdir(parents=True, exist_ok=True)
            previous.write_text(json.dumps(results, indent=2))  # after every row
    print(
        f"rounds={args.rounds} seeds={args.seeds} engine={args.engine} "
        "(mean final accuracy over seeds)"
    )
    print_table(results)
    plot(results, args.out / "accuracy_vs_bytes.png")


def print_table(results: dict[str, list[dict[str, Any]]]) -> None:
    header = (
        f"{'task':<15} {'row':<30} {'up B/client/round':>17} {'ratio':>7} "
        f"{'accuracy':>9} {'Δ acc (pt)':>10} {'Δ per seed (pt)':>22}"
    )
    print(header)
    print("-" * len(header))
    for task_name, rows in results.items():
        base = rows[0]
        for row in rows:
            up = row["upload_bytes_per_client_round"]
            ratio = base["upload_bytes_per_client_round"] / up
            delta = 100 * (row["final_accuracy"] - base["final_accuracy"])
            per_seed = " ".join(
                f"{100 * (a - b):+.1f}"
                for a, b in zip(row["accuracies"], base["accuracies"], strict=True)
            )
            print(
                f"{task_name:<15} {row['row']:<30} {up:>17.0f} {ratio:>6.1f}x "
                f"{row['final_accuracy']:>9.4f} {delta:>+10.2f} {per_seed:>22}"
            )


def plot(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 5), dpi=100)
    for ax, (task_name, rows) in zip(np.atleast_1d(axes), results.items(), strict=True):
        base = rows[0]["final_accuracy"]
        floor = base - 0.1  # rows below (collapsed ones) sit on the floor, their accuracy named
        for r in rows:
            x, y = r["upload_bytes_per_client_round"], r["final_accuracy"]
            rotated = r["row"].startswith(("rot", "top-5% + rot", "90% pruned + rot", "EF-sign"))
            label = r["row"] if y >= floor else f"{r['row']} ({y:.2f})"
            ax.plot(
                x,
                max(y, floor),
                "o" if y >= floor else "v",
                color="tab:red" if rotated else "tab:blue",
            )
            ax.annotate(
                label, (x, max(y, floor)), fontsize=6, xytext=(3, 3), textcoords="offset points"
            )
        ax.set_ylim(floor - 0.005, base + 0.02)
        ax.axhline(base - 0.01, color="gray", lw=0.8, ls="--", label="float32 - 1 pt")
        ax.set_xscale("log")
        ax.set_title(task_name)
        ax.set_xlabel("upload bytes per client per round (log)")
        ax.set_ylabel("final central test accuracy (mean of seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
