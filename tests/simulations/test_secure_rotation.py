"""Secure aggregation on a shared rotation: clients clip and quantize the rotated update, the
server rotates the unmasked mean back (a linear map commutes with the sum)."""

import numpy as np
import pytest

from server import RunConfigError, read_metrics
from simulations.runner import SimulationSettings, simulate
from simulations.settings import SimulationRunSettings
from wire.rotation import block_for, padded_length, rotate, unrotate
from wire.secagg_vector import SecAggVectorSpec

CLIENTS = 6


def _run(out, **run):
    settings = SimulationSettings(
        run=SimulationRunSettings(
            num_server_rounds=2,
            min_available_nodes=CLIENTS,
            partition="iid",
            secure_agg=True,
            **run,
        ),
        clients=CLIENTS,
        out_dir=out,
        engine="batched",
    )
    summary = simulate(settings)
    return summary, read_metrics(out / "metrics.jsonl")


def test_secure_rounds_on_a_shared_rotation_learn_and_send_the_rotated_length(tmp_path):
    summary, rows = _run(tmp_path / "rot", rotate="shared", secagg_clip=0.5)
    padded = padded_length(9610, block_for(9610, 1024))  # digits' MLP: 9,610 parameters
    for row in rows[1:]:
        assert row["accepted_updates"] == CLIENTS and "secagg_failure" not in row
        # m = bits of 6 * 256 * 255 = 19 bits per rotated coordinate, + 1 weight value
        assert row["upload_bytes_per_client"] == -(-(padded + 1) * 19 // 8)
    assert rows[-1]["accuracy"] > rows[0]["accuracy"] + 0.3
    assert summary["sdk_encoded_client_updates"] == 2 * CLIENTS  # the SDK's numpy rotation


def test_a_per_client_rotation_is_refused_with_secure_aggregation():
    with pytest.raises(RunConfigError, match="rotate: secure-agg sums the uploads"):
        SimulationRunSettings(secure_agg=True, rotate="client")


def test_the_rotated_sum_rotates_back_to_the_sum_and_clips_less():
    """A spiky update: clipped coordinate-wise it loses its spikes; rotated, its energy spreads
    out, so clipping removes far less of it, and the dequantized sum rotated back is close to
    the plain mean (Kairouz et al. 2021 rotate before clipping for this reason)."""
    rng = np.random.default_rng(0)
    spec = SecAggVectorSpec(bits=12, clip=0.3, max_weight=1, clients=4)
    updates = [rng.normal(0, 0.02, 3000).astype(np.float32) for _ in range(4)]
    for u in updates:
        u[rng.integers(0, 3000, 10)] = 2.0  # spikes far beyond the clip
    block, seed = block_for(3000, 1024), 99
    total_plain = np.zeros(3001, np.uint64)
    total_rot = np.zeros(padded_length(3000, block) + 1, np.uint64)
    clipped_plain = clipped_rot = 0
    for k, u in enumerate(updates):
        v, c = spec.quantize(u, 1, np.random.default_rng(k))
        total_plain += v
        clipped_plain += c
        v, c = spec.quantize(rotate(u, seed, block), 1, np.random.default_rng(k))
        total_rot += v
        clipped_rot += c
    mean_plain, _ = spec.weighted_mean(total_plain)
    mean_rot, _ = spec.weighted_mean(total_rot)
    back = unrotate(mean_rot, seed, block, 3000)
    want = np.mean(updates, axis=0)
    lost_plain = sum(np.linalg.norm(u - np.clip(u, -0.3, 0.3)) for u in updates)
    lost_rot = sum(
        np.linalg.norm(r - np.clip(r, -0.3, 0.3)) for r in (rotate(u, seed, block) for u in updates)
    )
    assert clipped_plain > 0 and lost_rot < lost_plain / 10  # the clipped-off energy
    err_rot = np.linalg.norm(back - want) / np.linalg.norm(want)
    err_plain = np.linalg.norm(mean_plain - want) / np.linalg.norm(want)
    assert err_rot < 0.1 and err_plain > 0.5, (err_rot, err_plain, clipped_rot)
