"""A user's own Task (its own file, its own arrays split Dirichlet) through `pollen server start`
and three `pollen client start` devices, with 4-bit updates and error feedback: the deployment
path a practitioner takes, with nothing of Pollen's built-in tasks involved."""

from pathlib import Path

import pytest

from server import read_metrics
from tests.e2e.flower_deployment import free_port
from tests.e2e.operator_cli import kill_groups, pollen, start_client, wait_for_run

pytestmark = pytest.mark.e2e


def test_own_task_through_pollen_server_and_three_devices(tmp_path: Path):
    assert pollen("new", "myapp", cwd=tmp_path).returncode == 0
    app = tmp_path / "myapp"
    assert pollen("certs", "--out", "certs", "--nodes", "3", cwd=tmp_path).returncode == 0
    port, out = free_port(), tmp_path / "run"
    (tmp_path / "server.toml").write_text(
        f"""[superlink]
port = {port}
certs = "certs"
database = "state.db"
node-keys = ["certs/node-0.pub", "certs/node-1.pub", "certs/node-2.pub"]

[run]
task = "task:task"
partition = "dirichlet:0.5"
num-server-rounds = 2
min-available-nodes = 3
quant-bits = 4
error-feedback = true
out-dir = "{out}"
"""
    )
    nodes = []
    try:
        started = pollen(
            "server", "start", "--config", "server.toml", "--state-dir", "state",
            "--app", str(app), cwd=tmp_path,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        nodes = [start_client(tmp_path, port, i, partition=i, partitions=3) for i in range(3)]
        status = wait_for_run(tmp_path, timeout_s=300)
        assert status["run_status"] == "finished:completed", status
    finally:
        pollen("server", "stop", "--state-dir", "state", cwd=tmp_path)
        kill_groups(nodes)
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    model_floats = 8 * 9 + 8 + 128 * 10 + 10  # the generated CNN
    for row in rows[1:]:
        assert row["accepted_updates"] == 3 and row["rejected_updates"] == 0
        assert row["upload_bytes_per_client"] < model_floats * 4 / 4  # 4-bit, well under float32
    assert rows[2]["train_residual-carried"] > 0  # error feedback carried round 1's residual


def test_a_bad_task_reference_in_server_toml_is_one_line(tmp_path: Path):
    (tmp_path / "server.toml").write_text('[run]\ntask = "nowhere.py:task"\n')
    done = pollen(
        "server", "start", "--config", "server.toml", "--insecure", "--app", str(tmp_path),
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2 and "nowhere.py" in done.stderr
    assert done.stderr.strip().count("\n") <= 1  # the --insecure warning, then the error
