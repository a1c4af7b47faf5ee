"""`pollen simulate --secure-agg` in both engines: dropouts recovered, failures clean."""

import json
from dataclasses import replace

import numpy as np
import pytest

from server import MODEL_FILE, read_metrics
from simulations.attacks import drops_out
from simulations.runner import SimulationSettings, simulate
from simulations.settings import SimulationRunSettings
from strategies.privacy.accounting import RoundPlan
from strategies.privacy.distributed import calibrate_multiplier, planned_epsilon

CLIENTS = 8


def _run(engine, out, sim=None, **run):
    settings = SimulationSettings(
        run=SimulationRunSettings(
            **{"num_server_rounds": 2, **run},
            min_available_nodes=CLIENTS,
            partition="iid",
            secure_agg=True,
        ),
        clients=CLIENTS,
        out_dir=out,
        engine=engine,
        **(sim or {}),
    )
    simulate(settings)
    with np.load(out / MODEL_FILE) as saved:
        model = {k: saved[k] for k in saved.files}
    return model, read_metrics(out / "metrics.jsonl")


def _dropped(server_round: int, rate: float, seed: int = 0) -> int:
    return sum(drops_out(seed, server_round, pid, rate) for pid in range(CLIENTS))


@pytest.mark.parametrize("engine", ["batched", "flower"])
def test_secure_rounds_recover_from_dropouts_in_both_engines(engine, tmp_path):
    model, rows = _run(engine, tmp_path / engine, dropout_rate=0.3, secagg_degree=7)
    for row in rows[1:]:
        gone = _dropped(row["round"], 0.3)
        assert 0 < gone <= 3  # the seeded draw drops someone, fewer than the threshold allows
        assert row["accepted_updates"] == CLIENTS - gone
        assert row["failed_clients"] == gone
        assert "secagg_failure" not in row
        # m = bits of 8 * 256 * 255 = 19 bits per kept coordinate, + 1 weight value
        assert row["upload_bytes_per_client"] == -(-(9610 + 1) * 19 // 8)
    assert rows[-1]["accuracy"] > rows[0]["accuracy"] + 0.3
    plain, _ = _run("batched", tmp_path / "again", dropout_rate=0.3, secagg_degree=7)
    assert all(np.array_equal(plain[k], model[k]) for k in model)  # exact: integer sums


def test_too_few_survivors_fail_the_round_cleanly_and_the_run_goes_on(tmp_path):
    _, rows = _run("batched", tmp_path / "few", dropout_rate=0.6, secagg_threshold=7)
    assert len(rows) == 3
    for row in rows[1:]:
        assert "below the threshold" in row["secagg_failure"]
        assert row["accepted_updates"] == 0
        assert row["accuracy"] == rows[0]["accuracy"]  # no model update


def test_robust_strategies_are_refused_with_secure_aggregation():
    from server import RunConfigError

    with pytest.raises(RunConfigError, match="strategy: krum needs each client.s update"):
        SimulationRunSettings(strategy="krum", secure_agg=True)


def test_pruned_secure_updates_send_only_kept_coordinates(tmp_path):
    model, rows = _run(
        "batched", tmp_path / "pruned", prune=0.5, prune_schedule="constant", prune_scope="layer"
    )
    weights = [k for k in model if k.endswith("weight")]
    kept = sum(int(np.count_nonzero(model[k])) for k in weights) + sum(
        model[k].size for k in model if k not in weights
    )
    for row in rows[1:]:
        assert row["sparsity"] == pytest.approx(0.5, abs=0.01)
        assert row["upload_bytes_per_client"] == -(-(kept + 1) * 19 // 8)
    assert rows[-1]["accuracy"] > rows[0]["accuracy"] + 0.3


def test_masked_uploads_share_no_per_client_metrics_unless_the_run_opts_in(tmp_path):
    """B6: by default the server learns the sum and nothing per client (no train-loss)."""
    _, rows = _run("batched", tmp_path / "private")
    assert all("train_loss" not in row for row in rows[1:])
    _, rows = _run("batched", tmp_path / "shared", secagg_share_metrics=True)
    assert all(np.isfinite(row["train_loss"]) for row in rows[1:])


def test_device_heterogeneity_finds_partitions_without_them_in_masked_uploads(tmp_path):
    """The virtual clock's tiers and availability need each client's partition: with masked
    uploads carrying none, the nodes' QUERY answers give it."""
    sim = {"device_tiers": "default", "availability": 0.7}
    _, rows = _run("batched", tmp_path / "tiers", sim, secagg_degree=7)
    for row in rows[1:]:
        assert "secagg_failure" not in row
        assert row["accepted_updates"] == CLIENTS - row["offline_clients"] > 0
        assert row["simulated_round_s"] > 0


def test_distributed_dp_runs_under_secure_aggregation_and_reports_its_epsilon(tmp_path):
    """dp-mode distributed through the SDK's client round (Flower engine), 2 rounds: each
    client's discrete Gaussian share is summed under SecAgg+, and the epsilon spent is the
    calibrated one, per round in metrics.jsonl and in total in summary.json."""
    out = tmp_path / "ddp"
    model, rows = _run("flower", out, dp_mode="distributed", dp_target_epsilon=8.0)
    assert all(np.isfinite(v).all() for v in model.values())
    for row in rows[1:]:
        assert "secagg_failure" not in row and row["accepted_updates"] == CLIENTS
        assert (row["dp_survivors"], row["dp_bits"], row["dp_clip"]) == (CLIENTS, 16, 1.0)
        assert row["upload_bytes_per_client"] == (10240 + 1) * 2  # rotated 9610 + count, 16 bits
    assert 7.9 < rows[-1]["dp_epsilon"] <= 8.0
    assert rows[1]["dp_epsilon_round"] + rows[2]["dp_epsilon_round"] == rows[-1]["dp_epsilon"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dp_epsilon"] == rows[-1]["dp_epsilon"]
    assert summary["dp_delta"] == pytest.approx(CLIENTS**-1.1)


def test_distributed_dp_sums_no_fewer_uploads_than_its_noise_was_sized_for(tmp_path):
    """dp-dropout-tolerance 0.25 of 8 alive clients: each share is sized for 6 uploads. With
    seed 0's dropouts (2, 2, 3 of 8 after sharing keys), rounds 1-2 sum 6 uploads and round 3's
    5 are not unmasked (though above the SecAgg+ threshold): no round spends more than the
    plan's worst case, so the run's epsilon stays within its target."""
    out = tmp_path / "ddp-drops"
    dropped = [_dropped(r, 0.3) for r in (1, 2, 3)]
    assert dropped == [2, 2, 3]
    _, rows = _run(
        "batched",
        out,
        num_server_rounds=3,
        dropout_rate=0.3,
        secagg_degree=7,
        secagg_threshold=4,
        dp_mode="distributed",
        dp_target_epsilon=8.0,
        dp_dropout_tolerance=0.25,
    )
    for row, gone in zip(rows[1:], dropped, strict=True):
        if gone <= 2:
            assert "secagg_failure" not in row
            assert row["dp_survivors"] == row["accepted_updates"] == CLIENTS - gone
        else:
            assert "fewer than the 6 the distributed DP noise" in row["secagg_failure"]
            assert row["accepted_updates"] == 0 and "dp_survivors" not in row
    # rounds 1-2 spent exactly the plan's worst case (6 shares), which calibration sized for
    plan = RoundPlan(population=CLIENTS, per_round=CLIENTS, rounds=3, delta=CLIENTS**-1.1)
    sized = dict(clip=1.0, bits=16, values=9610, tolerance=0.25)  # the digits MLP's values
    z = calibrate_multiplier(8.0, plan, **sized)
    for done in (1, 2):
        expected = planned_epsilon(z, replace(plan, rounds=done), **sized)
        assert rows[done]["dp_epsilon"] == pytest.approx(expected, rel=1e-9)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dp_epsilon"] == rows[2]["dp_epsilon"] < planned_epsilon(z, plan, **sized) <= 8
