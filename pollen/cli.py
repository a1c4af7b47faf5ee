"""The ``pollen`` command: ``simulate`` (a Task with N virtual clients), ``new``, ``certs``,
``report``, and ``server``/``client`` for a real deployment (:mod:`pollen.deploy_commands`).

The ``simulate`` flags are generated from the settings schema (:mod:`pollen.settings`).
"""

from __future__ import annotations

import inspect
import logging
import sys
import time
from pathlib import Path
from typing import Any

import click
import typer
from rich.console import Console

from pollen import new_project
from pollen.deploy_commands import client_app, server_app
from pollen.progress import human_bytes, round_progress, summary_table
from pollen.settings import DERIVED, flag_for, simulate_settings, simulation_settings
from server.schema import Setting, SettingError, typed

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Pollen: federated learning on Flower with compact client updates.",
)


app.add_typer(server_app, name="server")
app.add_typer(client_app, name="client")
app.command("new")(new_project.new)


@app.callback()
def _root() -> None:
    """Pollen: federated learning on Flower with compact client updates."""


def _default_out_dir(task: str) -> Path:
    """runs/<task>-<time>, the task named by its file or built-in name."""
    short = Path(task.rpartition(":")[0]).stem if ".py:" in task or "/" in task else task
    return Path("runs") / f"{short.replace(':', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"


def _simulate(ctx: typer.Context, **values: Any) -> None:
    """Run a Task with N virtual clients (Flower's engine or Pollen's batched engine)."""
    console = Console()
    out, verbose = values.pop("out"), values.pop("verbose")
    from_config: dict[str, Any] = {}
    try:
        from_config = _run_config_values(ctx, values.pop("run_config"))
        values.update(from_config)
        out_dir = out or _default_out_dir(str(values["task"]))
        if values["resume"] and out is None:
            raise SettingError("resume", "name the run directory to continue with --out")
        values["strategy"] = values["strategy"].lower()
        settings = simulation_settings(out=out_dir, verbose=verbose, **values)
    except SettingError as err:
        given = err.key.replace("-", "_") in from_config
        where = f"--run-config {err.key}" if given else flag_for(err.key)
        typer.echo(f"pollen simulate: error: {where}: {err.why}", err=True)
        raise typer.Exit(2) from None

    from simulations.runner import resolve_engine
    from simulations.runner import simulate as run_simulation

    _quiet_logs(verbose)
    run, rounds = settings.run, settings.run.num_server_rounds
    console.print(
        f"[bold]pollen simulate[/]: {run.task}, {settings.clients} clients, {run.partition}, "
        f"{run.strategy}, {rounds} rounds, seed {run.seed}, "
        f"{resolve_engine(settings.engine)} engine -> {out_dir}"
    )
    from server.checkpoint import ResumeError
    from server.federation import RunAborted
    from simulations.partitioners import PartitionError

    metric = _primary_metric(settings.run.task)
    uploaded = [0]
    with round_progress(console, metric) as progress:
        bar = progress.add_task("rounds", total=rounds, score="-", train_loss="-", upload="-")

        def on_round(row: dict[str, Any]) -> None:
            score = row.get(metric)
            fields = {"score": "-" if score is None else f"{score:.4f}"}
            if row["round"] > 0:
                uploaded[0] += row.get("upload_bytes_total", 0)
                fields["upload"] = human_bytes(uploaded[0])
                if isinstance(row.get("train_loss"), float):
                    fields["train_loss"] = f"{row['train_loss']:.4f}"
                progress.update(bar, completed=row["round"], **fields)
            else:
                progress.update(bar, **fields)

        try:
            summary = run_simulation(settings, on_round=on_round)
        except RunAborted as err:
            progress.stop()
            typer.echo(f"pollen simulate: run aborted: {err}", err=True)
            raise typer.Exit(1) from None
        except (ResumeError, PartitionError) as err:
            progress.stop()  # e.g. too many clients for the data: found when it is split
            flag = "--resume" if isinstance(err, ResumeError) else "--partition"
            typer.echo(f"pollen simulate: error: {flag}: {err}", err=True)
            raise typer.Exit(2) from None
    console.print(summary_table(summary))
    final = summary[f"final_{metric}"]  # None when a resumed run had no round left to log
    console.print(f"final {metric}: {'-' if final is None else f'{final:.4f}'}")
    export = summary.get("export", {})
    if export:
        console.print(
            f"model on disk: float32 {human_bytes(export['float32_model_bytes'])}, int8 "
            f"{human_bytes(export['int8_model_bytes'])} ({metric} "
            f"{export[f'int8_{metric}']:.4f})"
        )
    console.print(
        f"wrote {out_dir}/summary.json, metrics.jsonl, accuracy.png, final_model.npz, "
        "final_model_int8.npz"
    )


DERIVED_KEYS = tuple(name.replace("_", "-") for name in DERIVED)


