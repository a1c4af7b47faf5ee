"""Fidelity: the batched engine reproduces Flower's engine (Ray, the SDK loop) within 1e-4."""

import numpy as np
import pytest

from server import MODEL_FILE, read_metrics
from simulations.runner import SimulationSettings, simulate
from simulations.settings import SimulationRunSettings

CASES = {
    # image task: the batched engine's packed conv/pool kernels (the CPU default)
    "tutorial-cnn-packed-kernels": {"task": "tutorial-cnn:12", "partition": "natural"},
    # uncompressed updates take the vectorized encoder; unequal Dirichlet partitions
    "fedavg-half-sampled": {"partition": "dirichlet:0.5", "fraction_train": 0.5},
    # compressed updates with error feedback take the SDK encoder per client
    "pruned-qat-8bit-ef-fedadam": {
        "partition": "iid",
        "strategy": "fedadam",
        "prune": 0.5,
        "prune_schedule": "constant",
        "qat": True,
        "quant_bits": 8,
        "quant_rounding": "nearest",
        "error_feedback": True,
    },
}


def _final(engine, out, run, **engine_settings):
    settings = SimulationSettings(
        run=SimulationRunSettings(num_server_rounds=3, min_available_nodes=8, **run),
        clients=8,
        out_dir=out,
        engine=engine,
        **engine_settings,
    )
    summary = simulate(settings)
    with np.load(out / MODEL_FILE) as saved:
        return {k: saved[k] for k in saved.files}, summary, read_metrics(out / "metrics.jsonl")


@pytest.mark.parametrize("case", CASES)
def test_batched_engine_matches_flowers_engine_after_three_rounds(case, tmp_path):
    run = CASES[case]
    reference, _, ref_rows = _final("flower", tmp_path / "flower", run)
    batched, summary, rows = _final("batched", tmp_path / "batched", run)
    worst = max(float(np.abs(reference[k] - batched[k]).max()) for k in reference)
    assert worst <= 1e-4, worst
    assert summary["engine"] == "batched" and summary["looped_client_updates"] == 0
    if run.get("task", "").startswith("tutorial-cnn"):
        assert summary["layout"] == "packed"
    sampled = sum(r["sampled_clients"] for r in rows[1:])
    assert (
        summary["vectorized_client_updates"]
        == sampled
        == sum(r["sampled_clients"] for r in ref_rows[1:])
    )
    assert summary["peak_memory_bytes"] > 0
    # float32 updates under FedAvg travel pooled (one mean per chunk); compressed ones never do
    pooled = 0 if run.get("quant_bits") else sampled
    assert summary["sdk_encoded_client_updates"] == 0  # quantized ones on the device codec
    assert summary["pooled_client_updates"] == pooled == sum(r["pooled_updates"] for r in rows[1:])
    assert [r["upload_bytes_total"] for r in rows[1:]] == [
        r["upload_bytes_total"] for r in ref_rows[1:]
    ]


def test_pooled_uploads_give_the_model_per_client_uploads_give(tmp_path):
    run = CASES["fedavg-half-sampled"]
    pooled, summary, rows = _final("batched", tmp_path / "pooled", run)
    single, single_summary, single_rows = _final(
        "batched", tmp_path / "single", run, pool_uploads=False
    )
    assert summary["pooled_client_updates"] > 0 == single_summary["pooled_client_updates"]
    assert max(float(np.abs(pooled[k] - single[k]).max()) for k in pooled) <= 1e-6
    for row, single_row in zip(rows[1:], single_rows[1:], strict=True):
        assert row["pooled_updates"] == row["accepted_updates"] == single_row["accepted_updates"]
        assert single_row["pooled_updates"] == 0
        assert row["upload_bytes_total"] == single_row["upload_bytes_total"]
        # the models differ by float rounding of the sums, so later rounds' losses do too
        assert row["train_loss"] == pytest.approx(single_row["train_loss"], rel=1e-6)
