"""`pollen new`: the generated app runs as written, with nothing edited, everywhere a Task runs:
`pollen simulate` on both engines, `flwr run .` (Flower's local simulation), and a real
SuperLink with two SuperNodes."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from server import read_metrics
from tests.e2e.flower_deployment import BIN, LocalDeployment, flower_binary

pytestmark = pytest.mark.e2e
POLLEN = str(Path(BIN) / "pollen")


def _run(args, cwd, env=None, timeout=420):
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def project(tmp_path):
    done = _run([POLLEN, "new", "myproj"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    root = tmp_path / "myproj"
    assert {p.name for p in root.iterdir()} == {"pyproject.toml", "task.py", "README.md"}
    again = _run([POLLEN, "new", "myproj"], cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.count("\n") == 1  # one line, nothing touched
    return root


COMPRESSED = ["--quant-bits", "4", "--error-feedback"]


@pytest.mark.parametrize(
    "engine, clients, extra",
    [
        ("batched", 8, []),
        ("flower", 3, []),
        ("batched", 8, COMPRESSED),
        ("flower", 3, COMPRESSED),
        ("batched", 8, ["--secure-agg"]),
        ("flower", 4, ["--secure-agg"]),
    ],
    ids=[
        "batched",
        "flower",
        "batched-4bit-ef",
        "flower-4bit-ef",
        "batched-secagg",
        "flower-secagg",
    ],
)
def test_pollen_simulate_runs_the_generated_task(project, engine, clients, extra):
    """Its arrays split Dirichlet(0.5) (the generated default), plain, compressed and secure."""
    out = project.parent / f"out-{engine}"
    done = _run(
        [POLLEN, "simulate", "--task", "myproj/task.py:task", "--engine", engine]
        + ["--clients", str(clients), "--rounds", "2", "--out", str(out), *extra],
        cwd=project.parent,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"].endswith("myproj/task.py:task") and summary["rounds"] == 2
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2] and rows[-1]["accepted_updates"] == clients
    assert rows[-1]["accuracy"] > rows[0]["accuracy"]
    float_bytes = 4 * (8 * 9 + 8 + 128 * 10 + 10)  # the generated CNN's update in float32
    if extra == COMPRESSED:
        assert rows[-1]["upload_bytes_per_client"] < float_bytes / 4
        assert rows[-1]["train_residual-carried"] > 0
    if extra == ["--secure-agg"]:
        assert "train_loss" not in rows[-1]  # masked uploads carry no per-client loss


def _leftovers(flwr_home: Path) -> list[int]:
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"FLWR_HOME={flwr_home}".encode() in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def test_flwr_run_dot_runs_the_generated_app(project, tmp_path):
    """Flower's own `flwr run .` (its local simulation SuperLink, started on demand)."""
    home = tmp_path / "flwr-home"
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "POLLEN_HOME": str(tmp_path / "pollen-home"),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    flwr = flower_binary("flwr")
    try:
        done = _run([flwr, "run", ".", "--format", "json"], cwd=project, env=env, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        run_id = json.loads(done.stdout)["run-id"]
        status, deadline = "", time.monotonic() + 300
        while not status.startswith("finished") and time.monotonic() < deadline:
            time.sleep(3)
            listed = _run([flwr, "ls", "--run-id", str(run_id), "--format", "json"], project, env)
            if listed.returncode == 0:
                status = json.loads(listed.stdout)["runs"][0]["status"]
        assert status == "finished:completed", status
        runs = list((tmp_path / "pollen-home" / "runs").iterdir())
        rows = read_metrics(runs[0] / "metrics.jsonl")
        assert [r["round"] for r in rows] == [0, 1, 2, 3]  # num-server-rounds = 3 as generated
    finally:
        for pid in _leftovers(home):  # flwr leaves its local SuperLink running
            os.kill(pid, signal.SIGTERM)


def test_the_generated_app_on_a_real_superlink_with_two_supernodes(project, tmp_path):
    deployment = LocalDeployment(tmp_path / "deploy", num_nodes=2)
    out = tmp_path / "deploy-out"
    try:
        deployment.start()
        run_id = deployment.submit(project, f'num-server-rounds=2 out-dir="{out}"')
        status = deployment.wait_finished(run_id, timeout_s=300)
        assert status == "finished:completed", deployment.run_log(run_id)[-3000:]
    finally:
        deployment.stop()
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["accepted_updates"] == 2 for r in rows[1:])
