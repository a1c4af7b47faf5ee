"""The batched engine's per-client host path: replies on the engine side, aggregation on the server.

At thousands of clients per round on a GPU, what costs most is no longer training but what
each client's update costs outside it: building its payload and reply, and the server decoding
and adding it. This times exactly that, per client, for each way the engine can send updates
against the way it sent them before (same run, same clients, same seeds):

- float32 updates under FedAvg: pooled (one weighted mean per chunk) vs one payload per client;
- 8-bit, and 4-bit with error feedback: pooled (the weighted mean of what the server would
  decode from each payload; the engine's default on CUDA only) vs the device codec's payloads
  vs the SDK's encoder client by client;
- secure aggregation (SecAgg+, 8 bits): masked uploads for the whole round at once, each pair's
  key agreed and its mask stream expanded once (:mod:`simulations.batched.secure`,
  :mod:`simulations.batched.agreements`), vs the SDK's stages client by client. Its server
  column holds the unmasking stage (the clients' share replies included).

"round s" is the whole round's wall time (median over rounds 2+; for SecAgg+ it includes the
key and share stages). Local training is replaced by a fixed per-client perturbation of the
global model (seeded), so the timings hold the host path only; everything after training is
the engine's and the server's real code. Tutorial CNN (62,006 parameters), chunks of 500
clients, rounds after the first.

    .venv/bin/python benchmarks/host_path.py --clients 2000
    .venv/bin/python benchmarks/host_path.py --clients 1000 --only secagg
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from client_sdk.tasks import get_task  # noqa: E402
from client_sdk.training import TrainStats  # noqa: E402
from server import read_metrics  # noqa: E402
from server.app import build_server_app  # noqa: E402
from simulations.app import client_data_of  # noqa: E402
from simulations.batched import BatchedGrid, run_server_app  # noqa: E402
from simulations.batched import chunks as chunk_module  # noqa: E402
from simulations.batched.training import TrainedChunk  # noqa: E402
from simulations.settings import SimulationRunSettings  # noqa: E402

# Groups of (row, run settings, engine options): the newer paths first, then the path they
# replaced ("vs before" divides by the group's last row).
GROUPS = [
    [
        ("float32, pooled", {}, {}),
        ("float32, payload per client", {}, {"pool_uploads": False}),
    ],
    [
        ("8-bit, pooled", {"quant_bits": 8}, {"pool_quantized": True}),
        ("8-bit, device codec", {"quant_bits": 8}, {"pool_uploads": False}),
        ("8-bit, SDK encoder per client", {"quant_bits": 8}, {"encode_on_device": False}),
    ],
    [
        (
            "4-bit + EF, pooled",
            {"quant_bits": 4, "error_feedback": True},
            {"pool_quantized": True},
        ),
        (
            "4-bit + EF, device codec",
            {"quant_bits": 4, "error_feedback": True},
            {"pool_uploads": False},
        ),
        (
            "4-bit + EF, SDK encoder",
            {"quant_bits": 4, "error_feedback": True},
            {"encode_on_device": False},
        ),
    ],
    [
        ("SecAgg+ 8-bit, chunk at once", {"secure_agg": True}, {}),
        ("SecAgg+ 8-bit, SDK per client", {"secure_agg": True}, {"encode_on_device": False}),
    ],
]


def perturbed_training(plan, batch, seeds, device, layout=""):
    """Stand-in for ``train_clients``: global + 0.01 * N(0, 1), seeded by the first client."""
    k = len(seeds)
    generator = torch.Generator().manual_seed(seeds[0] % 2**31)
    local = {}
    for name, array in plan.global_arrays.items():
        start = torch.from_numpy(array).to(device)
        noise = torch.randn((k, *start.shape), generator=generator).to(device)
        local[name] = (start + 0.01 * noise).to(torch.float32)
    stats = [TrainStats(mean_loss=0.5, num_examples=int(n), steps=5) for n in batch.sizes]
    return TrainedChunk(local=local, stats=stats)


def measure(
    n: int, rounds: int, run: dict[str, Any], engine: dict[str, Any], device: torch.device
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = SimulationRunSettings(
            task="tutorial-cnn:50",
            partition="natural",
            num_server_rounds=rounds,
            batch_size=10,
            num_partitions=n,
            min_available_nodes=n,
            out_dir=tmp,
            **run,
        )
        grid = BatchedGrid(
            task=get_task,
            data=client_data_of(settings),
            num_nodes=n,
            device=device,
            clients_per_batch=500,
            cache_bytes=16 << 30,
            **engine,
        )
        reply_marks: list[float] = []
        app = build_server_app(
            settings,
            out_dir=Path(tmp),
            on_round=lambda _row: reply_marks.append(grid.stats.reply_seconds),
        )
        run_server_app(app, grid)
        rows = read_metrics(Path(tmp) / "metrics.jsonl")
    replies = [b - a for a, b in zip(reply_marks[1:], reply_marks[2:], strict=False)]
    later = [r for r in rows if r["round"] >= 2]
    return {
        "reply_us": 1e6 * statistics.median(replies) / n,
        "aggregate_us": 1e6 * statistics.median(r["aggregate_s"] for r in later) / n,
        "round_s": statistics.median(r["round_wall_s"] for r in later),
        "upload_bytes_per_client": later[-1]["upload_bytes_per_client"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--device", type=torch.device, default=torch.device("cpu"))
    parser.add_argument(
        "--only",
        default="",
        help="run only the groups whose first row holds this text, e.g. SecAgg",
    )
    args = parser.parse_args()
    if args.rounds < 3:
        parser.error("--rounds must be >= 3 (round 1 generates the data)")
    chunk_module.train_clients = perturbed_training
    results = []
    print(f"{args.clients} clients per round; microseconds per client, rounds after the first")
    print(
        f"{'path':<30} {'replies':>9} {'server':>9} {'total':>9} {'vs before':>10}  "
        f"bytes/client  round s"
    )
    groups = [g for g in GROUPS if args.only.lower() in g[0][0].lower()]
    for group in groups:
        rows = []
        for name, run, engine in group:
            row = {"name": name, **measure(args.clients, args.rounds, run, engine, args.device)}
            row["total_us"] = row["reply_us"] + row["aggregate_us"]
            rows.append(row)
        for r in rows:
            r["speedup"] = rows[-1]["total_us"] / r["total_us"]
            print(
                f"{r['name']:<30} {r['reply_us']:9.1f} {r['aggregate_us']:9.1f} "
                f"{r['total_us']:9.1f} {r['speedup']:9.2f}x  "
                f"{r['upload_bytes_per_client']:12.0f}  {r['round_s']:7.2f}",
                flush=True,
            )
        results += rows
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"clients": args.clients, "rows": results}, indent=2))


if __name__ == "__main__":
    main()
