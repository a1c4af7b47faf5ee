"""Start and stop real Flower processes on 127.0.0.1 for end-to-end tests.

A SuperLink and N SuperNodes each run in their own process group (``setsid``) and are stopped
with ``kill -TERM -- -PGID`` (then KILL), so no ``flower-superexec``/``flwr-clientapp`` child is
left behind even when a test fails. The CLI talks to the SuperLink through a private
``$FLWR_HOME/config.toml``. ``flwr run`` exits 0 even when a run fails, so the run's status is
read back with ``flwr ls --run-id`` (see shared/FLOWER_NOTES.md).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from server.certs import CertificatePaths

BIN = Path(sys.executable).parent
CONNECTION = "e2e"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def flower_binary(name: str) -> str:
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found next to {sys.executable} nor on PATH")
    return found


@dataclass
class LocalDeployment:
    """One SuperLink and ``num_nodes`` SuperNodes on loopback; TLS when ``tls`` is given."""

    workdir: Path
    num_nodes: int = 3
    tls: CertificatePaths | None = None
    processes: list[subprocess.Popen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.flwr_home = self.workdir / "flwr-home"
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        security = (
            "insecure = true\n"
            if self.tls is None
            else f'root-certificates = "{self.tls.ca_cert.resolve()}"\n'
        )
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "{self.address}"\n{security}'
        )
        self.env = {
            **os.environ,
            "FLWR_HOME": str(self.flwr_home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "POLLEN_HOME": str(self.workdir / "pollen-home"),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    # ------------------------------------------------------------------ processes
    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes.append(proc)
        return proc

    def start(self, timeout_s: float = 60.0) -> None:
        self._spawn(
            "superlink",
            [
                flower_binary("flower-superlink"),
                *self._link_security(),
                "--disable-runtime-dependency-installation",
                "--port",
                str(self.port),
            ],
        )
        self.wait_healthy(timeout_s)
        self.nodes: dict[int, subprocess.Popen] = {}
        for i in range(self.num_nodes):
            self.start_node(i)

    def _link_security(self) -> list[str]:
        if self.tls is None:
            return ["--insecure"]
        return [
            "--ssl-ca-certfile",
            str(self.tls.ca_cert),
            "--ssl-certfile",
            str(self.tls.server_cert),
            "--ssl-keyfile",
            str(self.tls.server_key),
        ]

    def node_security(self) -> list[str]:
        return (
            ["--insecure"] if self.tls is None else ["--root-certificates", str(self.tls.ca_cert)]
        )

    def start_node(self, partition_id: int, security: list[str] | None = None) -> subprocess.Popen:
        """Start (or restart) the SuperNode holding ``partition_id``."""
        proc = self._spawn(
            f"supernode-{partition_id}",
            [
                flower_binary("flower-supernode"),
                *(self.node_security() if security is None else security),
                "--superlink",
                self.address,
                "--port",
                str(free_port()),
                "--max-retries",
                "3",
                "--node-config",
                f"partition-id={partition_id} num-partitions={self.num_nodes}",
            ],
        )
        self.nodes[partition_id] = proc
        return proc

    def kill_node(self, partition_id: int) -> None:
        """SIGKILL a SuperNode and everything it started, as a crash or power loss would."""
        proc = self.nodes[partition_id]
        _signal_group(proc, signal.SIGKILL)
        proc.wait(timeout=10)

    def freeze_node(self, partition_id: int) -> None:
        """SIGSTOP a SuperNode and its ClientApp: a hung device that neither replies nor exits."""
        _signal_group(self.nodes[partition_id], signal.SIGSTOP)

    def thaw_node(self, partition_id: int) -> None:
        _signal_group(self.nodes[partition_id], signal.SIGCONT)

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        scheme = "http" if self.tls is None else "https"
        url = f"{scheme}://{self.address}/health"
        context = None
        if self.tls is not None:
            import ssl

            context = ssl.create_default_context(cafile=str(self.tls.ca_cert))
        while time.monotonic() < deadline:
            if self.processes[0].poll() is not None:
                raise RuntimeError(f"SuperLink exited early:\n{self.log('superlink')}")
            try:
                with urllib.request.urlopen(url, timeout=2, context=context) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"SuperLink not healthy at {url} after {timeout_s}s")

    def stop(self) -> None:
        """TERM every process group, then KILL what is left; never raises."""
        for proc in self.processes:
            _signal_group(proc, signal.SIGCONT)  # a frozen process cannot act on TERM
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.processes:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.processes:
            _signal_group(proc, signal.SIGKILL)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    # ------------------------------------------------------------------ flwr CLI
    def flwr(self, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            [flower_binary("flwr"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def submit(self, app_dir: Path, run_config: str) -> int:
        """``flwr run`` the app; return the run id (flwr's exit code says nothing of the run)."""
        done = self.flwr(
            "run", str(app_dir), CONNECTION, "--format", "json", "--run-config", run_config
        )
        try:
            return int(json.loads(done.stdout)["run-id"])
        except (ValueError, KeyError) as err:
            raise RuntimeError(
                f"flwr run gave no run id ({err}):\n{done.stdout}\n{done.stderr}"
            ) from None

    def status(self, run_id: int) -> str:
        done = self.flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json")
        runs = json.loads(done.stdout).get("runs", [])
        if not runs:
            return "unknown"
        status, details = runs[0]["status"], runs[0].get("status-details", "")
        return f"{status}:{details}" if status == "finished" else status

    def wait_finished(self, run_id: int, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        status = "unknown"
        while time.monotonic() < deadline:
            status = self.status(run_id)
            if status.startswith("finished"):
                return status
            time.sleep(2)
        raise TimeoutError(f"run {run_id} still {status!r} after {timeout_s}s")

    def run_log(self, run_id: int) -> str:
        return self.flwr("log", str(run_id), CONNECTION, "--show").stdout


def _signal_group(proc: subprocess.Popen, sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
