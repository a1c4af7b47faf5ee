"""Privacy benchmark (issue 21): final accuracy vs epsilon per DP mechanism, same seeds, same run.

Two tasks, 500 clients each, every row with the same seeds, clients per round, rounds and clip:

- ``digits``: the built-in MLP 64-128-10 on scikit-learn's digits, IID split (1,437 training
  images, about 3 per client: a Dirichlet split of so few images per client is degenerate).
- ``blobs``: an MLP 20-32-5 on 20,000 points of scikit-learn's ``make_classification`` (5
  classes, seeded, generated offline), Dirichlet(0.5) split, 32 training points per client.

Rows per task and epsilon (delta = 1e-5 for every row; 1/N^1.1 = 1.1e-3 at N = 500 is weak):
no DP (reference, once per seed); Pollen's central DP (``dp-mode central``, fixed clip, noise
multiplier from Pollen's own accountant for fixed-size sampling without replacement over the
planned rounds, :func:`strategies.privacy.accounting.calibrate_noise`; the run re-accounts each
round and reports its epsilon); distributed DP under SecAgg+ (``dp-mode distributed``) at 16 and
12 bits per coordinate, calibrated by the run itself from ``dp-target-epsilon``; and Flower's own
``DifferentialPrivacyServerSideFixedClipping`` wrapping ``FedAvg`` in a plain Flower
``run_simulation`` (:mod:`benchmarks.privacy_flower`) given the noise multiplier Pollen
calibrated (Flower's wrapper only accounts without sampling amplification, so its epsilon column
is Pollen's accountant's for the same noise). Noise is seeded (``dp-seeded-noise``) so that a row
reruns bit for bit; that is an experiment's setting, not a private deployment's.

Prints the table and the check "distributed within 1.0 point of central at the same epsilon with
<= 16 bits" (PASS/MISS) per task and epsilon, writes the results as JSON and a plot (accuracy vs
epsilon, one line per mechanism, one panel per task).

    .venv/bin/python benchmarks/privacy.py [--seeds 3] [--epsilons 1 3 8] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pollen  # noqa: E402
from benchmarks.privacy_flower import run_flower_dp  # noqa: E402
from benchmarks.privacy_tasks import TASKS, TaskSpec  # noqa: E402
from pollen.api import SettingsError  # noqa: E402
from strategies.privacy.accounting import RoundPlan, calibrate_noise  # noqa: E402
from strategies.privacy.distributed import calibrate_multiplier  # noqa: E402

DELTA = 1e-5
RESULTS = Path("benchmarks/results")
Row = dict[str, Any]


def _pollen(spec: TaskSpec, seed: int, out: Path, rounds: int, **dp: Any) -> dict[str, Any]:
    """One Pollen run of ``spec`` (batched engine on the CPU); its summary."""
    return pollen.simulate(
        spec.task,
        out=out,
        seed=seed,
        clients=spec.clients,
        fraction_train=spec.per_round / spec.clients,
        rounds=rounds,
        partition=spec.partition,
        engine="batched",
        device="cpu",
        max_failed_rounds=0,
        **dp,
    )


def _row(mechanism: str, bits: int | None, epsilon: float | None, summary: dict, **extra) -> Row:
    return {
        "mechanism": mechanism,
        "bits": bits,
        "target_epsilon": epsilon,
        "accuracy": float(summary["final_accuracy"]),
        "reported_epsilon": summary.get("dp_epsilon"),
        "wall_s": summary.get("wall_s"),
        **extra,
    }


def no_dp_row(spec: TaskSpec, epsilon: float | None, seed: int, rounds: int, out: Path) -> Row:
    return _row("no DP", 32, None, _pollen(spec, seed, out, rounds))


def central_row(spec: TaskSpec, epsilon: float, seed: int, rounds: int, out: Path) -> Row:
    z = noise_for(spec, epsilon, rounds)
    summary = _pollen(
        spec,
        seed,
        out,
        rounds,
        dp_mode="central",
        dp_noise_multiplier=z,
        dp_clip=spec.clip,
        dp_target_delta=DELTA,
        dp_seeded_noise=True,
    )
    return _row("Pollen central DP", 32, epsilon, summary, noise_multiplier=z)


def distributed_row(bits: int) -> Callable[[TaskSpec, float, int, int, Path], Row]:
    def produce(spec: TaskSpec, epsilon: float, seed: int, rounds: int, out: Path) -> Row:
        summary = _pollen(
            spec,
            seed,
            out,
            rounds,
            dp_mode="distributed",
            secure_agg=True,
            dp_bits=bits,
            dp_dropout_tolerance=DROPOUT_TOLERANCE,
            dp_target_epsilon=epsilon,
            dp_clip=spec.clip,
            dp_target_delta=DELTA,
            dp_seeded_noise=True,
        )
        z = distributed_noise_for(spec, epsilon, rounds, bits)
        return _row(f"Pollen distributed DP {bits}-bit", bits, epsilon, summary, noise_multiplier=z)

    return produce


MECHANISMS: list[tuple[str, Callable[[TaskSpec, float, int, int, Path], Row]]] = [
    ("Pollen central DP", central_row),
    ("Pollen distributed DP 16-bit", distributed_row(16)),
    ("Pollen distributed DP 12-bit", distributed_row(12)),
]
FLOWER = "Flower DP wrapper (central, fixed clip)"
# the simulated clients never drop, so the distributed rows size each noise share for the whole
# cohort, as central DP's noise is (dp-dropout-tolerance's default 0.1 would cost 10% variance)
DROPOUT_TOLERANCE = 0.0

_NOISE: dict[tuple[str, float, int], float] = {}


def noise_for(spec: TaskSpec, epsilon: float, rounds: int) -> float:
    """The noise multiplier Pollen's accountant calibrates for ``epsilon`` at delta 1e-5."""
    key = (spec.name, epsilon, rounds)
    if key not in _NOISE:
        plan = RoundPlan(
            population=spec.clients, per_round=spec.per_round, rounds=rounds, delta=DELTA
        )
        _NOISE[key] = calibrate_noise(epsilon, plan)
    return _NOISE[key]


