"""Robust aggregation under attack: 20% of clients send sign-flipped, 10x-scaled updates.

Digits, 50 clients, Dirichlet(0.5), 30 rounds, same seed for every row. Rows: FedAvg without
attack (the reference), then FedAvg, FedMedian, FedTrimmedAvg (beta 0.2), Krum and MultiKrum
(f = 10) under attack, and FedAvg with update clipping. Prints final accuracy and its
difference to the unattacked FedAvg of the same run.

    .venv/bin/python benchmarks/robustness.py [--rounds 30] [--seed 0]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from simulations.runner import SimulationSettings, simulate
from simulations.settings import SimulationRunSettings

CLIENTS = 50
ATTACK = {"attack": "sign-flip", "malicious_fraction": 0.2, "attack_scale": 10.0}
ROWS: list[tuple[str, dict[str, Any]]] = [
    ("FedAvg, no attack", {}),
    ("FedAvg", ATTACK),
    ("FedAvg + clip-norm 1", {**ATTACK, "clip_norm": 1.0}),
    ("FedMedian", {**ATTACK, "strategy": "fedmedian"}),
    ("FedTrimmedAvg (0.2)", {**ATTACK, "strategy": "fedtrimmedavg", "trim_beta": 0.2}),
    ("Krum (f=10)", {**ATTACK, "strategy": "krum", "num_malicious": 10}),
    (
        "MultiKrum (f=10, m=30)",
        {**ATTACK, "strategy": "multikrum", "num_malicious": 10, "multikrum_select": 30},
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/robustness"))
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    results = []
    for name, options in ROWS:
        run = SimulationRunSettings(
            task="digits",
            partition="dirichlet:0.5",
            num_server_rounds=args.rounds,
            min_available_nodes=CLIENTS,
            seed=args.seed,
            **options,
        )
        slug = name.lower().replace(" ", "-").replace(",", "").replace("(", "").replace(")", "")
        summary = simulate(SimulationSettings(run=run, clients=CLIENTS, out_dir=args.out / slug))
        results.append((name, summary["final_accuracy"]))
        print(f"done: {name}: {summary['final_accuracy']:.4f}", flush=True)
    reference = results[0][1]
    print(
        f"\n{'aggregation (20% sign-flip x10 attackers)':<42} {'accuracy':>9} {'vs no attack':>13}"
    )
    for name, accuracy in results:
        print(f"{name:<42} {accuracy:>9.4f} {100 * (accuracy - reference):>+12.2f}pt")


if __name__ == "__main__":
    main()
