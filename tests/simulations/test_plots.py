"""`pollen report`: one run's plots, and several runs overlaid."""

import json

from typer.testing import CliRunner

from pollen.cli import app
from simulations.plots import primary_metric, write_report


def _run_dir(path, metric, scale):
    path.mkdir()
    rows = [
        {"round": r, metric: scale * (r + 1), "loss": 1.0 / (r + 1), "upload_bytes_total": 1000 * r}
        for r in range(4)
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "summary.json").write_text(json.dumps({"primary_metric": metric}))
    return path


def test_one_run_gets_its_metric_and_loss_plots(tmp_path):
    run = _run_dir(tmp_path / "a", "mse", 0.1)
    written = write_report([run])
    assert [p.name for p in written] == ["accuracy.png", "accuracy_vs_upload.png"]
    assert all(p.stat().st_size > 1000 for p in written)
    assert primary_metric(run, [{"mse": 1.0}]) == "mse"


def test_several_runs_are_overlaid_from_the_cli(tmp_path):
    runs = [_run_dir(tmp_path / name, "accuracy", s) for name, s in (("a", 0.1), ("b", 0.2))]
    result = CliRunner().invoke(app, ["report", *map(str, runs), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report.png").stat().st_size > 1000


def test_a_missing_run_is_one_line_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "metrics.jsonl not found" in result.output
