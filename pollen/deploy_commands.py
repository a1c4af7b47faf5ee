"""`pollen server start|status|stop` and `pollen client start`: a real deployment in commands."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import typer

server_app = typer.Typer(help="Run Pollen's central server: a Flower SuperLink + the ServerApp.")
client_app = typer.Typer(help="Run an edge device: a Flower SuperNode with Pollen's SDK ClientApp.")
_STATE = typer.Option(Path(".pollen-server"), help="Where the server keeps its state and logs.")


def app_schema(app_dir: Path) -> type:
    """The settings class the App's ServerApp reads its run config into: a simulated App's
    (``simulations.app:serverapp``, Pollen's own) also takes the simulated clients' keys; any
    other, e.g. the deployment ServerApp ``server.app:app``, the server's only."""
    import tomllib

    from server import RunSettings
    from simulations.settings import SimulationRunSettings

    try:
        with (app_dir / "pyproject.toml").open("rb") as file:
            components = tomllib.load(file)["tool"]["flwr"]["app"]["components"]
        serverapp = components.get("serverapp")
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, AttributeError):
        return RunSettings  # start_server names a missing pyproject.toml
    return SimulationRunSettings if serverapp == "simulations.app:serverapp" else RunSettings


def _fail(command: str, err: Exception) -> None:
    typer.echo(f"pollen {command}: error: {err}", err=True)
    raise typer.Exit(2)


@server_app.command("start")
def server_start(
    config: Path = typer.Option(None, help="TOML file with \\[superlink] and \\[run] tables."),
    state_dir: Path = _STATE,
    app_dir: Path = typer.Option(Path("."), "--app", help="The Pollen Flower App to run."),
    host: str = typer.Option(None, help="Listen address (overrides the file)."),
    port: int = typer.Option(None, help="Port (overrides the file)."),
    certs: Path = typer.Option(None, help="Folder from `pollen certs` (overrides the file)."),
    insecure: bool = typer.Option(False, help="Plaintext, no node auth (testing only)."),
) -> None:
    """Start a SuperLink (TLS, node auth, --database), register node keys, submit the run."""
    from server.deploy_config import DeploymentError, load_server_config
    from server.launch import start_server

    overrides: dict[str, Any] = {"host": host, "port": port, "certs": certs}
    if insecure:
        overrides.update(insecure=True, node_auth=False)
        typer.echo("pollen server start: warning: --insecure: updates travel unencrypted", err=True)
    # TERM (a service manager, `timeout`) unwinds like Ctrl-C: start_server then stops the
    # SuperLink it launched instead of leaving it running without a server.json
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    # the app's own modules (a Task named "task:task" in its run config) resolve here as they
    # do in its ServerApp and ClientApps, where Flower puts the app's folder on sys.path
    sys.path.insert(0, str(app_dir.resolve()))
    try:
        settings = load_server_config(config, schema=app_schema(app_dir), **overrides)
        if settings.insecure and not insecure:  # the same warning when the file asks for it
            typer.echo(
                f"pollen server start: warning: insecure = true in {config}: updates travel "
                "unencrypted",
                err=True,
            )
        state = start_server(settings, state_dir=state_dir, app_dir=app_dir.resolve())
    except (DeploymentError, OSError) as err:
        _fail("server start", err)
    except KeyboardInterrupt:
        typer.echo("pollen server start: interrupted; stopped what it had started", err=True)
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    typer.echo(
        f"SuperLink {state['address']} (pid {state['pid']}), run {state['run_id']} submitted"
    )
    typer.echo(f"registered SuperNodes: {len(state['nodes'])}; state and logs in {state_dir}")


@server_app.command("status")
def server_status_cmd(
    state_dir: Path = _STATE, as_json: bool = typer.Option(False, "--json", help="Print JSON.")
) -> None:
    """Is the SuperLink up, how is the run doing, what did the last round measure."""
    import json

    from server.deploy_config import DeploymentError
    from server.launch import server_status

    try:
        status = server_status(state_dir)
    except DeploymentError as err:  # e.g. a corrupt server.json
        _fail("server status", err)
    if as_json:
        typer.echo(json.dumps(status, default=str))
        return
    for key, value in status.items():
        typer.echo(f"{key}: {value}")


@server_app.command("stop")
def server_stop(state_dir: Path = _STATE) -> None:
    """Stop the SuperLink and everything it started."""
    from server.deploy_config import DeploymentError
    from server.launch import stop_server

    try:
        stopped = stop_server(state_dir)
    except DeploymentError as err:  # e.g. a corrupt server.json: signal nothing
        _fail("server stop", err)
    typer.echo("stopped" if stopped else f"no Pollen server was running from {state_dir}")


@client_app.command("start")
def client_start(
    superlink: str = typer.Option(..., help="HOST:PORT of the SuperLink."),
    root_certificates: Path = typer.Option(None, help="ca.crt from `pollen certs` (TLS)."),
    auth_key: Path = typer.Option(None, help="This device's private key (node auth)."),
    partition_id: int = typer.Option(None, help="Simulated partition this device holds."),
    num_partitions: int = typer.Option(None, help="Number of partitions."),
    port: int = typer.Option(9094, help="Local port of this SuperNode's ClientApp I/O."),
    max_retries: int = typer.Option(3, help="Reconnection attempts (-1: unlimited)."),
    insecure: bool = typer.Option(False, help="Plaintext (testing only)."),
) -> None:
    """Run a SuperNode in the foreground (Pollen's ClientApp comes with each run)."""
    import os

    from server.deploy_config import DeploymentError
    from server.launch import check_reachable, flower_env, supernode_args

    try:
        if root_certificates is None and not insecure:
            raise DeploymentError("give --root-certificates ca.crt, or --insecure for testing")
        for path in (root_certificates, auth_key):
            if path is not None and not path.is_file():
                raise DeploymentError(f"{path} does not exist")
        check_reachable(superlink)
        args = supernode_args(
            superlink=superlink,
            root_certificates=None if insecure else root_certificates,
            auth_key=auth_key,
            partition_id=partition_id,
            num_partitions=num_partitions,
            port=port,
            max_retries=max_retries,
        )
    except DeploymentError as err:
        _fail("client start", err)
    if insecure:
        typer.echo("pollen client start: warning: --insecure: updates travel unencrypted", err=True)
    # the SuperNode replaces this process, so signals reach it directly
    os.execve(args[0], args, flower_env())