def _run_config_values(ctx: typer.Context, run_config: str | None) -> dict[str, Any]:
    """``--run-config 'k=v k2=v2'`` or a .toml file (as ``flwr run --run-config`` parses them) as
    keyword values; a key also given by its own flag, or one simulate sets itself, is refused."""
    if not run_config:
        return {}
    from flwr.common.config import parse_config_args

    try:
        parsed = parse_config_args([run_config])
    except OSError as err:  # a .toml file, as flwr run takes too
        raise SettingError("run-config", f"cannot read {run_config}: {err.strerror}") from None
    except (ValueError, click.ClickException) as err:
        why = err.format_message() if isinstance(err, click.ClickException) else str(err)
        raise SettingError("run-config", why) from None
    if not parsed:
        raise SettingError("run-config", f"no key=value pair in {run_config!r}")
    entries = {e.key: e for e in simulate_settings() if e.run_config}
    values = {}
    for key, value in parsed.items():
        if key in DERIVED_KEYS:
            raise SettingError("run-config", f"{key}: set by pollen simulate (--clients, --out)")
        if key not in entries:
            raise SettingError("run-config", f"{key}: not a run-config key pollen simulate takes")
        entry = entries[key]
        if ctx.get_parameter_source(entry.name) is click.core.ParameterSource.COMMANDLINE:
            raise SettingError("run-config", f"{key}: also given as {entry.flag}")
        try:
            values[entry.name] = typed(entry, value)
        except SettingError as err:
            raise SettingError("run-config", f"{key}: {err.why}") from None
    return values


def _option(entry: Setting) -> inspect.Parameter:
    """A typer option for one declared setting (its flag, CLI default and help)."""
    decls = () if entry.flag == "--" + entry.name.replace("_", "-") else (entry.flag,)
    kind = entry.kind if entry.cli_default is not None else entry.kind | None
    return inspect.Parameter(
        entry.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(entry.cli_default, *decls, help=entry.help),
        annotation=kind,
    )


def _simulate_signature() -> inspect.Signature:
    """``pollen simulate``'s options: one per declared setting, then the command's own."""
    own = {
        "out": (
            Path | None,
            typer.Option(None, help="Output directory (default: runs/<task>-<time>)."),
        ),
        "verbose": (bool, typer.Option(False, help="Show Flower's and Ray's own logs.")),
        "run_config": (
            str | None,
            typer.Option(None, help="Run-config values as for flwr run: 'key=value key2=value2'."),
        ),
    }
    params = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    ]
    params += [_option(e) for e in simulate_settings()]
    params += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=kind)
        for name, (kind, opt) in own.items()
    ]
    return inspect.Signature(params)


def simulate(ctx: typer.Context, **values: Any) -> None:
    """Run a Task with N virtual clients (Flower's engine or Pollen's batched engine)."""
    _simulate(ctx, **values)


simulate.__signature__ = _simulate_signature()  # type: ignore[attr-defined]
app.command()(simulate)


@app.command()
def certs(
    out: Path = typer.Option(Path("certs"), help="Directory for ca.crt, server.pem, keys."),
    host: list[str] = typer.Option(
        None,
        help="Host name or IP the SuperLink is reached at (repeat; default: localhost, "
        "127.0.0.1, ::1).",
    ),
    days: int = typer.Option(365, help="Validity in days."),
    nodes: int = typer.Option(0, help="Also make this many SuperNode auth key pairs."),
    force: bool = typer.Option(False, help="Replace existing certificates in --out."),
) -> None:
    """Create a CA and a SuperLink certificate (TLS), and SuperNode auth keys."""
    from server.certs import DEFAULT_HOSTS, CertificateError, create_certificates

    try:
        paths = create_certificates(
            out, hosts=host or DEFAULT_HOSTS, days=days, nodes=nodes, overwrite=force
        )
    except CertificateError as err:
        typer.echo(f"pollen certs: error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"CA certificate:      {paths.ca_cert}  (give to every SuperNode and flwr CLI)")
    typer.echo(f"SuperLink cert/key:  {paths.server_cert}, {paths.server_key}")
    for private_path, public_path in paths.node_keys:
        typer.echo(f"SuperNode auth key:  {private_path} (register {public_path})")


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories with metrics.jsonl."),
    out: Path = typer.Option(Path("."), help="Where an overlay of several runs is written."),
) -> None:
    """Plot runs: one directory gets its metric and loss per round and its metric against
    cumulative upload; several are overlaid in OUT/report.png."""
    from simulations.plots import write_report

    try:
        written = write_report(run_dirs, out)
    except (FileNotFoundError, ValueError) as err:
        typer.echo(f"pollen report: error: {err}", err=True)
        raise typer.Exit(2) from None
    for path in written:
        typer.echo(f"wrote {path}")


def _primary_metric(task: str) -> str:
    from client_sdk.tasks import get_task

    return get_task(task).primary_metric


def _quiet_logs(verbose: bool) -> None:
    """Flower logs every round at INFO; the progress display replaces that unless --verbose."""
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)


def main() -> None:
    """The ``pollen`` command. A value click cannot parse or an unknown option is one line
    naming it and exit 2, like Pollen's own refusals (click would print a usage box)."""
    try:
        code = app(standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError:  # the help is printed already
        code = 2
    except click.UsageError as err:
        names, ctx = [], err.ctx
        while ctx is not None and ctx.parent is not None:  # the root's name: "pollen" always
            names.insert(0, ctx.info_name or "")
            ctx = ctx.parent
        typer.echo(f"{' '.join(['pollen', *names])}: error: {err.format_message()}", err=True)
        code = 2
    except click.exceptions.Abort:
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
