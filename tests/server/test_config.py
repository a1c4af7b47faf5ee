import tomllib
from pathlib import Path

import pytest

from server import RunConfigError, RunSettings
from simulations.settings import SimulationRunSettings

ROOT = Path(__file__).resolve().parents[2]


def test_app_run_config_in_pyproject_is_valid_and_complete():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    settings = SimulationRunSettings.from_run_config(config)  # the repository's simulated App
    assert settings.task == "digits" and settings.strategy == "fedavg"
    assert set(config) == {f.replace("_", "-") for f in SimulationRunSettings.__dataclass_fields__}


def test_compression_settings_follow_the_run_config():
    settings = RunSettings.from_run_config(
        {
            "prune": 0.9,
            "num-server-rounds": 20,
            "quant-bits": 4,
            "error-feedback": True,
            "freeze": "0.,1.",
        }
    )
    comp = settings.compression()
    assert comp.pruning.final_sparsity == 0.9 and comp.pruning.end_round == 10  # half the rounds
    assert comp.codec.quant_bits == 4 and comp.error_feedback and comp.frozen == ("0.", "1.")
    assert RunSettings().compression().pruning is None


def test_ints_are_accepted_for_floats():
    assert RunSettings.from_run_config({"fraction-train": 1}).fraction_train == 1.0


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"num-server-rounds": 0}, "num-server-rounds"),
        ({"fraction-train": 0.0}, "fraction-train"),
        ({"fraction-train": 1.5}, "fraction-train"),
        ({"strategy": "fedsgd"}, "strategy"),
        ({"task": "mnist"}, "task"),
        ({"lr": -1.0}, "lr"),
        ({"seed": "zero"}, "seed"),
        ({"num-rounds": 3}, "num-rounds"),
        ({"fraction-evaluate": True}, "fraction-evaluate"),
        ({"quant-bits": 5}, "quant-bits"),
        ({"topk": -0.1}, "topk"),
        ({"prune": 0.95, "prune-initial": 0.99}, "prune-initial"),
        ({"error-feedback": 1}, "error-feedback"),
    ],
)
def test_bad_run_config_names_the_key(config, key):
    with pytest.raises(RunConfigError, match=f"run config {key}:"):
        RunSettings.from_run_config(config)


FLOAT_KEYS = sorted(
    name.replace("_", "-")
    for name, spec in RunSettings.__dataclass_fields__.items()
    if isinstance(spec.default, float)
)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_non_finite_floats_are_refused_for_every_float_key(key, value):
    """`flwr run --run-config` (TOML: nan, inf) reaches the same check as the CLI flags."""
    assert len(FLOAT_KEYS) >= 15
    with pytest.raises(RunConfigError, match=f"run config {key}: .*finite"):
        RunSettings.from_run_config({key: value})


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"attack_scale": 1e38}, "attack-scale"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"batch_size": 2**40}, "batch-size"),
        ({"seed": True}, "seed"),  # bool is an int in Python, not here
        ({"lr": True}, "lr"),
        ({"lr": "0.1"}, "lr"),
        ({"secure_agg": 1}, "secure-agg"),
        ({"task": 5}, "task"),
    ],
)
def test_direct_settings_are_type_and_range_checked(values, key):
    with pytest.raises(RunConfigError, match=f"run config {key}:"):
        SimulationRunSettings(**values)  # the server's checks, and the simulated clients'


def test_toml_nan_in_a_run_config_file_is_refused():
    config = tomllib.loads("server-lr = nan\nclip-norm = inf\n")
    with pytest.raises(RunConfigError, match="run config server-lr: must be a finite number"):
        RunSettings.from_run_config(config)