def distributed_noise_for(spec: TaskSpec, epsilon: float, rounds: int, bits: int) -> float:
    """The multiplier the distributed run calibrates (server.config's call, as it makes it)."""
    model = spec.task_object().build_model(0)
    kept = sum(p.numel() for p in model.parameters())
    plan = RoundPlan(population=spec.clients, per_round=spec.per_round, rounds=rounds, delta=DELTA)
    return calibrate_multiplier(
        epsilon, plan, clip=spec.clip, bits=bits, values=kept, tolerance=DROPOUT_TOLERANCE
    )


def run_task(spec: TaskSpec, args: argparse.Namespace, rounds: int, errors: list[str]) -> list[Row]:
    rows: list[Row] = []
    runs = args.out / "runs" / "privacy"
    for seed in range(args.seeds):
        row = no_dp_row(spec, None, seed, rounds, runs / f"{spec.name}-nodp-s{seed}")
        rows.append({**row, "seed": seed})
        print(f"  {spec.name} seed {seed} no DP: {row['accuracy']:.4f}", flush=True)
    for epsilon in args.epsilons:
        for name, produce in MECHANISMS:
            if name not in args.mechanisms:
                continue
            seeds = args.dist_seeds if "distributed" in name else args.seeds
            for seed in range(seeds):
                slug = f"{spec.name}-{name.split()[1]}{name.split()[-1]}-e{epsilon:g}-s{seed}"
                try:
                    row = produce(spec, epsilon, seed, rounds, runs / slug)
                except Exception as err:  # noqa: BLE001 (a mechanism this tree cannot run)
                    kind = "refused" if isinstance(err, SettingsError) else type(err).__name__
                    errors.append(f"{name} at epsilon {epsilon:g}: {kind}: {err}"[:400])
                    print(f"  {spec.name} {name}: not run ({errors[-1]})", flush=True)
                    break
                rows.append({**row, "seed": seed})
                print(
                    f"  {spec.name} eps {epsilon:g} seed {seed} {name}: {row['accuracy']:.4f} "
                    f"(epsilon {row['reported_epsilon']})",
                    flush=True,
                )
    if FLOWER in args.mechanisms:
        jobs = [
            (epsilon, seed, noise_for(spec, epsilon, rounds))
            for epsilon in args.epsilons
            for seed in range(args.flower_seeds)
        ]
        started = time.perf_counter()
        for job, accuracy in zip(jobs, run_flower_dp(spec, jobs, rounds), strict=True):
            epsilon, seed, z = job
            rows.append(
                {
                    "mechanism": FLOWER,
                    "bits": 32,
                    "target_epsilon": epsilon,
                    "accuracy": accuracy,
                    "reported_epsilon": None,  # Flower's wrapper: no sampled accounting
                    "noise_multiplier": z,
                    "seed": seed,
                }
            )
        wall = time.perf_counter() - started
        print(f"  {spec.name} Flower DP wrapper: {len(jobs)} runs in {wall:.0f} s", flush=True)
    return rows


