"""Load: one real SuperLink and N real SuperNodes on 127.0.0.1, Pollen vs plain Flower FedAvg.

The same N ``flower-supernode`` processes run two apps one after the other: plain Flower FedAvg
(``plain_fedavg_app/``, float32 ``ArrayRecord`` updates) and Pollen's ServerApp/ClientApp
(``digits`` task, IID partition, FedAvg, wire-format updates, checkpoint and metrics each
round), both 5 local epochs of the digits MLP per node per round, every node every round. It
prints per-round wall time of both, their ratio (Pollen's overhead), whether every node's
update was aggregated in every round (nothing lost), and the memory the N nodes hold.

    .venv/bin/python benchmarks/load.py --nodes 32 --rounds 5

Round 1 of each app includes starting one ClientApp process per node (``flwr-clientapp``), so
the steady-state figure is the median of rounds 2..R.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from server import read_metrics  # noqa: E402
from tests.e2e.flower_deployment import LocalDeployment  # noqa: E402


def resident_bytes(pgids: set[int]) -> int:
    """Total RSS of every process in the given process groups (Linux ``/proc``)."""
    total = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) in pgids:  # field 5 of stat: pgrp
                total += int((entry / "statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
    return total


class PeakMemory:
    """Sample :func:`resident_bytes` of the deployment every second; keep the peak."""

    def __init__(self, deployment: LocalDeployment) -> None:
        self.deployment, self.peak = deployment, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(1.0):
            pgids = {p.pid for p in self.deployment.processes}
            self.peak = max(self.peak, resident_bytes(pgids))

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_app(deployment: LocalDeployment, app: Path, config: str, timeout_s: float) -> float:
    started = time.perf_counter()
    run_id = deployment.submit(app, config)
    status = deployment.wait_finished(run_id, timeout_s=timeout_s)
    if status != "finished:completed":
        raise RuntimeError(f"{app.name} run {run_id}: {status}\n{deployment.run_log(run_id)}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    # a TERM (timeout, kill) unwinds through ``finally`` so the SuperNodes are stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    with tempfile.TemporaryDirectory(prefix="pollen-load-") as tmp:
        work = Path(tmp)
        deployment = LocalDeployment(work, num_nodes=args.nodes)
        peak = PeakMemory(deployment)
        try:
            t0 = time.perf_counter()
            deployment.start()
            print(f"SuperLink + {args.nodes} SuperNodes up in {time.perf_counter() - t0:.1f} s")
            idle_rss = resident_bytes({p.pid for p in deployment.processes})
            timings, out = work / "plain.json", work / "pollen-out"
            with peak:
                plain_wall = run_app(
                    deployment,
                    HERE / "plain_fedavg_app",
                    f"num-server-rounds={args.rounds} min-nodes={args.nodes} "
                    f'timings-file="{timings}"',
                    args.timeout,
                )
                pollen_wall = run_app(
                    deployment,
                    ROOT,
                    f"num-server-rounds={args.rounds} min-available-nodes={args.nodes} "
                    f'fraction-train=1.0 partition="iid" seed=0 out-dir="{out}"',
                    args.timeout,
                )
        finally:
            deployment.stop()
        plain = json.loads(timings.read_text())
        busy_rss = peak.peak
        rows = [r for r in read_metrics(out / "metrics.jsonl") if r["round"] > 0]

    pollen_walls = [r["round_wall_s"] for r in rows]
    accepted = [r["accepted_updates"] for r in rows]
    lost = [args.nodes - a + r["rejected_updates"] for a, r in zip(accepted, rows, strict=True)]
    plain_s = statistics.median(plain["round_wall_s"][1:] or plain["round_wall_s"])
    pollen_s = statistics.median(pollen_walls[1:] or pollen_walls)
    figures = {
        "nodes": args.nodes,
        "rounds": args.rounds,
        "plain_round_s": plain["round_wall_s"],
        "pollen_round_s": pollen_walls,
        "plain_median_later_round_s": plain_s,
        "pollen_median_later_round_s": pollen_s,
        "pollen_over_plain": pollen_s / plain_s,
        "plain_run_s": plain_wall,
        "pollen_run_s": pollen_wall,
        "plain_final_accuracy": plain["final_accuracy"],
        "pollen_final_accuracy": rows[-1]["accuracy"],
        "accepted_updates_per_round": accepted,
        "upload_bytes_per_client": rows[-1]["upload_bytes_per_client"],
        "nodes_rss_idle_bytes": idle_rss,
        "nodes_rss_busy_bytes": busy_rss,
    }
    print(f"{'':14}{'round 1 s':>10}{'later median s':>16}{'whole run s':>13}{'accuracy':>10}")
    for name, walls, median, whole, acc in (
        ("plain Flower", plain["round_wall_s"], plain_s, plain_wall, plain["final_accuracy"]),
        ("Pollen", pollen_walls, pollen_s, pollen_wall, rows[-1]["accuracy"]),
    ):
        print(f"{name:14}{walls[0]:>10.2f}{median:>16.2f}{whole:>13.1f}{acc:>10.4f}")
    print(f"Pollen per-round time / plain Flower: {pollen_s / plain_s:.2f}x")
    print(f"updates aggregated per round: {accepted} of {args.nodes}; lost: {sum(lost)}")
    print(
        f"resident memory of SuperLink + nodes: {idle_rss / 2**30:.2f} GiB idle, "
        f"{busy_rss / 2**30:.2f} GiB peak with ClientApps running"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
