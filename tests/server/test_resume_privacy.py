"""A resumed DP run keeps counting the privacy it spent (the ledger travels in the checkpoint)."""

import json

import numpy as np
import pytest

from server import read_metrics
from server.checkpoint import CHECKPOINT_FILE, ResumeError
from simulations.runner import SimulationSettings, simulate
from simulations.settings import SimulationRunSettings

DP = {
    "dp_mode": "central",
    "dp_noise_multiplier": 1.0,
    "dp_adaptive_clip": True,
    "fraction_train": 1.0,
}


def _run(out, rounds, resume=False):
    run = SimulationRunSettings(
        num_server_rounds=rounds, partition="iid", seed=3, resume=resume, **DP
    )
    simulate(SimulationSettings(run=run, clients=12, out_dir=out, engine="batched"))
    return read_metrics(out / "metrics.jsonl")


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A 3-round central-DP run, and the same run stopped after round 2 (its checkpoint)."""
    root = tmp_path_factory.mktemp("dp-resume")
    whole = _run(root / "whole", 3)
    _run(root / "stopped", 2)
    return whole, root / "stopped"


def _rewrite_privacy(out, change):
    """Rewrite the checkpoint's privacy ledger with ``change(ledger)``."""
    path = out / CHECKPOINT_FILE
    with np.load(path) as saved:
        entries = {k: saved[k] for k in saved.files}
    meta = json.loads(entries["meta"].tobytes())
    meta["privacy"] = change(meta["privacy"])
    entries["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(path, **entries)


def test_a_resumed_run_reports_the_epsilon_and_clip_of_the_uninterrupted_one(stopped, tmp_path):
    whole, out = stopped
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for name in (CHECKPOINT_FILE, "metrics.jsonl"):
        (resumed / name).write_bytes((out / name).read_bytes())
    rows = _run(resumed, 3, resume=True)
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert rows[-1]["dp_epsilon"] == pytest.approx(whole[-1]["dp_epsilon"], rel=1e-9)
    assert rows[-1]["dp_epsilon"] > rows[2]["dp_epsilon"] > 0
    with np.load(out / CHECKPOINT_FILE) as saved:
        clip = json.loads(saved["meta"].tobytes())["privacy"]["clip"]
    assert rows[-1]["dp_clip"] == clip != 1.0  # round 3 clips where round 2's update left it


@pytest.mark.parametrize(
    "change, why",
    [
        (lambda p: {}, "holds no privacy ledger"),
        (lambda p: {**p, "curve": p["curve"][:-1]}, "orders"),
        (lambda p: {**p, "curve": ["x"] * len(p["curve"])}, "curve is not a list"),
        (lambda p: {**p, "history": [5.0, 1.0]}, "non-decreasing"),
        (lambda p: {**p, "history": [1.0, 2.0, 3.0]}, "non-decreasing"),
        (lambda p: {**p, "clip": -1.0}, "dp clip"),
        (lambda p: [1, 2], "meta privacy must be a JSON object"),
    ],
    ids=["missing", "short curve", "strings", "decreasing", "too long", "bad clip", "a list"],
)
def test_a_tampered_ledger_is_refused_in_one_line(stopped, tmp_path, change, why):
    _, out = stopped
    target = tmp_path / "tampered"
    target.mkdir()
    (target / CHECKPOINT_FILE).write_bytes((out / CHECKPOINT_FILE).read_bytes())
    _rewrite_privacy(target, change)
    with pytest.raises(ResumeError, match=why) as err:
        _run(target, 3, resume=True)
    assert "\n" not in str(err.value) and CHECKPOINT_FILE in str(err.value)


def _target_run(out, rounds, resume=False):
    run = SimulationRunSettings(
        num_server_rounds=rounds,
        partition="iid",
        seed=3,
        resume=resume,
        dp_mode="central",
        dp_target_epsilon=4.0,
        fraction_train=0.5,
    )
    simulate(SimulationSettings(run=run, clients=12, out_dir=out, engine="batched"))
    return read_metrics(out / "metrics.jsonl")


def test_resuming_with_more_rounds_keeps_the_target_epsilon(tmp_path):
    """2 rounds calibrated for a 2-round plan, then resumed as a 5-round run: the 3 rounds left
    get more noise so the total stays within dp-target-epsilon (calibrating afresh for 5
    rounds would have spent the first two at the 2-round plan's lower noise and overshot)."""
    first = _target_run(tmp_path, 2)
    assert first[-1]["dp_epsilon"] == pytest.approx(4.0, rel=2e-3)
    rows = _target_run(tmp_path, 5, resume=True)
    assert [r["round"] for r in rows] == [0, 1, 2, 3, 4, 5]
    spent = [r["dp_epsilon"] for r in rows[1:]]
    assert spent[:2] == [r["dp_epsilon"] for r in first[1:]]  # the ledger carried over
    assert spent[1] < spent[2] < spent[3] < spent[4] <= 4.0 * (1 + 1e-6)
    assert spent[4] > 4.0 * 0.99  # not over-noised either: the target is what is spent


def test_a_target_already_spent_is_refused_at_resume_in_one_line(tmp_path):
    _target_run(tmp_path, 2)
    _rewrite_privacy(tmp_path, lambda p: {**p, "curve": [50.0 * v for v in p["curve"]]})
    with pytest.raises(ResumeError, match="dp-target-epsilon") as err:
        _target_run(tmp_path, 4, resume=True)
    assert "\n" not in str(err.value)
