"""metrics.jsonl is read back on resume and by `pollen server status`: a line cut by a crash
mid-append, or any line that is not a round's metrics, is skipped with a warning, never a
traceback, and every valid row is kept."""

import json

from typer.testing import CliRunner

from pollen.cli import app
from server import read_metrics

ARGS = [
    *("--clients", "4", "--partition", "iid", "--seed", "3"),
    *("--engine", "batched", "--device", "cpu"),
]
HOSTILE_LINES = [
    b'{"round": 3, "accuracy": 0.9',  # cut mid-append
    b"garbage",
    b"[1, 2]",
    b'{"round": "three"}',
    b'{"round": true}',
    b'{"no_round": 1}',
    b"\xff\xfe\x00binary",
    b"NaN",
]


def test_hostile_lines_are_skipped_and_valid_rows_kept(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    good = [{"round": r, "accuracy": 0.5 + r / 10} for r in range(3)]
    lines = [json.dumps(row).encode() for row in good]
    path.write_bytes(
        b"\n".join([lines[0], *HOSTILE_LINES[1:], lines[1], lines[2], HOSTILE_LINES[0]])
    )
    assert read_metrics(path) == good
    assert f"{path}: skipped {len(HOSTILE_LINES)} line(s)" in caplog.text


def test_a_resume_after_a_cut_metrics_line_continues_and_keeps_every_round(tmp_path):
    """A real run of 2 rounds, its metrics.jsonl then ending in hostile lines (as a crash
    mid-append would leave it): `--resume --rounds 3` runs round 3 and the log holds rounds
    0-3 once each, the hostile lines gone."""
    first = CliRunner().invoke(app, ["simulate", *ARGS, "--rounds", "2", "--out", str(tmp_path)])
    assert first.exit_code == 0, first.output
    path = tmp_path / "metrics.jsonl"
    before = path.read_bytes()
    path.write_bytes(before + b"\n".join(HOSTILE_LINES))
    resumed = CliRunner().invoke(
        app, ["simulate", *ARGS, "--rounds", "3", "--resume", "--out", str(tmp_path)]
    )
    assert resumed.exit_code == 0, resumed.output
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [row["round"] for row in rows] == [0, 1, 2, 3]
    assert rows[:3] == [json.loads(line) for line in before.decode().splitlines()]


def test_a_resume_without_a_checkpoint_starts_afresh_and_keeps_the_old_log(tmp_path):
    """The checkpoint is gone (deleted, another disk): `--resume` starts at round 1 and the
    previous run's metrics.jsonl is kept beside the new one, not overwritten."""
    old = b'{"round": 0, "accuracy": 0.1}\n{"round": 1, "accuracy": 0.2}\n'
    (tmp_path / "metrics.jsonl").write_bytes(old)
    result = CliRunner().invoke(
        app, ["simulate", *ARGS, "--rounds", "1", "--resume", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "metrics.previous.jsonl").read_bytes() == old
    assert [row["round"] for row in read_metrics(tmp_path / "metrics.jsonl")] == [0, 1]
    assert read_metrics(tmp_path / "metrics.jsonl")[1]["accuracy"] != 0.2
