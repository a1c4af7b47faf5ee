"""Real deployment: flower-superlink + 3 flower-supernode processes + `flwr run` on 127.0.0.1."""

import time
from pathlib import Path

import numpy as np
import pytest

from client_sdk import model_arrays
from client_sdk.tasks import get_task
from server import MODEL_FILE, read_metrics
from tests.e2e.flower_deployment import LocalDeployment

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


@pytest.fixture
def deployment(tmp_path):
    deployment = LocalDeployment(tmp_path, num_nodes=3)
    try:
        deployment.start()
        yield deployment
    finally:
        deployment.stop()
        for proc in deployment.processes:
            assert proc.poll() is not None, f"process {proc.args[0]} survived stop()"


def test_two_rounds_on_a_real_superlink_with_three_supernodes(deployment, tmp_path):
    out = tmp_path / "run-out"
    started = time.monotonic()
    run_id = deployment.submit(
        ROOT,
        f"num-server-rounds=2 min-available-nodes=3 fraction-evaluate=1.0 seed=3 "
        f'prune=0.5 prune-schedule="constant" quant-bits=4 error-feedback=true out-dir="{out}"',
    )
    status = deployment.wait_finished(run_id, timeout_s=420)
    elapsed = time.monotonic() - started
    log = deployment.run_log(run_id)
    assert status == "finished:completed", f"{status}\n{log[-3000:]}\n{deployment.log('superlink')}"
    print(f"e2e run {run_id}: {status} in {elapsed:.1f}s")

    rows = read_metrics(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    model_bytes = sum(a.nbytes for a in model_arrays(get_task("digits").build_model(0)).values())
    for row in rows[1:]:
        assert row["accepted_updates"] == 3 and row["rejected_updates"] == 0
        assert row["sparsity"] > 0.49 and row["download_bytes_total"] > 0
        # half the weights pruned, 4 bits each: well under a tenth of float32
        assert 0 < row["upload_bytes_per_client"] < model_bytes / 10
        assert 0 <= row["federated_accuracy"] <= 1  # client-side metrics came back
    # error feedback: the second round's clients carried the first round's residual
    assert rows[1]["train_residual-carried"] == 0 and rows[2]["train_residual-carried"] > 0
    assert rows[-1]["accuracy"] > rows[0]["accuracy"]

    final = np.load(out / MODEL_FILE)
    initial = model_arrays(get_task("digits").build_model(seed=3))
    assert set(final.files) == set(initial)
    assert any(not np.array_equal(final[k], initial[k]) for k in initial)  # the model changed
    assert np.mean(final["0.weight"] == 0) >= 0.5  # the shared mask is in the final model
