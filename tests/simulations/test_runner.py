"""Real simulations through Flower's Ray engine, small enough for CI."""

import json

import numpy as np
import pytest

from client_sdk import model_arrays
from client_sdk.tasks import get_task
from server import MODEL_FILE, read_metrics
from simulations.heterogeneity import HeterogeneityError
from simulations.partitioners import PartitionError
from simulations.runner import SimulationSettings, simulate
from simulations.settings import SimulationRunSettings

SUMMARY_KEYS = {
    "final_accuracy",
    "rounds",
    "clients",
    "wall_s",
    "upload_bytes_total",
    "download_bytes_total",
    "rejected_updates",
}


def _run(out, **run):
    settings = SimulationSettings(
        run=SimulationRunSettings(**{"num_server_rounds": 2, "min_available_nodes": 6, **run}),
        clients=6,
        out_dir=out,
    )
    rounds_seen = []
    summary = simulate(settings, on_round=lambda row: rounds_seen.append(row["round"]))
    return summary, rounds_seen


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    summary, rounds_seen = _run(
        out, fraction_train=0.5, fraction_evaluate=0.5, partition="dirichlet:0.5"
    )
    return out, summary, rounds_seen


def test_simulation_writes_summary_metrics_plot_and_model(digits_run):
    out, summary, rounds_seen = digits_run
    assert SUMMARY_KEYS <= set(summary) and {"export", "upload_bytes_per_client_round"} <= set(
        summary
    )
    assert json.loads((out / "summary.json").read_text()) == summary
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert rounds_seen == [0, 1, 2]
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["sampled_clients"] == 3 and r["accepted_updates"] == 3 for r in rows[1:])
    assert all("federated_accuracy" in r for r in rows[1:])
    assert summary["rounds"] == 2 and summary["clients"] == 6 and summary["rejected_updates"] == 0
    model_bytes = sum(a.nbytes for a in model_arrays(get_task("digits").build_model(0)).values())
    assert summary["download_bytes_total"] == 2 * 3 * model_bytes
    assert summary["upload_bytes_total"] > summary["download_bytes_total"]  # float32 + header
    assert summary["final_accuracy"] > rows[0]["accuracy"]


def test_same_seed_gives_a_bitwise_identical_model(digits_run, tmp_path):
    out, summary, _ = digits_run
    again, _ = _run(tmp_path, fraction_train=0.5, fraction_evaluate=0.5, partition="dirichlet:0.5")
    first, second = np.load(out / MODEL_FILE), np.load(tmp_path / MODEL_FILE)
    assert first.files == second.files
    assert all(np.array_equal(first[k], second[k]) for k in first.files)
    assert again["final_accuracy"] == summary["final_accuracy"]


def test_compressed_simulation_uploads_far_fewer_bytes(digits_run, tmp_path):
    _, dense, _ = digits_run
    summary, _ = _run(
        tmp_path,
        fraction_train=0.5,
        partition="dirichlet:0.5",
        prune=0.8,
        prune_schedule="constant",
        quant_bits=2,
        error_feedback=True,
        qat=True,
    )
    assert summary["rejected_updates"] == 0 and summary["final_sparsity"] > 0.79
    assert summary["upload_bytes_per_client_round"] * 20 < dense["upload_bytes_per_client_round"]
    final = np.load(tmp_path / MODEL_FILE)
    assert np.count_nonzero(final["0.weight"]) <= 0.2 * final["0.weight"].size + 1
    export = summary["export"]
    assert export["int8_model_bytes"] * 3 < export["float32_model_bytes"]
    assert abs(export["int8_accuracy"] - export["float32_accuracy"]) < 0.02


def test_synthetic_task_with_fedprox(tmp_path):
    summary, _ = _run(tmp_path, task="synthetic:1,1", partition="natural", strategy="fedprox")
    assert summary["rounds"] == 2 and 0 <= summary["final_accuracy"] <= 1


def test_partition_mismatch_is_refused_before_starting():
    with pytest.raises(PartitionError, match="natural"):
        SimulationSettings(
            run=SimulationRunSettings(task="synthetic", partition="iid"), clients=3, out_dir=None
        )
    with pytest.raises(PartitionError, match="clients"):
        SimulationSettings(run=SimulationRunSettings(), clients=0, out_dir=None)


@pytest.mark.parametrize("field", ["availability", "deadline"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), True, "1"])
def test_non_finite_or_mistyped_device_settings_are_refused(field, value):
    with pytest.raises(HeterogeneityError, match=field.removesuffix("_s")):
        SimulationSettings(run=SimulationRunSettings(), clients=3, out_dir=None, **{field: value})
