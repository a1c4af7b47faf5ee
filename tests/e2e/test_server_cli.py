"""`pollen server start/status/stop` and `pollen client start` as an operator uses them:
TLS, SuperNode authentication with registered keys, a SQLite database, a real run."""

import json
from pathlib import Path

import pytest

from tests.e2e.flower_deployment import free_port
from tests.e2e.operator_cli import kill_groups, pollen, start_client, wait_for_run

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


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
            nodes.append(start_client(tmp_path, port, key, partition=i, partitions=2))
        intruder = nodes[2]
        assert intruder.wait(timeout=120) != 0
        assert b"2004" in intruder.stdout.read()  # "Failed to activate SuperNode"
        status = wait_for_run(tmp_path, timeout_s=240)
        assert status["run_status"] == "finished:completed", status
        assert status["healthy"] and status["registered_nodes"] == 2
        assert status["last_round"]["round"] == 1 and status["last_round"]["accepted_updates"] == 2
    finally:
        stopped = pollen("server", "stop", "--state-dir", "state", cwd=tmp_path)
        kill_groups(nodes)
    assert stopped.stdout.strip() == "stopped"
    assert (
        json.loads(
            pollen("server", "status", "--state-dir", "state", "--json", cwd=tmp_path).stdout
        )["running"]
        is False
    )
    assert (tmp_path / "state.db").exists()
