"""The ``pollen`` command. ``pollen simulate`` runs a Task with N virtual clients."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from pollen import new_project
from pollen.deploy_commands import client_app, server_app
from pollen.progress import human_bytes, round_progress, summary_table
from pollen.settings import FlagError, simulation_settings

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


@app.command()
def simulate(
    task: str = typer.Option(
        "digits",
        help="Built-in digits | synthetic[:ALPHA,BETA] | tutorial-cnn[:SAMPLES], or your own "
        "Task: package.module:attr or path/to/file.py:attr.",
    ),
    clients: int = typer.Option(50, help="Number of virtual clients (SuperNodes)."),
    engine: str = typer.Option(
        "auto", help="flower (Ray) | batched (K clients per vmapped kernel) | auto (batched on GPU)"
    ),
    device: str = typer.Option("auto", help="Batched engine device: auto | cpu | cuda[:N]."),
    client_cpus: float = typer.Option(1.0, help="Flower's engine: Ray CPUs per client."),
    client_gpus: float = typer.Option(0.0, help="Flower's engine: Ray GPU share per client."),
    clients_per_batch: int = typer.Option(
        0, help="Batched engine: clients per kernel (0: planned from free memory)."
    ),
    pool_uploads: bool = typer.Option(
        True,
        help="Batched engine: send each kernel's float32 updates as one weighted mean when the "
        "strategy needs only the mean (no-: one payload per client).",
    ),
    device_tiers: str = typer.Option(
        "", help="Device tiers (compute, bandwidth): default | PATH.json (default: none)."
    ),
    availability: float = typer.Option(1.0, help="Probability a client is online in a round."),
    deadline: float = typer.Option(
        0.0, help="Simulated seconds per round; later clients are dropped (0: none)."
    ),
    rounds: int = typer.Option(30, help="Federated rounds."),
    fraction: float = typer.Option(1.0, help="Fraction of clients trained each round, in (0, 1]."),
    partition: str = typer.Option(
        None, help="iid | dirichlet:ALPHA | shards:K | natural (default: dirichlet:0.5, or natural)"
    ),
    strategy: str = typer.Option(
        "fedavg",
        help="fedavg | fedprox | fedadam | fedyogi | fedadagrad | fedavgm | fedmedian | "
        "fedtrimmedavg | krum | multikrum | bulyan | qfedavg",
    ),
    seed: int = typer.Option(0, help="Seed for init, partition, sampling and local shuffling."),
    out: Path = typer.Option(None, help="Output directory (default: runs/<task>-<time>)."),
    fraction_evaluate: float = typer.Option(0.0, help="Fraction of clients for federated eval."),
    lr: float = typer.Option(0.0, help="Client learning rate (0: the Task's)."),
    local_epochs: int = typer.Option(0, help="Local epochs (0: the Task's)."),
    batch_size: int = typer.Option(0, help="Local batch size (0: the Task's)."),
    proximal_mu: float = typer.Option(0.01, help="FedProx proximal term mu."),
    server_lr: float = typer.Option(
        0.1, help="FedAdam/FedYogi/FedAdagrad eta; FedAvgM server learning rate."
    ),
    server_momentum: float = typer.Option(0.9, help="FedAvgM server momentum."),
    qffl_q: float = typer.Option(0.1, help="QFedAvg (q-FFL) fairness exponent q."),
    lr_schedule: str = typer.Option(
        "constant", help="Clients' lr by round: constant | cosine | step:EVERY:GAMMA | exp:GAMMA."
    ),
    trim_beta: float = typer.Option(0.2, help="FedTrimmedAvg: fraction cut at each end."),
    num_malicious: int = typer.Option(0, help="Krum/MultiKrum: assumed malicious clients."),
    multikrum_select: int = typer.Option(0, help="MultiKrum: updates averaged (0: one)."),
    clip_norm: float = typer.Option(0.0, help="Clip each client update to this L2 norm."),
    prune: float = typer.Option(0.0, help="Final sparsity of the shared pruning mask (0: off)."),
    prune_schedule: str = typer.Option("cubic", help="cubic (Zhu & Gupta) | linear | constant"),
    prune_scope: str = typer.Option("layer", help="layer | global magnitude pruning"),
    prune_initial: float = typer.Option(0.0, help="Sparsity at --prune-start-round."),
    prune_start_round: int = typer.Option(1, help="Round the sparsity ramp starts."),
    prune_end_round: int = typer.Option(0, help="Round the final sparsity is reached (0: half)."),
    quant_bits: int = typer.Option(0, help="Update quantization bits: 1, 2, 4, 8 (0: float32)."),
    quant_chunk: int = typer.Option(1024, help="Values per quantization range."),
    quant_rounding: str = typer.Option("stochastic", help="stochastic (unbiased) | nearest"),
    topk: float = typer.Option(0.0, help="Send only this fraction of coordinates (0: dense)."),
    quant_scheme: str = typer.Option(
        "uniform", help="uniform (min, max) | eden (EDEN/DRIVE, with --rotate) | sign (EF-signSGD)."
    ),
    eden_scale: str = typer.Option("unbiased", help="eden: unbiased | mse (biased; with EF)."),
    rotate: str = typer.Option("none", help="Randomized Hadamard rotation: none|client|shared."),
    rotate_block: int = typer.Option(1024, help="Values per Hadamard block (a power of two)."),
    error_feedback: bool = typer.Option(False, help="Carry the compression residual over."),
    qat: bool = typer.Option(False, help="Train with fake-quantized int8 weights."),
    download_bits: int = typer.Option(0, help="Global model download: 0 float32, 8 bits."),
    freeze: str = typer.Option("", help="Comma-separated parameter prefixes to keep frozen."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its checkpoint."),
    attack: str = typer.Option("", help="Simulated attack: scale | sign-flip (default: none)."),
    malicious_fraction: float = typer.Option(0.0, help="Fraction of clients that attack."),
    attack_scale: float = typer.Option(10.0, help="How much attackers scale their update."),
    secure_agg: bool = typer.Option(
        False, help="SecAgg+: the server learns only the sum of the (quantized) updates."
    ),
    secagg_degree: int = typer.Option(0, help="Neighbours (0: up to 24, 3 log2 N above)."),
    secagg_threshold: int = typer.Option(0, help="Shares to rebuild a secret (0: degree/2+1)."),
    secagg_bits: int = typer.Option(8, help="Secure-aggregation quantization bits (1-16)."),
    secagg_clip: float = typer.Option(1.0, help="Clip update coordinates to [-clip, clip]."),
    dropout_rate: float = typer.Option(
        0.0, help="Fraction of clients that vanish each round after sharing keys."
    ),
    max_update_value: float = typer.Option(
        1e6, help="Refuse a client update with a coordinate beyond this (out-of-bounds)."
    ),
    max_num_examples: int = typer.Option(
        1_000_000_000, help="Refuse a reply claiming more examples than this (bad-weight)."
    ),
    max_failed_rounds: int = typer.Option(
        3, help="Stop after this many rounds in a row with no accepted update (0: never)."
    ),
    verbose: bool = typer.Option(False, help="Show Flower's and Ray's own logs."),
) -> None:
    """Run a Task with N virtual clients (Flower's engine or Pollen's batched engine)."""
    console = Console()
    short = Path(task.rpartition(":")[0]).stem if ".py:" in task or "/" in task else task
    out_dir = out or Path("runs") / f"{short.replace(':', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        if resume and out is None:
            raise FlagError("--resume", "name the run directory to continue with --out")
        settings = simulation_settings(
            clients=clients,
            partition=partition,
            out=out_dir,
            verbose=verbose,
            engine=engine,
            device=device,
            clients_per_batch=clients_per_batch,
            pool_uploads=pool_uploads,
            client_cpus=client_cpus,
            client_gpus=client_gpus,
            device_tiers=device_tiers,
            availability=availability,
            deadline=deadline,
            task=task,
            num_server_rounds=rounds,
            strategy=strategy.lower(),
            fraction_train=fraction,
            fraction_evaluate=fraction_evaluate,
            seed=seed,
            lr=lr,
            local_epochs=local_epochs,
            batch_size=batch_size,
            proximal_mu=proximal_mu,
            server_lr=server_lr,
            server_momentum=server_momentum,
            qffl_q=qffl_q,
            lr_schedule=lr_schedule,
            trim_beta=trim_beta,
            num_malicious=num_malicious,
            multikrum_select=multikrum_select,
            clip_norm=clip_norm,
            prune=prune,
            prune_schedule=prune_schedule,
            prune_scope=prune_scope,
            prune_initial=prune_initial,
            prune_start_round=prune_start_round,
            prune_end_round=prune_end_round,
            quant_bits=quant_bits,
            quant_chunk=quant_chunk,
            quant_rounding=quant_rounding,
            topk=topk,
            quant_scheme=quant_scheme,
            eden_scale=eden_scale,
            rotate=rotate,
            rotate_block=rotate_block,
            error_feedback=error_feedback,
            qat=qat,
            download_bits=download_bits,
            freeze=freeze,
            resume=resume,
            attack=attack,
            malicious_fraction=malicious_fraction,
            attack_scale=attack_scale,
            secure_agg=secure_agg,
            secagg_degree=secagg_degree,
            secagg_threshold=secagg_threshold,
            secagg_bits=secagg_bits,
            secagg_clip=secagg_clip,
            dropout_rate=dropout_rate,
            max_update_value=max_update_value,
            max_num_examples=max_num_examples,
            max_failed_rounds=max_failed_rounds,
        )
    except FlagError as err:
        typer.echo(f"pollen simulate: error: {err}", err=True)
        raise typer.Exit(2) from None

    from simulations.runner import resolve_engine
    from simulations.runner import simulate as run_simulation

    _quiet_logs(verbose)
    spec = settings.run.partition
    console.print(
        f"[bold]pollen simulate[/]: {task}, {clients} clients, {spec}, {strategy}, "
        f"{rounds} rounds, seed {seed}, {resolve_engine(settings.engine)} engine -> {out_dir}"
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
    app()


if __name__ == "__main__":
    main()
