"""TLS deployment with certificates from `pollen certs`: a federated round over TLS, and an
insecure SuperNode refused (real flower-superlink / flower-supernode processes)."""

import subprocess
import sys
from pathlib import Path

import pytest

from server import read_metrics
from tests.e2e.flower_deployment import LocalDeployment

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def test_round_over_tls_and_insecure_node_refused(tmp_path):
    made = subprocess.run(
        [sys.executable, "-m", "pollen", "certs", "--out", str(tmp_path / "certs")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    from server.certs import CertificatePaths

    certs = tmp_path / "certs"
    tls = CertificatePaths(
        certs / "ca.crt", certs / "ca.key", certs / "server.pem", certs / "server.key"
    )
    deployment = LocalDeployment(tmp_path, num_nodes=2, tls=tls)
    out = tmp_path / "run-out"
    try:
        deployment.start()
        intruder = deployment.start_node(9, security=["--insecure"])
        assert intruder.wait(timeout=120) != 0  # refused: no plaintext into a TLS SuperLink
        run_id = deployment.submit(
            ROOT, f'num-server-rounds=1 min-available-nodes=2 out-dir="{out}"'
        )
        status = deployment.wait_finished(run_id, timeout_s=300)
        assert status == "finished:completed", deployment.run_log(run_id)[-3000:]
    finally:
        deployment.stop()
    rows = read_metrics(out / "metrics.jsonl")
    assert rows[-1]["round"] == 1 and rows[-1]["accepted_updates"] == 2
