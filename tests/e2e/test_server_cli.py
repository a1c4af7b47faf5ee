"""`pollen server start/status/stop` and `pollen client start` as an operator uses them:
TLS, SuperNode authentication with registered keys, a SQLite database, a real run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.flower_deployment import free_port

ROOT = Path(__file__).resolve().parents[2]
POLLEN = [sys.executable, "-m", "pollen"]
pytestmark = pytest.mark.e2e


def pollen(*args, cwd, timeout=120):
    return subprocess.run(
        [*POLLEN, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_operator_commands_run_an_authenticated_tls_federation(tmp_path):
    assert pollen("certs", "--out", "certs", "--nodes", "3", cwd=tmp_path).returncode == 0
    port = free_port()
    (tmp_path / "server.toml").write_text(
        f"""[superlink]
port = {port}
certs = "certs"
database = "state.db"
node-keys = ["certs/node-0.pub", "certs/node-1.pub"]

[run]
num-server-rounds = 1
min-available-nodes = 2
out-dir = "{tmp_path / "run"}"
"""
    )
    start = [
        "server",
        "start",
        "--config",
        "server.toml",
        "--state-dir",
        "state",
        "--app",
        str(ROOT),
    ]
    nodes = []
    try:
        started = pollen(*start, cwd=tmp_path)
        assert started.returncode == 0, started.stderr
        assert "registered SuperNodes: 2" in started.stdout
        again = pollen(*start, cwd=tmp_path)
        assert again.returncode == 2 and "already running" in again.stderr
        for i, key in ((0, 0), (1, 1), (0, 2)):  # node-2's key was never registered
            nodes.append(
                subprocess.Popen(
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
                        str(i),
                        "--num-partitions",
                        "2",
                        "--port",
                        str(free_port()),
                    ],  # fmt: skip
                    cwd=tmp_path,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        intruder = nodes[2]
        assert intruder.wait(timeout=120) != 0
        assert b"2004" in intruder.stdout.read()  # "Failed to activate SuperNode"
        deadline, status = time.monotonic() + 240, {}
        while time.monotonic() < deadline:
            done = pollen("server", "status", "--state-dir", "state", "--json", cwd=tmp_path)
            status = json.loads(done.stdout)
            if str(status.get("run_status", "")).startswith("finished"):
                break
            time.sleep(3)
        assert status["run_status"] == "finished:completed", status
        assert status["healthy"] and status["registered_nodes"] == 2
        assert status["last_round"]["round"] == 1 and status["last_round"]["accepted_updates"] == 2
    finally:
        stopped = pollen("server", "stop", "--state-dir", "state", cwd=tmp_path)
        for node in nodes:
            try:
                os.killpg(node.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert stopped.stdout.strip() == "stopped"
    assert (
        json.loads(
            pollen("server", "status", "--state-dir", "state", "--json", cwd=tmp_path).stdout
        )["running"]
        is False
    )
    assert (tmp_path / "state.db").exists()
