"""A run in which no update is ever accepted stops with the reason, instead of exiting 0."""

import dataclasses

import pytest
from torch import nn

from client_sdk import build_client_app
from client_sdk.tasks import get_task
from server import RunSettings
from server.app import build_server_app
from server.federation import ABORT_FILE, RunAborted
from simulations.batched import run_server_app
from tests.helpers.simulated import iid_data as simulated_client_data
from tests.hostile import HostileGrid


def _devices_with_another_model():
    """The devices' Task: the digits data, but a model the server does not have."""
    digits = get_task("digits")
    other = dataclasses.replace(
        digits, model_fn=lambda: nn.Sequential(nn.Linear(64, 7), nn.ReLU(), nn.Linear(7, 10))
    )
    return build_client_app(other, simulated_client_data)


@pytest.mark.parametrize("limit", [3, 1])
def test_no_accepted_update_in_max_failed_rounds_aborts_naming_the_reason(tmp_path, limit):
    settings = RunSettings(
        task="digits",
        num_server_rounds=10,
        min_available_nodes=3,
        num_partitions=3,
        local_epochs=1,
        max_failed_rounds=limit,
    )
    grid = HostileGrid(_devices_with_another_model(), 3, honest={1, 2, 3})
    with pytest.raises(RunAborted) as err:
        run_server_app(build_server_app(settings, out_dir=tmp_path), grid)
    why = str(err.value)
    assert f"{limit} rounds in a row" in why and "client-error" in why, why
    assert "shape (128, 64) != model's (7, 64)" in why  # the devices' own error, quoted
    assert (tmp_path / ABORT_FILE).read_text().strip() == why
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == limit + 1  # round 0 and each failed round are logged


def test_zero_never_aborts(tmp_path):
    settings = RunSettings(
        task="digits",
        num_server_rounds=4,
        min_available_nodes=2,
        num_partitions=2,
        local_epochs=1,
        max_failed_rounds=0,
    )
    grid = HostileGrid(_devices_with_another_model(), 2, honest={1, 2})
    run_server_app(build_server_app(settings, out_dir=tmp_path), grid)
    assert not (tmp_path / ABORT_FILE).exists()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 5
