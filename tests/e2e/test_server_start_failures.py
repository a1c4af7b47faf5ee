"""A failed or interrupted `pollen server start` leaves nothing running and no `server.json`.

Real `pollen` commands and real Flower processes. Everything the start launches carries
``FLWR_HOME=<state>/flwr-home`` in its environment (the SuperLink, ``flower-superexec``, the
ServerApp), so the tests find what would be left over by that entry in ``/proc/PID/environ``
and kill it at the end whatever happened (on the code before issue 17 they would be orphans).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.certs import create_certificates
from tests.e2e.flower_deployment import free_port
from tests.e2e.operator_cli import POLLEN, pollen

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc"),
]


def launched(state: Path) -> dict[int, str]:
    """pid -> command line of every process whose environment has this state dir's FLWR_HOME."""
    marker = f"FLWR_HOME={state / 'flwr-home'}".encode()
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return {pid: cmd.decode(errors="replace")[:160] for pid, cmd in found.items()}


def left_running(state: Path, grace_s: float = 30.0) -> dict[int, str]:
    """What still runs from ``state`` after up to ``grace_s`` for stopped processes to exit."""
    deadline = time.monotonic() + grace_s
    while (alive := launched(state)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return alive


def kill_launched(state: Path) -> None:
    for pid in launched(state):
        for kill in (lambda p: os.killpg(p, signal.SIGKILL), lambda p: os.kill(p, signal.SIGKILL)):
            try:
                kill(pid)
            except (ProcessLookupError, PermissionError):
                pass


def assert_nothing_left(cwd: Path, state: Path) -> None:
    assert left_running(state) == {}, "a failed start left processes running"
    assert not (state / "server.json").exists()
    stopped = pollen("server", "stop", "--state-dir", str(state), cwd=cwd)
    assert stopped.stdout.strip() == f"no Pollen server was running from {state}", stopped


def one_line_error(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.strip().splitlines() if ": warning: " not in line]
    assert done.returncode == 2 and len(lines) == 1, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr
    return lines[0]


def write_config(tmp_path: Path, *, tls: bool, node_keys: tuple[str, ...] = ()) -> int:
    port = free_port()
    security = (
        f'certs = "certs"\nnode-keys = {json.dumps(list(node_keys))}\n'
        if tls
        else "insecure = true\nnode-auth = false\n"
    )
    (tmp_path / "server.toml").write_text(
        f"[superlink]\nport = {port}\n{security}"
        f'[run]\nnum-server-rounds = 1\nout-dir = "{tmp_path / "run"}"\n'
    )
    return port


@pytest.mark.parametrize("damage", ["garbage-ca", "ca-of-another-set", "key-of-another-set"])
def test_bad_certificates_are_one_line_and_nothing_runs_after(tmp_path, damage):
    paths = create_certificates(tmp_path / "certs", nodes=1)
    other = create_certificates(tmp_path / "other")
    culprit = {
        "garbage-ca": (paths.ca_cert, b"garbage\n", "ca.crt is not a PEM certificate"),
        "ca-of-another-set": (paths.ca_cert, other.ca_cert.read_bytes(), "is not signed by"),
        "key-of-another-set": (paths.server_key, other.server_key.read_bytes(), "not the key of"),
    }
    path, content, why = culprit[damage]
    path.write_bytes(content)
    write_config(tmp_path, tls=True, node_keys=("certs/node-0.pub",))
    state = tmp_path / "state"
    try:
        done = pollen(
            "server", "start", "--config", "server.toml", "--state-dir", str(state),
            "--app", str(ROOT), cwd=tmp_path, timeout=180,
        )  # fmt: skip
        line = one_line_error(done)
        assert why in line and path.name in line, line
        assert_nothing_left(tmp_path, state)
    finally:
        kill_launched(state)


@pytest.mark.parametrize("failure", ["node-key-refused", "app-without-flower-config"])
def test_a_failure_after_the_superlink_started_stops_it(tmp_path, failure):
    """The SuperLink is up when registering a key or submitting the run fails."""
    app_dir = ROOT
    if failure == "node-key-refused":  # a well-formed public key Flower refuses: not EC P-384
        create_certificates(tmp_path / "certs")
        (tmp_path / "certs" / "node-0.pub").write_bytes(
            Ed25519PrivateKey.generate()
            .public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        )
        write_config(tmp_path, tls=True, node_keys=("certs/node-0.pub",))
    else:
        app_dir = tmp_path / "not-an-app"
        app_dir.mkdir()
        (app_dir / "pyproject.toml").write_text('[project]\nname = "not-an-app"\n')
        write_config(tmp_path, tls=False)
    state = tmp_path / "state"
    try:
        done = pollen(
            "server", "start", "--config", "server.toml", "--state-dir", str(state),
            "--app", str(app_dir), cwd=tmp_path, timeout=180,
        )  # fmt: skip
        line = one_line_error(done)
        assert ("registering" in line) if failure == "node-key-refused" else ("flwr run" in line)
        assert (state / "superlink.log").stat().st_size > 0  # it did start a SuperLink
        assert_nothing_left(tmp_path, state)
    finally:
        kill_launched(state)


def test_a_start_terminated_after_launching_the_superlink_stops_it(tmp_path):
    """TERM (a service manager, `timeout`) while the SuperLink boots: it is stopped too."""
    write_config(tmp_path, tls=False)
    state = tmp_path / "state"
    starter = subprocess.Popen(
        [*POLLEN, "server", "start", "--config", "server.toml", "--state-dir", str(state),
         "--app", str(ROOT)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not any("flower-superlink" in cmd for cmd in launched(state).values()):
            assert starter.poll() is None, starter.communicate()
            assert time.monotonic() < deadline, "no SuperLink was started"
            time.sleep(0.05)
        starter.send_signal(signal.SIGTERM)
        _, err = starter.communicate(timeout=120)
        assert starter.returncode == 130, (starter.returncode, err[-3000:])
        assert err.strip().splitlines()[-1] == (
            "pollen server start: interrupted; stopped what it had started"
        )
        assert_nothing_left(tmp_path, state)
    finally:
        if starter.poll() is None:
            os.killpg(starter.pid, signal.SIGKILL)
        kill_launched(state)
