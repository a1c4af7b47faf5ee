"""A SuperNode on another host reaches `pollen server start`'s SuperLink (issue 17, C1).

The "other host" is a network namespace of its own: `tests/e2e/netns.py` makes two namespaces
joined by a veth pair with private addresses that exist only inside them. The SuperLink runs in
one, started by `pollen server start` with ``[superlink] host`` = its veth address (TLS, node
authentication, a database); the SuperNode runs in the other with `pollen client start
--superlink <that address>`, where loopback does not lead to the SuperLink. A two-round run must
finish ``completed`` (``flwr run`` exits 0 even when a run fails, so the status is read back), and
the SuperLink's own log must show the device's address. Skipped, with the reason, where network
namespaces cannot be made.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.netns import VethLink, namespace_exists, veth_namespaces
from tests.e2e.operator_cli import POLLEN, pollen

ROOT = Path(__file__).resolve().parents[2]
PORT = 9093  # the namespaces have ports of their own: no clash with anything on this machine
pytestmark = pytest.mark.e2e


def _in(
    prefix: list[str], *args: str, cwd: Path, timeout: float = 180
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*prefix, *POLLEN, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def _status(link: VethLink, cwd: Path) -> dict:
    done = _in(link.in_server, "server", "status", "--state-dir", "state", "--json", cwd=cwd)
    return json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr}


def test_a_supernode_in_another_namespace_reaches_the_superlink_on_its_lan_address(tmp_path):
    with veth_namespaces() as link:
        made = pollen(
            "certs", "--out", "certs", "--host", link.server_ip, "--nodes", "1", cwd=tmp_path
        )
        assert made.returncode == 0, made.stderr
        (tmp_path / "server.toml").write_text(
            f"""[superlink]
host = "{link.server_ip}"
port = {PORT}
certs = "certs"
database = "state.db"
node-keys = ["certs/node-0.pub"]

[run]
num-server-rounds = 2
min-available-nodes = 1
partition = "iid"
out-dir = "{tmp_path / "run"}"
"""
        )
        node = None
        try:
            started = _in(
                link.in_server, "server", "start", "--config", "server.toml",
                "--state-dir", "state", "--app", str(ROOT), cwd=tmp_path,
            )  # fmt: skip
            assert started.returncode == 0, started.stderr[-3000:]
            assert f"SuperLink {link.server_ip}:{PORT}" in started.stdout
            # on the device, loopback is not the SuperLink: only the veth address leads there
            probe = subprocess.run(
                [*link.in_device, sys.executable, "-c",
                 f"import socket; socket.create_connection(('127.0.0.1', {PORT}), timeout=5)"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert probe.returncode != 0 and "ConnectionRefusedError" in probe.stderr
            node = subprocess.Popen(
                [*link.in_device, *POLLEN, "client", "start",
                 "--superlink", f"{link.server_ip}:{PORT}",
                 "--root-certificates", "certs/ca.crt", "--auth-key", "certs/node-0.key",
                 "--partition-id", "0", "--num-partitions", "1"],
                cwd=tmp_path, stdout=(tmp_path / "supernode.log").open("wb"),
                stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "FLWR_HOME": str(tmp_path / "device-flwr-home")},
            )  # fmt: skip
            deadline, status = time.monotonic() + 300, {}
            while time.monotonic() < deadline:
                status = _status(link, tmp_path)
                if str(status.get("run_status", "")).startswith("finished"):
                    break
                assert node.poll() is None, (tmp_path / "supernode.log").read_text()[-3000:]
                time.sleep(3)
            assert status.get("run_status") == "finished:completed", (
                status, (tmp_path / "supernode.log").read_text(errors="replace")[-3000:],
            )  # fmt: skip
            assert status["address"] == f"{link.server_ip}:{PORT}"
            assert status["last_round"]["round"] == 2
            assert status["last_round"]["accepted_updates"] == 1
            superlink_log = (tmp_path / "state" / "superlink.log").read_text(errors="replace")
            assert f"{link.device_ip}:" in superlink_log  # the requests came from the device
        finally:
            stopped = _in(link.in_server, "server", "stop", "--state-dir", "state", cwd=tmp_path)
            if node is not None:  # a TERMed SuperNode signs off; the namespace goes anyway
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    try:
                        os.killpg(node.pid, sig)
                        node.wait(timeout=30)
                        break
                    except ProcessLookupError:
                        break
                    except subprocess.TimeoutExpired:
                        continue
        assert stopped.stdout.strip() == "stopped", stopped
    assert not namespace_exists(link.server_ns) and not namespace_exists(link.device_ns)
