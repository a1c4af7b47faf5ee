"""Run the `pollen` command as an operator would, from a working directory (e2e helpers)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.flower_deployment import free_port

POLLEN = [sys.executable, "-m", "pollen"]


def pollen(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*POLLEN, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def start_client(
    cwd: Path, port: int, key: int, partition: int, partitions: int
) -> subprocess.Popen:
    """`pollen client start` with node key ``certs/node-<key>.key`` (own process group)."""
    return subprocess.Popen(
        [
            *POLLEN,
            "client",
            "start",
            "--superlink",
            f"127.0.0.1:{port}",
            "--root-certificates",
            "certs/ca.crt",
            "--auth-key",
            f"certs/node-{key}.key",
            "--partition-id",
            str(partition),
            "--num-partitions",
            str(partitions),
            "--port",
            str(free_port()),
        ],  # fmt: skip
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_for_run(cwd: Path, timeout_s: float) -> dict:
    """`pollen server status --json` once the run has finished (or the last one seen)."""
    deadline, status = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        done = pollen("server", "status", "--state-dir", "state", "--json", cwd=cwd)
        status = json.loads(done.stdout)
        if str(status.get("run_status", "")).startswith("finished"):
            break
        time.sleep(3)
    return status


def kill_groups(processes: list[subprocess.Popen]) -> None:
    """Kill each process's group and reap the process (no zombie left for the test run)."""
    for proc in processes:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for proc in processes:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
