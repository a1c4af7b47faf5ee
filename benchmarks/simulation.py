"""Simulation speed: plain Flower vs Pollen on Flower's engine vs Pollen's batched engine.

Same work in every row: Flower's tutorial CNN, each client one local epoch of SGD (momentum
0.9, lr 0.01) over its own SAMPLES generated CIFAR-shaped images in batches of BATCH, FedAvg
over every client each round. Each row runs in its own process; the figure is the median
wall time of the rounds after the first (the first pays for Ray start-up, data generation and
CUDA warm-up), and the ratio is against plain Flower's clients/s measured in the same run.

    .venv/bin/python benchmarks/simulation.py --clients 50 --rounds 4
    python3 benchmarks/simulation.py --device cuda --clients 1000 10000   # on a GPU machine

Rows above ``--max-ray-clients`` skip the two Ray engines (too slow to be worth the minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _env(samples: int, batch: int) -> dict[str, str]:
    env = dict(os.environ, SAMPLES=str(samples), BATCH=str(batch), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    return env


def plain_flower(n: int, rounds: int, device: str, samples: int, batch: int) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE / "flower_baseline.py"), str(n), str(rounds), device]
    started = time.perf_counter()
    out = subprocess.run(
        cmd, env=_env(samples, batch), capture_output=True, text=True, check=False
    ).stdout
    match = re.search(r"median_later_round_s=([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"flower_baseline.py printed no RESULT line:\n{out[-2000:]}")
    return {"round_s": float(match.group(1)), "wall_s": time.perf_counter() - started}


def pollen(
    n: int, rounds: int, engine: str, device: str, samples: int, batch: int, *extra: str
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "pollen.cli", "simulate", "--task", f"tutorial-cnn:{samples}",
            "--partition", "natural", "--clients", str(n), "--rounds", str(rounds),
            "--batch-size", str(batch), "--engine", engine, "--out", tmp,
        ]  # fmt: skip
        if engine == "batched":
            cmd += ["--device", device, *extra]
        started = time.perf_counter()
        proc = subprocess.run(
            cmd, env=_env(samples, batch), capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"pollen simulate failed:\n{proc.stdout[-1500:]}{proc.stderr[-3000:]}"
            )
        rows = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((Path(tmp) / "summary.json").read_text())
    later = [r["round_wall_s"] for r in rows if r["round"] >= 2]
    return {
        "round_s": statistics.median(later),
        "first_round_s": next(r["round_wall_s"] for r in rows if r["round"] == 1),
        "wall_s": time.perf_counter() - started,
        "peak_memory_bytes": summary.get("peak_memory_bytes"),
        "peak_memory_kind": summary.get("peak_memory_kind"),
        "clients_per_batch": summary.get("clients_per_batch"),
        "device": summary.get("device", "cpu"),
        # totals over all rounds: batched training, replies, data; the server's aggregation
        **{
            k: summary.get(k)
            for k in (
                "train_s",
                "reply_s",
                "data_s",
                "aggregate_s",
                "layout",
                "layout_s",
                "cudnn_benchmark",
                "pooled_updates",
            )
        },
    }


def _timed(layout_s: dict[str, float] | None) -> str:
    """pick_layout's timings (CUDA), e.g. " (timed: grouped 0.410s, unfold 0.090s, ...)"."""
    if not layout_s:
        return ""
    return " (timed: " + ", ".join(f"{name} {s:.3f}s" for name, s in layout_s.items()) + ")"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[50])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--device", default="cpu", help="cpu | cuda (plain Flower and batched)")
    parser.add_argument("--max-ray-clients", type=int, default=1000)
    parser.add_argument("--skip-pollen-flower", action="store_true")
    parser.add_argument(
        "--per-client-uploads",
        action="store_true",
        help="add a batched row with --no-pool-uploads (one payload per client, as before pooling)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    if args.rounds < 3:
        parser.error("--rounds must be >= 3 so that the median skips the first two rounds' noise")
    results: list[dict[str, Any]] = []
    for n in args.clients:
        base = None
        rows: list[tuple[str, dict[str, Any] | None]] = []
        if n <= args.max_ray_clients:
            base = plain_flower(n, args.rounds, args.device, args.samples, args.batch)
            rows.append(("plain Flower (Ray)", base))
            if not args.skip_pollen_flower:
                rows.append(
                    (
                        "Pollen, Flower engine",
                        pollen(n, args.rounds, "flower", args.device, args.samples, args.batch),
                    )
                )
        rows.append(
            (
                "Pollen, batched engine",
                pollen(n, args.rounds, "batched", args.device, args.samples, args.batch),
            )
        )
        if args.per_client_uploads:
            rows.append(
                (
                    "Pollen batched, unpooled",
                    pollen(
                        n,
                        args.rounds,
                        "batched",
                        args.device,
                        args.samples,
                        args.batch,
                        "--no-pool-uploads",
                    ),  # fmt: skip
                )
            )
        for name, row in rows:
            row.update(name=name, clients=n, clients_per_s=n / row["round_s"])
            row["ratio_vs_plain_flower"] = (
                row["clients_per_s"] / (n / base["round_s"]) if base else None
            )
            results.append(row)
            ratio = f"{row['ratio_vs_plain_flower']:.2f}x" if base else "-"
            peak = row.get("peak_memory_bytes")
            print(
                f"{n:>6} clients | {name:<24} | {row['round_s']:8.3f} s/round | "
                f"{row['clients_per_s']:9.1f} clients/s | {ratio:>7} vs plain Flower"
                + (f" | peak {peak / 2**30:.2f} GiB ({row['peak_memory_kind']})" if peak else "")
                + (
                    f" | totals: train {row['train_s']}s, replies {row['reply_s']}s, "
                    f"data {row['data_s']}s, server aggregation {row['aggregate_s']}s, "
                    f"layout {row['layout']}"
                    f"{' (cuDNN benchmark mode)' if row.get('cudnn_benchmark') else ''}"
                    f"{_timed(row.get('layout_s'))}, "
                    f"pooled updates {row['pooled_updates']}"
                    if row.get("train_s") is not None
                    else ""
                ),
                flush=True,
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "device": args.device,
            "samples": args.samples,
            "batch": args.batch,
            "rounds": args.rounds,
        }
        args.json.write_text(json.dumps({"settings": meta, "rows": results}, indent=2))


if __name__ == "__main__":
    main()
