"""Start, watch and stop a central Flower SuperLink running Pollen's ServerApp.

`pollen server start` checks everything it can first (certificates, node keys, the port, a
server already running from the same state folder), starts ``flower-superlink`` in its own
process group with TLS, SuperNode authentication and ``--database``, waits for ``/health``,
registers the SuperNodes' public keys, submits the ServerApp with ``flwr run`` and records all
of it in ``STATE_DIR/server.json``. That file is written as soon as the SuperLink exists; any
failure or interruption after that (TERM or Ctrl-C included) stops the SuperLink and removes
the file again, so no SuperLink outlives a failed start. ``status`` reads the SuperLink's
health, the run's status (``flwr ls``; ``flwr run`` itself exits 0 even when a run fails) and
the last metrics row; ``stop`` sends TERM to the process group and KILL to what is left (see
shared/FLOWER_NOTES.md).

The SuperLink listens on ``[superlink] host`` (``--host``): 127.0.0.1 by default, reachable from
this machine only; a LAN/public address, or 0.0.0.0 / ``::`` (every interface), lets remote
SuperNodes connect. For a wildcard host this machine's CLI talks to it on loopback
(``local_address``), so the certificate must name 127.0.0.1 (or ::1) too.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from server.certs import CertificateError, check_certificates
from server.deploy_config import DeploymentError, ServerConfig, read_server_state
from server.metrics import read_metrics
from server.processes import alive, launched_for, stop_group

CONNECTION = "pollen"
STATE_FILE = "server.json"


def flower_binary(name: str) -> str:
    """A Flower executable next to this Python (a venv's bin/) or on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise DeploymentError(f"{name} not found; install Pollen with `pip install pollen-fl`")
    return found


WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def local_address(host: str, port: int) -> str:
    """HOST:PORT at which this machine reaches a SuperLink listening on ``host``: loopback for a
    wildcard (0.0.0.0, ``::``), IPv6 literals in brackets."""
    host = WILDCARD_HOSTS.get(host.strip("[]"), host.strip("[]"))
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_port_free(host: str, port: int) -> None:
    """Refuse a host this machine cannot listen on, or a port already taken there."""
    host = host.strip("[]")
    try:
        family = (
            socket.AF_INET6
            if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
            else socket.AF_INET
        )
    except ValueError:  # a host name: what it resolves to here
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        except (OSError, UnicodeError) as err:
            raise DeploymentError(f"host {host!r} does not resolve here ({err})") from None
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # as the SuperLink's server does: a port whose last SuperLink just stopped (its
        # connections in TIME_WAIT) is free, one with a listener is not
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise DeploymentError(
                    f"port {port} on {host} is in use ({err.strerror}); another SuperLink may be "
                    "running there: stop it or choose another --port"
                ) from None
            raise DeploymentError(
                f"cannot listen on {host} port {port} ({err.strerror}): host must be an address "
                "of this machine, or 0.0.0.0 / :: for all of them"
            ) from None


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Refuse early when nothing listens at ``address`` (HOST:PORT)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise DeploymentError(f"SuperLink address must be HOST:PORT, got {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as err:
        raise DeploymentError(
            f"cannot reach the SuperLink at {address} ({err.strerror or err}); is `pollen server "
            "start` running there, and is the address and firewall right?"
        ) from None


def _flwr_home(state_dir: Path, config: ServerConfig) -> Path:
    home = state_dir / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    security = (
        "insecure = true\n"
        if config.insecure
        else f'root-certificates = "{(config.certs / "ca.crt").resolve()}"\n'
    )
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "{local_address(config.host, config.port)}"\n'
        f"{security}"
    )
    return home


def flower_env(**extra: str) -> dict[str, str]:
    """This environment with Flower's executables on PATH (the SuperLink and SuperNode start
    ``flower-superexec`` and ``flwr-clientapp`` by name)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, **extra}


def _env(state_dir: Path) -> dict[str, str]:
    return flower_env(
        FLWR_HOME=str(state_dir / "flwr-home"), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1"
    )


def _flwr(state_dir: Path, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [flower_binary("flwr"), *args],
        env=_env(state_dir),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def _superlink_args(config: ServerConfig) -> list[str]:
    args = [flower_binary("flower-superlink"), "--disable-runtime-dependency-installation"]
    if config.insecure:
        args.append("--insecure")
    else:
        certs = config.certs
        args += [
            "--ssl-ca-certfile", str(certs / "ca.crt"),
            "--ssl-certfile", str(certs / "server.pem"),
            "--ssl-keyfile", str(certs / "server.key"),
        ]  # fmt: skip
    if config.node_auth:
        args.append("--enable-supernode-auth")
    if config.database is not None:
        args += ["--database", str(config.database)]
    return [*args, "--host", config.host.strip("[]"), "--port", str(config.port)]


def health(config_address: str, ca_cert: Path | None, timeout_s: float = 2.0) -> bool:
    """Whether the SuperLink at HOST:PORT answers ``/health``; never raises."""
    scheme = "http" if ca_cert is None else "https"
    try:
        context = None if ca_cert is None else ssl.create_default_context(cafile=str(ca_cert))
        url = f"{scheme}://{config_address}/health"
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def run_config_text(run_config: dict[str, Any]) -> str:
    """``flwr run --run-config`` text: space-separated key=TOML value pairs."""
    return " ".join(f"{key}={json.dumps(value)}" for key, value in run_config.items())


def read_state(state_dir: Path) -> dict[str, Any] | None:
    return read_server_state(state_dir / STATE_FILE)  # type-checked: corrupt is a clear error


def start_server(
    config: ServerConfig, *, state_dir: Path, app_dir: Path, wait_s: float = 60.0
) -> dict[str, Any]:
    """Start the SuperLink, register node keys, submit the ServerApp; return the saved state.

    Whatever fails (or interrupts) after the SuperLink was launched stops it and removes
    ``server.json`` before the error goes on."""
    config.check()
    address = local_address(config.host, config.port)
    if config.certs is not None and not config.insecure:  # config.check(): certs given
        try:
            check_certificates(config.certs, address.rpartition(":")[0].strip("[]"))
        except CertificateError as err:
            raise DeploymentError(str(err)) from None
    state = read_state(state_dir)
    if state is not None and alive(state["pid"]):
        raise DeploymentError(
            f"a Pollen server from {state_dir} is already running (pid {state['pid']}, "
            f"{state['address']}); `pollen server stop --state-dir {state_dir}` first"
        )
    if not (app_dir / "pyproject.toml").is_file():
        raise DeploymentError(f"{app_dir} has no pyproject.toml: give --app the Pollen checkout")
    check_port_free(config.host, config.port)
    settings = config.schema.from_run_config(config.run_config)
    state_dir.mkdir(parents=True, exist_ok=True)
    _flwr_home(state_dir, config)
    log_path = state_dir / "superlink.log"
    ca = None if config.insecure or config.certs is None else config.certs / "ca.crt"
    proc: subprocess.Popen | None = None
    try:
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                _superlink_args(config),
                env=_env(state_dir),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        state = {
            "pid": proc.pid,
            "address": address,
            "ca_cert": str(ca.resolve()) if ca is not None else "",
            "nodes": {},
            "run_id": None,
            "out_dir": settings.out_dir,
        }
        _write_state(state_dir, state)  # from here on, `stop` finds the SuperLink
        deadline = time.monotonic() + wait_s
        while not health(address, ca):
            if (code := proc.poll()) is not None:
                raise DeploymentError(
                    f"the SuperLink exited (code {code}) before answering at {address}; "
                    f"see {log_path}: {_last_line(log_path)}"
                )
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"the SuperLink did not answer at {address} within {wait_s:.0f} s; "
                    f"see {log_path}: {_last_line(log_path)}"
                )
            time.sleep(0.3)
        for key in config.node_keys:
            done = _flwr(
                state_dir, "supernode", "register", str(key), CONNECTION, "--format", "json"
            )
            if done.returncode != 0:
                raise DeploymentError(
                    f"registering {key} failed: {_one_line(done.stdout or done.stderr)}"
                )
            try:
                state["nodes"][str(key)] = json.loads(done.stdout).get("node-id")
            except (ValueError, AttributeError):
                raise DeploymentError(
                    f"registering {key}: unexpected reply {_one_line(done.stdout)}"
                ) from None
        done = _flwr(
            state_dir, "run", str(app_dir), CONNECTION, "--format", "json",
            *(["--run-config", run_config_text(config.run_config)] if config.run_config else []),
        )  # fmt: skip
        try:
            state["run_id"] = int(json.loads(done.stdout)["run-id"])
        except (ValueError, KeyError, TypeError):
            raise DeploymentError(
                f"flwr run gave no run id: {_one_line(done.stdout or done.stderr)}"
            ) from None
        _write_state(state_dir, state)
    except BaseException:
        # interrupted inside Popen, the SuperLink may run with no `proc` yet
        for pid in [proc.pid] if proc is not None else launched_for(state_dir):
            stop_group(pid)
        (state_dir / STATE_FILE).unlink(missing_ok=True)
        raise
    return state


def _write_state(state_dir: Path, state: dict[str, Any]) -> None:
    """Replace ``server.json`` atomically (a reader never sees half a file)."""
    tmp = state_dir / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(state_dir / STATE_FILE)


def _one_line(text: str, limit: int = 400) -> str:
    """A tool's output as one line for an error: ``--format json``'s ``error-message`` when
    there is one, else its lines joined (colours and "For more information" links dropped)."""
    try:
        reply = json.loads(text)
        text = str(reply.get("error-message", text)) if isinstance(reply, dict) else text
    except ValueError:
        pass
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("For more information")]
    joined = " ".join(lines) or "(no output)"
    return joined if len(joined) <= limit else joined[: limit - 3] + "..."


def _last_line(path: Path) -> str:
    try:  # the last line: the log is plain text
        return _one_line(path.read_text(errors="replace")[-4000:].strip().splitlines()[-1])
    except IndexError:
        return "(empty)"
    except OSError:
        return "(no log)"


def server_status(state_dir: Path) -> dict[str, Any]:
    """Whether the SuperLink runs and answers, the run's status and its last metrics row."""
    state = read_state(state_dir)
    if state is None:
        return {"running": False, "why": f"no {STATE_FILE} in {state_dir}"}
    ca = Path(state["ca_cert"]) if state.get("ca_cert") else None
    status: dict[str, Any] = {
        "running": alive(state["pid"]),
        "address": state["address"],
        "healthy": health(state["address"], ca),
        "run_id": state.get("run_id"),
        "registered_nodes": len(state.get("nodes", {})),
    }
    if status["healthy"] and state.get("run_id") is not None:
        done = _flwr(
            state_dir, "ls", CONNECTION, "--run-id", str(state["run_id"]), "--format", "json"
        )
        runs = json.loads(done.stdout or "{}").get("runs", [])
        if runs:
            details = runs[0].get("status-details", "")
            status["run_status"] = runs[0]["status"]  # e.g. running, finished:completed
            if details and details != "N/A":
                status["run_details"] = details
    metrics = Path(state["out_dir"]) / "metrics.jsonl" if state.get("out_dir") else None
    if metrics is not None and metrics.exists() and (rows := read_metrics(metrics)):
        status["last_round"] = rows[-1]
    return status


def stop_server(state_dir: Path, timeout_s: float = 15.0) -> bool:
    """Stop the SuperLink's process group; False when none was running."""
    state = read_state(state_dir)
    if state is None:
        return False
    was_running = alive(state["pid"])
    stop_group(state["pid"], timeout_s)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return was_running


def supernode_args(
    *,
    superlink: str,
    root_certificates: Path | None,
    auth_key: Path | None,
    partition_id: int | None,
    num_partitions: int | None,
    port: int,
    max_retries: int,
) -> list[str]:
    """The ``flower-supernode`` command for an edge device running Pollen's SDK ClientApp."""
    args = [flower_binary("flower-supernode"), "--superlink", superlink, "--port", str(port)]
    args += (
        ["--insecure"]
        if root_certificates is None
        else ["--root-certificates", str(root_certificates)]
    )
    if auth_key is not None:
        args += ["--auth-supernode-private-key", str(auth_key)]
    if max_retries >= 0:
        args += ["--max-retries", str(max_retries)]
    if partition_id is not None and num_partitions is not None:
        args += ["--node-config", f"partition-id={partition_id} num-partitions={num_partitions}"]
    return args
