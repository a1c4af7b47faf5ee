"""Kill the ServerApp with SIGKILL mid-run, resume it, and get the uninterrupted run's model."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from server import MODEL_FILE, read_metrics
from server.checkpoint import CHECKPOINT_FILE

ARGS = [
    "--clients",
    "6",
    "--rounds",
    "5",
    "--fraction",
    "0.5",
    "--partition",
    "iid",
    "--strategy",
    "fedadam",
    "--server-lr",
    "0.05",
    "--seed",
    "7",
]


def _simulate(out, *extra, **popen):
    cmd = [sys.executable, "-m", "pollen", "simulate", *ARGS, "--out", str(out), *extra]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )


def _rounds_logged(out):
    path = out / "metrics.jsonl"
    return [r["round"] for r in read_metrics(path)] if path.exists() else []


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The uninterrupted run (5 rounds, seed 7): its final model and its checkpoint."""
    out = tmp_path_factory.mktemp("resume") / "whole"
    assert _simulate(out).wait(timeout=300) == 0
    return out


def test_sigkilled_run_resumes_to_the_identical_model(whole, tmp_path):
    crashed = tmp_path / "crashed"

    victim = _simulate(crashed, start_new_session=True)
    deadline = time.monotonic() + 300
    while max(_rounds_logged(crashed), default=0) < 2:
        assert victim.poll() is None, victim.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.killpg(victim.pid, signal.SIGKILL)  # the ServerApp and everything it started
    victim.wait(timeout=30)
    assert (crashed / CHECKPOINT_FILE).exists() and not (crashed / MODEL_FILE).exists()

    resumed = _simulate(crashed, "--resume")
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    assert [r for r in _rounds_logged(crashed)] == [0, 1, 2, 3, 4, 5]
    a, b = np.load(whole / MODEL_FILE), np.load(crashed / MODEL_FILE)
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a.files)
    print(f"resume: killed after round 2, resumed to round 5; max |whole - resumed| = {worst}")
    assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)


def test_resume_refuses_other_settings(whole):
    other = subprocess.run(
        [
            sys.executable,
            "-m",
            "pollen",
            "simulate",
            *ARGS[:-1],
            "8",
            "--out",
            str(whole),
            "--resume",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert other.returncode == 2 and "pollen simulate: error: --resume:" in other.stderr
    assert "seed (7 != 8)" in other.stderr
