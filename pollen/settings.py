"""Simulation settings from keyword values, checked the same way for the CLI and the Python
API: each refusal is a :class:`FlagError` naming the flag (``--lr``), which the Python API turns
into one naming the keyword (``lr``)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simulations.runner import SimulationSettings


class FlagError(ValueError):
    """A command-line flag has a value Pollen cannot run with; the message names the flag."""

    def __init__(self, flag: str, why: str) -> None:
        super().__init__(f"{flag}: {why}")
        self.flag = flag


# Which flag sets each run-config key, to name the flag when RunSettings refuses a value.
_FLAG_FOR_KEY = {
    "num-server-rounds": "--rounds",
    "fraction-train": "--fraction",
    "min-available-nodes": "--clients",
}


def simulation_settings(
    *,
    clients: int,
    partition: str | None,
    out: Path,
    verbose: bool,
    engine: str = "auto",
    device: str = "auto",
    clients_per_batch: int = 0,
    pool_uploads: bool = True,
    client_cpus: float = 1.0,
    client_gpus: float = 0.0,
    device_tiers: str = "",
    availability: float = 1.0,
    deadline: float = 0.0,
    **run: Any,
) -> SimulationSettings:
    """Validate the flags into settings, or raise a :class:`FlagError` naming the bad flag."""
    from client_sdk import TaskConfigError
    from client_sdk.tasks import natural_partition
    from server import RunConfigError, RunSettings
    from server.checkpoint import ResumeError
    from simulations.heterogeneity import HeterogeneityError
    from simulations.partitioners import PartitionError
    from simulations.runner import SimulationSettings, check_partition, check_resume

    if clients < 1:
        raise FlagError("--clients", f"must be >= 1, got {clients}")
    if engine not in ("auto", "flower", "batched"):
        raise FlagError("--engine", f"must be auto, flower or batched, got {engine!r}")
    if clients_per_batch < 0:
        raise FlagError("--clients-per-batch", f"must be >= 0, got {clients_per_batch}")
    if engine == "flower" and (device != "auto" or clients_per_batch or not pool_uploads):
        raise FlagError(
            "--engine",
            "--device, --clients-per-batch and --no-pool-uploads apply to --engine batched",
        )
    if device != "auto":
        from simulations.runner import DeviceError, resolve_device

        try:
            resolve_device(device)
        except DeviceError as err:
            raise FlagError("--device", str(err)) from None
    try:
        natural = natural_partition(run["task"])
    except ValueError as err:  # an unknown task or a bad task reference
        raise FlagError("--task", str(err)) from None
    spec = partition or ("natural" if natural else "dirichlet:0.5")
    try:
        settings = RunSettings(partition=spec, min_available_nodes=clients, **run)
    except RunConfigError as err:
        raise FlagError(_FLAG_FOR_KEY.get(err.key, f"--{err.key}"), err.why) from None
    try:
        simulation = SimulationSettings(
            run=settings,
            clients=clients,
            out_dir=out.resolve(),
            ray_logs=verbose,
            engine=engine,
            device=device,
            clients_per_batch=clients_per_batch,
            pool_uploads=pool_uploads,
            cpus_per_client=client_cpus,
            gpus_per_client=client_gpus,
            device_tiers=device_tiers,
            availability=availability,
            deadline_s=deadline,
        )
    except HeterogeneityError as err:
        flag = "--availability" if "availability" in str(err) else "--deadline"
        if "tier" in str(err):
            flag = "--device-tiers"
        raise FlagError(flag, str(err)) from None
    except PartitionError as err:
        flag = next((f for f in ("client-cpus", "client-gpus") if f in str(err)), "partition")
        raise FlagError(f"--{flag}", str(err)) from None
    try:  # split the data now: too many clients for it is a flag error, not a traceback later
        check_partition(simulation)
    except (PartitionError, TaskConfigError) as err:
        raise FlagError("--partition", str(err)) from None
    check_out_dir(simulation.out_dir)
    try:  # a corrupt checkpoint is one line here, before anything is printed or started
        check_resume(simulation)
    except ResumeError as err:
        raise FlagError("--resume", str(err)) from None
    return simulation


def check_out_dir(out: Path) -> None:
    """Create ``--out`` (the run would a moment later) and prove a file can be written there,
    so an unwritable place is a flag error before anything starts, not a traceback after."""
    if out.exists() and not out.is_dir():
        raise FlagError("--out", f"{out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".pollen-write-test-"):
            pass
    except OSError as err:
        why = err.strerror or type(err).__name__
        raise FlagError("--out", f"cannot write run files in {out}: {why}") from None
