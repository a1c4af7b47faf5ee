"""Rotation + EDEN/DRIVE and EF-signSGD through whole runs: both engines, composed with pruning,
8-bit downloads and error feedback; every update accepted, the model learns, bytes as stated."""

import numpy as np
import pytest

from server import MODEL_FILE, read_metrics
from simulations.runner import SimulationSettings, simulate
from simulations.settings import SimulationRunSettings
from wire.bitpack import packed_size
from wire.rotation import block_for, padded_length

CLIENTS = 6


def _run(out, engine="batched", rounds=3, **run):
    settings = SimulationSettings(
        run=SimulationRunSettings(
            num_server_rounds=rounds, min_available_nodes=CLIENTS, partition="iid", **run
        ),
        clients=CLIENTS,
        out_dir=out,
        engine=engine,
    )
    summary = simulate(settings)
    with np.load(out / MODEL_FILE) as saved:
        model = {k: saved[k] for k in saved.files}
    return summary, read_metrics(out / "metrics.jsonl"), model


@pytest.mark.parametrize("engine", ["batched", "flower"])
def test_rotated_one_bit_eden_runs_on_both_engines_and_learns(engine, tmp_path):
    summary, rows, _ = _run(
        tmp_path / engine, engine, quant_scheme="eden", quant_bits=1, rotate="client"
    )
    body = 4 * 10 + packed_size(padded_length(9610, block_for(9610, 1024)), 1)  # scales + codes
    for row in rows[1:]:
        assert row["accepted_updates"] == CLIENTS and not row.get("rejected_updates")
        # the announced header travels as its digest: a 14-byte frame (wire format v3)
        assert row["upload_bytes_per_client"] == body + 14
    assert rows[-1]["accuracy"] > rows[0]["accuracy"] + 0.3
    if engine == "batched":
        assert summary["sdk_encoded_client_updates"] == 0  # the device twin encoded them all


def test_eden_composes_with_pruning_8_bit_downloads_and_error_feedback(tmp_path):
    _, rows, model = _run(
        tmp_path / "composed",
        rounds=4,
        quant_scheme="eden",
        quant_bits=2,
        eden_scale="mse",
        error_feedback=True,
        rotate="client",
        prune=0.5,
        prune_schedule="constant",
        download_bits=8,
    )
    for row in rows[1:]:
        assert row["accepted_updates"] == CLIENTS and row["sparsity"] == pytest.approx(0.5, 0.02)
    assert rows[-1]["accuracy"] > rows[0]["accuracy"] + 0.3
    weights = [k for k in model if k.endswith("weight")]
    assert all(np.mean(model[k] == 0) >= 0.49 for k in weights)  # pruned coordinates stay zero


def test_ef_signsgd_and_a_shared_rotation_run(tmp_path):
    _, rows, _ = _run(
        tmp_path / "sign",
        quant_scheme="sign",
        quant_bits=1,
        quant_chunk=1 << 24,
        error_feedback=True,
    )
    assert rows[-1]["accuracy"] > rows[0]["accuracy"] + 0.2
    _, rows, _ = _run(tmp_path / "shared", quant_scheme="eden", quant_bits=4, rotate="shared")
    assert all(row["accepted_updates"] == CLIENTS for row in rows[1:])
    assert rows[-1]["accuracy"] > rows[0]["accuracy"] + 0.3