def summarize(rows: list[Row]) -> list[Row]:
    """Mean +- std over seeds per (mechanism, epsilon)."""
    groups: dict[tuple[str, float | None], list[Row]] = {}
    for row in rows:
        groups.setdefault((row["mechanism"], row["target_epsilon"]), []).append(row)
    table = []
    for (mechanism, epsilon), group in groups.items():
        accuracies = [r["accuracy"] for r in group]
        reported = [r["reported_epsilon"] for r in group if r["reported_epsilon"] is not None]
        table.append(
            {
                "mechanism": mechanism,
                "target_epsilon": epsilon,
                "bits": group[0]["bits"],
                "accuracy_mean": float(np.mean(accuracies)),
                "accuracy_std": float(np.std(accuracies)),
                "accuracies": accuracies,
                "reported_epsilon": max(reported) if reported else None,
                "noise_multiplier": group[0].get("noise_multiplier"),
            }
        )
    return table


def checks(rows: list[Row], epsilons: list[float]) -> list[str]:
    """'distributed within 1.0 point of central at the same epsilon with <= 16 bits', on the
    seeds both rows ran (mean accuracy over them)."""
    lines = []
    for epsilon in epsilons:
        central = {
            r["seed"]: r["accuracy"]
            for r in rows
            if r["mechanism"] == "Pollen central DP" and r["target_epsilon"] == epsilon
        }
        for name, _ in MECHANISMS[1:]:
            found = {
                r["seed"]: r["accuracy"]
                for r in rows
                if r["mechanism"] == name and r["target_epsilon"] == epsilon and r["bits"] <= 16
            }
            seeds = sorted(set(central) & set(found))
            if not seeds:
                continue
            gap = 100 * float(np.mean([central[s] - found[s] for s in seeds]))
            verdict = "PASS" if gap <= 1.0 else "MISS"
            lines.append(
                f"eps {epsilon:g}: {name} {gap:+.2f} pt below central (seeds {seeds}): {verdict}"
            )
    return lines


