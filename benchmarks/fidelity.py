"""Batched engine vs Flower's engine: max |difference| of the global model after R rounds.

Same seed, same sampled clients, same Task; the Flower engine (Ray, the per-client reference
loop on CPU) against the batched engine on ``--device``. The CPU case is also a test
(tests/simulations/test_engines.py, bound 1e-4); on CUDA this reports how far cuDNN's
kernels move the result (TF32 is switched off for the run).

    .venv/bin/python benchmarks/fidelity.py [--device cuda] [--rounds 3]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from server import MODEL_FILE
from simulations.runner import SimulationSettings, simulate
from simulations.settings import SimulationRunSettings

CASES = {
    "digits, Dirichlet(0.5), FedAvg, half the clients per round": {
        "task": "digits",
        "partition": "dirichlet:0.5",
        "fraction_train": 0.5,
    },
    "Synthetic(1,1) (unequal sizes), FedProx mu=0.1": {
        "task": "synthetic",
        "partition": "natural",
        "strategy": "fedprox",
        "proximal_mu": 0.1,
    },
    "digits, 50% pruned + int8 QAT + 8-bit nearest": {
        "task": "digits",
        "partition": "iid",
        "prune": 0.5,
        "prune_schedule": "constant",
        "qat": True,
        "quant_bits": 8,
        "quant_rounding": "nearest",
    },
    "tutorial CNN, 12 images per client (image layouts: packed on CPU)": {
        "task": "tutorial-cnn:12",
        "partition": "natural",
    },
}


def final_model(engine: str, device: str, out: Path, clients: int, rounds: int, **run) -> dict:
    settings = SimulationSettings(
        run=SimulationRunSettings(num_server_rounds=rounds, min_available_nodes=clients, **run),
        clients=clients,
        out_dir=out,
        engine=engine,
        device=device if engine == "batched" else "auto",
    )
    simulate(settings)
    with np.load(out / MODEL_FILE) as saved:
        return {k: saved[k] for k in saved.files}


def max_difference(a: dict, b: dict) -> float:
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--case", type=int, nargs="*", help="case numbers to run (default: all)")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, run) in enumerate(CASES.items()):
            if args.case and i not in args.case:
                continue
            ref = final_model(
                "flower", "cpu", Path(tmp) / f"f{i}", args.clients, args.rounds, **run
            )
            got = final_model(
                "batched", args.device, Path(tmp) / f"b{i}", args.clients, args.rounds, **run
            )
            print(
                f"{name}: max |batched({args.device}) - flower(cpu)| after {args.rounds} rounds "
                f"= {max_difference(ref, got):.3e}",
                flush=True,
            )


if __name__ == "__main__":
    main()
