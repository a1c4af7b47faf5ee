"""Each setting is declared once: pyproject's run config, the CLI's options and the README's
settings table are checked against the declarations (server.sections, simulations.settings).
Simulation-only settings never reach a device: not in a round config, refused by the deployment
ServerApp."""

import tomllib
from pathlib import Path

import click
import pytest
import typer

from pollen.cli import app
from pollen.settings import flag_for, keyword_for, settings_table, simulate_settings
from server import RunConfigError, RunSettings
from server.app import app as deployment_serverapp
from server.federation import client_config
from server.schema import SettingError, settings_of, typed
from simulations.settings import SimulatedClientsSection, SimulationRunSettings
from tests.messages import node_context

ROOT = Path(__file__).resolve().parents[2]
APP = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
RUN_CONFIG = APP["config"]
SIMULATION_ONLY = [e.key for e in settings_of(SimulatedClientsSection)]


def test_pyproject_run_config_is_every_declared_key_with_its_default():
    """The repository is a simulated App: its ServerApp reads the simulated clients' keys too."""
    assert APP["components"]["serverapp"] == "simulations.app:serverapp"
    declared = {e.key: e.default for e in settings_of(SimulationRunSettings) if e.run_config}
    assert list(RUN_CONFIG) == list(declared)  # same keys, same order, nothing extra
    for key, default in declared.items():
        value = RUN_CONFIG[key]
        assert value == default and type(value) is type(default), key


def _simulate_options() -> dict[str, click.Option]:
    command = typer.main.get_command(app).commands["simulate"]
    return {p.name: p for p in command.params if isinstance(p, click.Option)}


def test_every_declared_setting_is_a_simulate_option_with_its_default_and_help():
    options = _simulate_options()
    for e in simulate_settings():
        option = options.pop(e.name)
        assert option.opts[0] == e.flag and option.default == e.cli_default, e.key
        assert option.help == e.help
    assert set(options) == {"out", "verbose", "run_config"}  # the command's own, nothing else


def test_readme_settings_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    assert settings_table() in readme


def test_flags_and_keywords_name_their_setting():
    assert flag_for("num-server-rounds") == "--rounds"
    assert flag_for("fraction-train") == "--fraction"
    assert flag_for("quant-chunk") == "--quant-chunk" and flag_for("out") == "--out"
    assert keyword_for("num-server-rounds") == "rounds"
    assert keyword_for("quant-bits") == "quant_bits"


@pytest.mark.parametrize("entry", settings_of(SimulationRunSettings), ids=lambda e: e.key)
def test_every_setting_refuses_a_value_of_the_wrong_type_naming_its_key(entry):
    wrong = 1.5 if entry.kind is not float else "1.5"
    with pytest.raises(SettingError) as err:
        typed(entry, wrong)
    assert err.value.key == entry.key
    with pytest.raises(RunConfigError, match=f"run config {entry.key}:"):
        SimulationRunSettings.from_run_config({entry.key: wrong})


def test_a_deployment_round_config_holds_no_simulation_only_key():
    assert SIMULATION_ONLY == [
        "partition", "attack", "malicious-fraction", "attack-scale", "dropout-rate"
    ]  # fmt: skip
    assert not set(SIMULATION_ONLY) & {e.key for e in settings_of(RunSettings)}
    simulated = SimulationRunSettings(partition="iid", attack="scale", dropout_rate=0.5)
    for settings in (RunSettings(), simulated):
        sent = client_config(settings, num_partitions=4)
        assert not set(SIMULATION_ONLY) & set(sent), sorted(sent)


@pytest.mark.parametrize("key", SIMULATION_ONLY)
def test_the_deployment_serverapp_refuses_a_simulation_only_key_naming_it(key):
    value = RUN_CONFIG[key]
    context = node_context(0, 1)
    context.run_config.update({"num-server-rounds": 1, key: value})
    with pytest.raises(RunConfigError) as err:  # before it touches the grid
        deployment_serverapp(None, context)
    assert err.value.key == key and "\n" not in str(err.value)
    assert str(err.value).startswith(f"run config {key}: unknown key")
    assert (
        getattr(SimulationRunSettings.from_run_config({key: value}), key.replace("-", "_")) == value
    )


def test_a_section_is_a_view_of_the_flat_settings():
    from server.sections import CompressionSection

    settings = RunSettings(quant_bits=4, quant_chunk=64, topk=0.1)
    section = settings.section(CompressionSection)
    assert (section.quant_bits, section.quant_chunk, section.topk) == (4, 64, 0.1)
    with pytest.raises(SettingError, match="quant-chunk"):
        CompressionSection(quant_chunk=0)
