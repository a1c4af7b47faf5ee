"""Secure aggregation on a real deployment: a TLS SuperLink with SuperNode authentication and
four registered SuperNodes run two SecAgg+ rounds with distributed DP (each node adds its discrete
Gaussian share before masking; the epsilon is reported); an insecure SuperNode is refused."""

import os
import subprocess
from pathlib import Path

import pytest

from server import read_metrics
from tests.e2e.flower_deployment import BIN, flower_binary, free_port
from tests.e2e.operator_cli import kill_groups, pollen, start_client, wait_for_run

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def test_two_secure_rounds_over_tls_with_authenticated_nodes(tmp_path):
    assert pollen("certs", "--out", "certs", "--nodes", "4", cwd=tmp_path).returncode == 0
    port = free_port()
    out = tmp_path / "run"
    (tmp_path / "server.toml").write_text(
        f"""[superlink]
port = {port}
certs = "certs"
node-keys = ["certs/node-0.pub", "certs/node-1.pub", "certs/node-2.pub", "certs/node-3.pub"]

[run]
num-server-rounds = 2
min-available-nodes = 4
partition = "iid"
secure-agg = true
secagg-threshold = 2
dp-mode = "distributed"
dp-target-epsilon = 8.0
round-timeout = 240.0
out-dir = "{out}"
"""
    )
    nodes = []
    try:
        started = pollen(
            "server", "start", "--config", "server.toml", "--state-dir", "state",
            "--app", str(ROOT), cwd=tmp_path,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        insecure = subprocess.Popen(
            [
                flower_binary("flower-supernode"),
                "--insecure",
                "--superlink",
                f"127.0.0.1:{port}",
                "--port",
                str(free_port()),
                "--max-retries",
                "2",
            ],  # fmt: skip
            env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        nodes.append(insecure)
        for i in range(4):
            nodes.append(start_client(tmp_path, port, key=i, partition=i, partitions=4))
        assert insecure.wait(timeout=180) != 0  # no plaintext node joins a TLS SuperLink
        status = wait_for_run(tmp_path, timeout_s=600)
        assert status["run_status"] == "finished:completed", status
    finally:
        pollen("server", "stop", "--state-dir", "state", cwd=tmp_path)
        kill_groups(nodes)
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    for row in rows[1:]:
        assert row["accepted_updates"] == 4 and row["rejected_updates"] == 0
        assert "secagg_failure" not in row
        # dp-bits 16 per coordinate of the rotated update (9610 padded to 10240) plus the count
        assert row["upload_bytes_per_client"] == (10240 + 1) * 2
        assert row["dp_survivors"] == 4 and 0 <= row["accuracy"] <= 1
    # calibrated for 2 rounds of 4 of 4 clients at delta 4^-1.1 (no sampling amplification)
    assert 7.9 < rows[2]["dp_epsilon"] <= 8.0 and rows[2]["dp_delta"] == 4**-1.1
