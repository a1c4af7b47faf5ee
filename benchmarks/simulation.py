"""Simulation speed: plain Flower vs Pollen on Flower's engine vs Pollen's batched engine (and pfl).

Same work in every row: Flower's tutorial CNN, each client one local epoch of SGD (momentum
0.9, lr 0.01) over its own SAMPLES generated CIFAR-shaped images in batches of BATCH, FedAvg
over every client each round. Each row runs in its own process; the figure is the median
wall time of the rounds after the first (the first pays for Ray start-up, data generation and
CUDA warm-up), and the ratios are against plain Flower's and against Pollen-on-Flower's-engine's
clients/s measured in the same run.

Unequal sizes (``--sizes dirichlet:0.3 pareto:2``, or ``--skewed`` for both at 100 and 1000
clients): client i holds its own count, SAMPLES on average (client_sdk/tasks/sizes.py; task
``tutorial-cnn:SAMPLES:SIZES``). Plain Flower's script has equal sizes only, so skewed rows
are measured against Flower's engine running Pollen's Task (same data, same steps).
``--pfl`` adds Apple's pfl-research (benchmarks/pfl_bench.py, in .venv-pfl made by
benchmarks/pfl_env.sh): its single-process mode and its torchrun mode with one worker per core.

    .venv/bin/python benchmarks/simulation.py --clients 50 --rounds 4
    .venv/bin/python benchmarks/simulation.py --skewed --pfl --rounds 3
    python3 benchmarks/simulation.py --device cuda --clients 1000 10000   # on a GPU machine
    python3 benchmarks/simulation.py --device cuda --skewed --with-10k    # skewed, 10,000 too

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CPUS = os.cpu_count() or 1
EQUAL = "equal"
SKEWED = ("dirichlet:0.3", "pareto:2")
PFL_PYTHON = ROOT / ".venv-pfl" / "bin" / "python"


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
    n: int,
    rounds: int,
    engine: str,
    device: str,
    samples: int,
    batch: int,
    *extra: str,
    sizes: str = EQUAL,
) -> dict[str, Any]:
    task = f"tutorial-cnn:{samples}" + ("" if sizes == EQUAL else f":{sizes}")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "pollen.cli", "simulate", "--task", task,
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


def pfl(
    n: int,
    rounds: int,
    samples: int,
    batch: int,
    sizes: str,
    workers: int,
    python: Path,
    device: str,
) -> dict[str, Any]:
    """benchmarks/pfl_bench.py in pfl's venv: one process, or ``workers`` under torchrun."""
    script = [str(HERE / "pfl_bench.py"), str(n), str(rounds), "--samples", str(samples)]
    script += ["--batch", str(batch), "--sizes", sizes]
    if workers > 1:
        torchrun = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={workers}"]
        cmd = [str(python), *torchrun, *script]
    else:
        cmd = [str(python), *script]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(max(1, CPUS // workers)))
    env["PFL_PYTORCH_DEVICE"] = device  # every torchrun worker on the one GPU, or the CPU
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    match = re.search(r"median_later_round_s=([\d.]+)", proc.stdout)
    if match is None:
        raise RuntimeError(
            f"pfl_bench.py printed no RESULT line:\n{(proc.stdout + proc.stderr)[-3000:]}"
        )
    return {"round_s": float(match.group(1)), "wall_s": time.perf_counter() - started}


def _timed(layout_s: dict[str, float] | None) -> str:
    """pick_layout's timings (CUDA), e.g. " (timed: grouped 0.410s, unfold 0.090s, ...)"."""
    if not layout_s:
        return ""
    return " (timed: " + ", ".join(f"{name} {s:.3f}s" for name, s in layout_s.items()) + ")"


def _jobs(n: int, sizes: str, args: argparse.Namespace) -> list[tuple[str, Callable[[], dict]]]:
    """(row name, what measures it) for ``n`` clients of ``sizes``, baselines first."""
    common = (n, args.rounds)
    shape = (args.samples, args.batch)
    jobs: list[tuple[str, Callable[[], dict]]] = []
    if n <= args.max_ray_clients:
        if sizes == EQUAL:  # flower_baseline.py gives every client SAMPLES images
            jobs.append(("plain Flower (Ray)", lambda: plain_flower(*common, args.device, *shape)))
        if sizes != EQUAL or not args.skip_pollen_flower:
            jobs.append(
                (
                    "Pollen, Flower engine",
                    lambda: pollen(*common, "flower", args.device, *shape, sizes=sizes),
                )
            )
    jobs.append(
        (
            "Pollen, batched engine",
            lambda: pollen(*common, "batched", args.device, *shape, sizes=sizes),
        )
    )
    if args.per_client_uploads:
        jobs.append(
            (
                "Pollen batched, unpooled",
                lambda: pollen(
                    *common, "batched", args.device, *shape, "--no-pool-uploads", sizes=sizes
                ),
            )
        )
    if args.pfl:
        for workers in sorted({1, args.pfl_workers}):
            name = "pfl, single process" if workers == 1 else f"pfl, torchrun x{workers}"
            jobs.append(
                (
                    name,
                    lambda w=workers: pfl(*common, *shape, sizes, w, args.pfl_python, args.device),
                )
            )
    return jobs


def _ratio(row: dict[str, Any], base: dict[str, Any] | None) -> float | None:
    return base["round_s"] / row["round_s"] if base else None


def _details(row: dict[str, Any]) -> str:
    peak = row.get("peak_memory_bytes")
    text = f" | peak {peak / 2**30:.2f} GiB ({row['peak_memory_kind']})" if peak else ""
    if row.get("train_s") is not None:
        text += (
            f" | totals: train {row['train_s']}s, replies {row['reply_s']}s, "
            f"data {row['data_s']}s, server aggregation {row['aggregate_s']}s, "
            f"layout {row['layout']}"
            f"{' (cuDNN benchmark mode)' if row.get('cudnn_benchmark') else ''}"
            f"{_timed(row.get('layout_s'))}, "
            f"pooled updates {row['pooled_updates']}"
        )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=None, help="default: 50")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--samples", type=int, default=50, help="images per client (mean)")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=None,
        help="equal | dirichlet:ALPHA | pareto:A (default equal)",
    )
    parser.add_argument(
        "--skewed",
        action="store_true",
        help=f"sizes {' and '.join(SKEWED)} at 100 and 1000 clients (unless --clients/--sizes)",
    )
    parser.add_argument("--with-10k", action="store_true", help="add 10,000 clients (a GPU's)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (plain Flower and batched)")
    parser.add_argument("--max-ray-clients", type=int, default=1000)
    parser.add_argument("--skip-pollen-flower", action="store_true", help="equal sizes only")
    parser.add_argument(
        "--per-client-uploads",
        action="store_true",
        help="add a batched row with --no-pool-uploads (one payload per client, as before pooling)",
    )
    parser.add_argument("--pfl", action="store_true", help="add pfl-research rows (.venv-pfl)")
    parser.add_argument("--pfl-workers", type=int, default=CPUS, help="torchrun processes")
    parser.add_argument("--pfl-python", type=Path, default=PFL_PYTHON)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    if args.rounds < 3:
        parser.error("--rounds must be >= 3 so that the median skips the first two rounds' noise")
    if args.pfl and not args.pfl_python.exists():
        parser.error(f"--pfl: {args.pfl_python} missing; run bash benchmarks/pfl_env.sh first")
    clients = args.clients or ([100, 1000] if args.skewed else [50])
    clients += [10_000] if args.with_10k and 10_000 not in clients else []
    all_sizes = args.sizes or (list(SKEWED) if args.skewed else [EQUAL])
    results: list[dict[str, Any]] = []
    for n in clients:
        for sizes in all_sizes:
            measured: dict[str, dict[str, Any]] = {}
            for name, measure in _jobs(n, sizes, args):
                row = measure()
                measured[name] = row
                plain = measured.get("plain Flower (Ray)")
                engine = measured.get("Pollen, Flower engine")
                row.update(name=name, clients=n, sizes=sizes, clients_per_s=n / row["round_s"])
                row["ratio_vs_plain_flower"] = _ratio(row, plain)
                row["ratio_vs_flower_engine"] = _ratio(row, engine)
                results.append(row)
                ratios = [row["ratio_vs_plain_flower"], row["ratio_vs_flower_engine"]]
                shown = [f"{r:.2f}x" if r else "-" for r in ratios]
                print(
                    f"{n:>6} clients | {sizes:<13} | {name:<24} | {row['round_s']:8.3f} s/round | "
                    f"{row['clients_per_s']:9.1f} clients/s | {shown[0]:>7} vs plain Flower | "
                    f"{shown[1]:>7} vs Flower engine" + _details(row),
                    flush=True,
                )
            batched = measured["Pollen, batched engine"]
            for name, row in measured.items():
                if name.startswith("pfl"):
                    print(
                        f"{n:>6} clients | {sizes:<13} | Pollen batched vs {name}: "
                        f"{row['round_s'] / batched['round_s']:.2f}x",
                        flush=True,
                    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "device": args.device,
            "samples": args.samples,
            "batch": args.batch,
            "rounds": args.rounds,
            "cpus": CPUS,
        }
        args.json.write_text(json.dumps({"settings": meta, "rows": results}, indent=2))


if __name__ == "__main__":
    main()