def print_table(task: str, table: list[Row]) -> None:
    header = (
        f"{'task':<7} {'mechanism':<40} {'eps':>4} {'bits':>4} {'accuracy':>16} "
        f"{'eps reported':>12} {'z':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in table:
        eps = "-" if r["target_epsilon"] is None else f"{r['target_epsilon']:g}"
        reported = "-" if r["reported_epsilon"] is None else f"{r['reported_epsilon']:.3f}"
        z = "-" if r["noise_multiplier"] is None else f"{r['noise_multiplier']:.3f}"
        acc = f"{r['accuracy_mean']:.4f} +- {r['accuracy_std']:.4f}"
        name = r["mechanism"]
        print(f"{task:<7} {name:<40} {eps:>4} {r['bits']:>4} {acc:>16} {reported:>12} {z:>6}")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), dpi=100)
    for ax, task in zip(np.atleast_1d(axes), tasks, strict=True):
        table = results["tasks"][task]["table"]
        for mechanism in dict.fromkeys(r["mechanism"] for r in table):
            points = sorted(
                (r["target_epsilon"], r["accuracy_mean"], r["accuracy_std"])
                for r in table
                if r["mechanism"] == mechanism and r["target_epsilon"] is not None
            )
            if points:
                x, y, err = zip(*points, strict=True)
                ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=mechanism)
            else:
                base = next(r for r in table if r["mechanism"] == mechanism)["accuracy_mean"]
                ax.axhline(base, color="gray", ls="--", lw=1, label=mechanism)
        ax.set_xscale("log")
        ax.set_xticks(results["epsilons"], [f"{e:g}" for e in results["epsilons"]])
        ax.minorticks_off()
        setup = results["tasks"][task]["setup"].replace(" (fixed", "\n(fixed")
        ax.set_title(f"{task}: {setup}", fontsize=8)
        ax.set_xlabel(f"epsilon (delta = {DELTA:g})")
        ax.set_ylabel("final central test accuracy (mean +- std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1, same for every row")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--rounds", type=int, default=0, help="0: each task's own")
    parser.add_argument("--mechanisms", nargs="+", default=[n for n, _ in MECHANISMS] + [FLOWER])
    parser.add_argument("--flower-seeds", type=int, default=None, help="default: --seeds")
    parser.add_argument(
        "--dist-seeds", type=int, default=None, help="distributed rows' seeds (default: --seeds)"
    )
    parser.add_argument("--quick", action="store_true", help="1 seed, epsilon 8, 3 rounds")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--json", type=Path, default=None, help="default: OUT/privacy.json")
    parser.add_argument("--plot", type=Path, default=None, help="default: OUT/privacy.png")
    parser.add_argument("--report", type=Path, default=None, help="print a saved JSON's tables")
    args = parser.parse_args()
    if args.report:  # and redraw its plot where --plot names a file
        saved = json.loads(args.report.read_text())
        report(saved)
        if args.plot:
            plot(saved, args.plot)
        return
    if args.quick:
        args.seeds, args.epsilons, args.rounds = 1, [8.0], 3
    if args.flower_seeds is None:
        args.flower_seeds = args.seeds
    if args.dist_seeds is None:
        args.dist_seeds = args.seeds
    logging.getLogger("flwr").setLevel(logging.WARNING)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "delta": DELTA,
        "epsilons": args.epsilons,
        "seeds": args.seeds,
        "flower_seeds": args.flower_seeds,
        "dist_seeds": args.dist_seeds,
        "tasks": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.json or args.out / "privacy.json"
    for name in args.tasks:
        spec = TASKS[name]
        rounds = args.rounds or spec.rounds
        print(f"{name}: {spec.describe(rounds)}", flush=True)
        errors: list[str] = []
        rows = run_task(spec, args, rounds, errors)
        table = summarize(rows)
        results["tasks"][name] = {
            "setup": spec.describe(rounds),
            "rounds": rounds,
            "rows": rows,
            "table": table,
            "checks": checks(rows, args.epsilons),
            "not_run": errors,
        }
        json_path.write_text(json.dumps(results, indent=2))  # after every task
        plot(results, args.plot or args.out / "privacy.png")
    results["wall_s"] = time.perf_counter() - started
    json_path.write_text(json.dumps(results, indent=2))
    report(results)


def report(results: dict[str, Any]) -> None:
    wall = results.get("wall_s")
    took = "unfinished" if wall is None else f"wall {wall:.0f} s"
    print(f"\n{results['command']}  ({took}, delta {DELTA:g})")
    for name, task in results["tasks"].items():
        print(f"\n{name}: {task['setup']}")
        print_table(name, task["table"])
        for line in task["checks"]:
            print(f"  check {name} {line}")
        for line in task.get("not_run", []):
            print(f"  not run: {line}")


if __name__ == "__main__":
    main()
