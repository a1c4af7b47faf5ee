import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from pollen.cli import app
from strategies.privacy.accounting import RoundPlan, epsilon_by_round

NO_SUCH_GPU = torch.cuda.device_count()  # one index past the visible GPUs (cuda:0 on a CPU box)


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--clients", "0"], "--clients"),
        (["--rounds", "0"], "--rounds"),
        (["--partition", "dirichlet:0"], "--partition"),
        (["--partition", "dirichlet:-0.5"], "--partition"),
        (["--partition", "shards:0"], "--partition"),
        (["--task", "imagenet"], "--task"),
        (["--strategy", "fedsgd"], "--strategy"),
        (["--fraction", "0"], "--fraction"),
        (["--fraction", "1.2"], "--fraction"),
        (["--task", "synthetic", "--partition", "iid"], "--partition"),
        (["--lr", "-1"], "--lr"),
        (["--quant-bits", "3"], "--quant-bits"),
        (["--quant-chunk", "0"], "--quant-chunk"),
        (["--quant-rounding", "up"], "--quant-rounding"),
        (["--topk", "1.5"], "--topk"),
        (["--prune", "1.0"], "--prune"),
        (["--prune", "0.5", "--prune-initial", "0.7"], "--prune-initial"),
        (["--prune", "0.5", "--prune-schedule", "exp"], "--prune-schedule"),
        (["--prune", "0.5", "--prune-scope", "row"], "--prune-scope"),
        (["--download-bits", "4"], "--download-bits"),
        (["--engine", "flower", "--no-pool-uploads"], "--engine"),
        (["--engine", "batched", "--device", "gpu"], "--device"),
        (["--engine", "batched", "--device", "meta"], "--device"),
        (["--engine", "batched", "--device", f"cuda:{NO_SUCH_GPU}"], "--device"),
    ],
)
def test_bad_flags_exit_nonzero_with_one_line_naming_the_flag(args, flag):
    result = CliRunner().invoke(app, ["simulate", *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"pollen simulate: error: {flag}:")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["simulate", "--rounds", "x"], "'--rounds': 'x' is not a valid integer"),
        (["simulate", "--dp-bits", "1e99"], "'--dp-bits'"),
        (["simulate", "--bogus", "1"], "No such option '--bogus'"),
        (["server", "start", "--port"], "'--port' requires an argument"),
    ],
)
def test_values_click_cannot_parse_are_one_line_too(args, says):
    """The command itself (not CliRunner): click's usage errors come out as one line, exit 2."""
    done = subprocess.run(
        [sys.executable, "-m", "pollen", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pollen") and says in lines[0]
    assert ": error: " in lines[0]


def test_simulate_end_to_end_through_the_console_script(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pollen",
            "simulate",
            "--clients",
            "4",
            "--rounds",
            "2",
            "--partition",
            "iid",
            "--out",
            str(out),
            "--run-config",
            'quant-bits=4 lr-schedule="cosine"',
            # central DP on Poisson cohorts of q = 1/4: with seed 2 round 1 draws nobody
            *("--fraction", "0.25", "--seed", "2", "--dp-mode", "central"),
            *("--dp-sampling", "poisson", "--dp-noise-multiplier", "0.5", "--dp-seeded-noise"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "final accuracy:" in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["clients"] == 4 and summary["partition"] == "iid"
    assert summary["settings"]["quant_bits"] == 4  # --run-config, parsed as flwr run does
    assert summary["settings"]["lr_schedule"] == "cosine"
    assert (out / "accuracy.png").exists()
    # the empty round released its noise and was spent: every round in the ledger, no abort
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["sampled_clients"] for r in rows[1:]] == [0, 1]
    plan = RoundPlan(population=4, per_round=1, rounds=2, delta=4**-1.1, sampling="poisson")
    first, total = epsilon_by_round(0.5, plan)
    assert summary["dp_epsilon_per_round"] == pytest.approx([first, total - first])
    assert summary["dp_epsilon"] == pytest.approx(total)


def test_report_writes_both_plots(tmp_path):
    rows = [
        {"round": 0, "accuracy": 0.1},
        {"round": 1, "accuracy": 0.6, "upload_bytes_total": 5000},
        {"round": 2, "accuracy": 0.8, "upload_bytes_total": 4000},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name in ("accuracy.png", "accuracy_vs_upload.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_report_on_a_directory_without_metrics_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "metrics.jsonl not found" in result.output


def _float_flags() -> list[str]:
    """Every float flag of ``pollen simulate``, read from its generated signature, so a new
    float setting is fuzzed with NaN/inf below without being listed by hand."""
    import inspect

    from pollen.cli import simulate

    return sorted(
        (p.default.param_decls or ("--" + name.replace("_", "-"),))[0]
        for name, p in inspect.signature(simulate).parameters.items()
        if isinstance(getattr(p.default, "default", None), float)
    )


FLOAT_FLAGS = _float_flags()


def test_the_float_flags_include_every_kind_of_setting():
    # run, strategy, compression, secure-agg, simulated-client, engine and limit settings
    for flag in ("--fraction", "--server-lr", "--prune", "--secagg-clip", "--attack-scale",
                 "--client-cpus", "--availability", "--max-update-value"):  # fmt: skip
        assert flag in FLOAT_FLAGS


def _one_line_error(args, flag):
    result = CliRunner().invoke(app, ["simulate", *args])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith(f"pollen simulate: error: {flag}:"), lines
    return lines[0]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
@pytest.mark.parametrize("flag", FLOAT_FLAGS)
def test_non_finite_float_flags_are_refused_naming_the_flag(flag, value):
    line = _one_line_error([flag, value], flag)
    assert "finite" in line or "must be in" in line


@pytest.mark.parametrize(
    ("args", "flag", "says"),
    [
        (["--attack-scale", "1e38"], "--attack-scale", "must be in [-1e+06, 1e+06]"),
        (["--attack-scale", "-1e7"], "--attack-scale", "must be in"),
        (["--seed", "-1"], "--seed", "must be in [0, 2147483647]"),
        (["--seed", str(2**64)], "--seed", "must be in [0, 2147483647]"),
        (["--batch-size", str(2**31)], "--batch-size", "at most"),
        (["--partition", "dirichlet:inf"], "--partition", "finite"),
        (["--partition", "dirichlet:nan"], "--partition", "finite"),
        (["--task", "synthetic:nan,1", "--partition", "natural"], "--task", "[0, 1000]"),
        (["--clients", "300", "--partition", "dirichlet:0.05"], "--partition", "300 clients"),
        (["--clients", "5000", "--partition", "iid"], "--partition", "5000 clients"),
        (["--out", "/proc/pollen-run"], "--out", "cannot write run files"),
        (["--resume"], "--resume", "name the run directory"),
        # sizes that would run for ever or allocate without bound
        (["--rounds", str(10**23)], "--rounds", "must be in [1, 1000000]"),
        (["--local-epochs", str(10**11)], "--local-epochs", "must be in [0, 10000]"),
        (["--dp-population", str(10**20)], "--dp-population", "must be in [0, 1000000000]"),
        (["--task", "tutorial-cnn:99999999999999"], "--task", "1 to 100000 samples"),
        # robust aggregators whose rounds are too small for the assumed attackers
        (
            ["--strategy", "bulyan", "--num-malicious", "1", "--clients", "4"],
            "--num-malicious",
            "needs 7 updates a round, a round trains 4 of 4",
        ),
        (
            ["--strategy", "krum", "--num-malicious", str(10**12), "--clients", "8"],
            "--num-malicious",
            "needs 2000000000003 updates",
        ),
        (["--strategy", "bulyan", "--clients", "2"], "--num-malicious", "0 malicious needs 3"),
    ],
)
def test_hostile_values_are_one_line_flag_errors(args, flag, says):
    assert says in _one_line_error(args, flag)


def test_an_out_dir_below_a_file_or_on_a_file_is_a_flag_error(tmp_path):
    (tmp_path / "file").write_text("x")
    line = _one_line_error(["--out", str(tmp_path / "file" / "run")], "--out")
    assert "Not a directory" in line
    assert "is a file, not a folder" in _one_line_error(["--out", str(tmp_path / "file")], "--out")


@pytest.mark.parametrize(
    ("run_config", "says"),
    [
        ("lr=abc", "invalid format"),
        ("lr=1e400", "lr: must be a finite number"),
        ("lr=[1,2]", "needs to be of type"),
        ("no-such-key=1", "no-such-key: not a run-config key"),
        ("a.b=1", "a.b: not a run-config key"),
        ("num-partitions=3", "set by pollen simulate"),
        ('engine="flower"', "engine: not a run-config key"),
        ("nothing here", "no key=value pair"),
        ("missing.toml", "cannot read missing.toml"),
    ],
)
def test_bad_run_config_values_are_one_line_errors(run_config, says):
    assert says in _one_line_error(["--run-config", run_config], "--run-config")


def test_a_run_config_key_and_its_own_flag_cannot_both_be_given():
    line = _one_line_error(["--rounds", "2", "--run-config", "num-server-rounds=3"], "--run-config")
    assert "also given as --rounds" in line
    line = _one_line_error(["--run-config", "quant-bits=3"], "--run-config quant-bits")
    assert "got 3" in line


DDP = ("--secure-agg", "--dp-mode", "distributed")


@pytest.mark.parametrize(
    ("args", "flag", "says"),
    [
        (
            ["--dp-mode", "central", "--dp-target-epsilon", "0.1", "--dp-target-delta", "1e-300"],
            "--dp-target-epsilon",
            "cannot be met",
        ),
        (  # 1 of 2 clients per round: the clipped count's noise would take the whole budget
            ["--dp-mode", "central", "--dp-noise-multiplier", "3", "--dp-adaptive-clip"],
            "--dp-adaptive-clip",
            "sample more clients",
        ),
        (
            ["--dp-mode", "local", "--dp-noise-multiplier", "1", "--engine", "batched"],
            "--dp-mode",
            "--engine flower",
        ),
        (
            ["--dp-mode", "distributed", "--dp-noise-multiplier", "1"],
            "--secure-agg",
            "under secure aggregation",
        ),
        (
            [*DDP, "--dp-noise-multiplier", "1", "--rotate", "shared"],
            "--rotate",
            "rotates by itself",
        ),
        ([*DDP, "--dp-noise-multiplier", "1", "--dp-bits", "40"], "--dp-bits", "[8, 32]"),
        (
            [*DDP, "--dp-target-epsilon", "0.001", "--dp-target-delta", "1e-9"],
            "--dp-target-epsilon",
            "cannot be met",
        ),
    ],
)
def test_a_privacy_plan_that_cannot_run_is_one_line_before_the_run(tmp_path, args, flag, says):
    line = _one_line_error(["--clients", "2", "--rounds", "1", "--out", str(tmp_path), *args], flag)
    assert says in line
    assert not (tmp_path / "metrics.jsonl").exists()
