"""Simulation settings from keyword values, checked the same way for the CLI and the Python API.

Every value is checked by its declaration (:mod:`server.sections`, :mod:`simulations.settings`);
what is left here are the few checks across sections. Each refusal is a
:class:`~server.schema.SettingError` carrying the setting's key, which the CLI shows as its flag
(:func:`flag_for`) and the Python API as its keyword (:func:`keyword_for`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.schema import Setting, SettingError, settings_of

if TYPE_CHECKING:
    from simulations.settings import SimulationSettings

# set by ``simulate`` itself (from --clients and --out), not by a flag or keyword of their own
DERIVED = ("min_available_nodes", "num_partitions", "out_dir")


def simulate_settings() -> tuple[Setting, ...]:
    """Every setting ``pollen simulate`` takes: the run's, then the simulation's."""
    from simulations.settings import SIMULATION_SECTIONS, SimulationRunSettings

    run = tuple(e for e in settings_of(SimulationRunSettings) if e.name not in DERIVED)
    return run + tuple(e for section in SIMULATION_SECTIONS for e in settings_of(section))


def flag_for(key: str) -> str:
    """The ``pollen simulate`` flag that sets ``key`` (``num-server-rounds`` -> ``--rounds``)."""
    by_key = {e.key: e.flag for e in simulate_settings()}
    return by_key.get(key) or f"--{key}"


def keyword_for(key: str) -> str:
    """The ``pollen.simulate`` keyword that sets ``key``: the field name, ``rounds`` for the
    rounds (as the flag)."""
    return "rounds" if key == "num-server-rounds" else key.replace("-", "_")


def simulation_settings(*, out: Path, verbose: bool, **values: Any) -> SimulationSettings:
    """Validate keyword values (field names; ``partition`` None: the Task's natural split or
    dirichlet:0.5) into settings, or raise a :class:`SettingError` naming the setting."""
    from client_sdk import TaskConfigError
    from client_sdk.tasks import natural_partition
    from server.checkpoint import ResumeError
    from simulations.heterogeneity import HeterogeneityError
    from simulations.partitioners import PartitionError
    from simulations.runner import check_partition, check_resume
    from simulations.settings import (
        SIMULATION_SECTIONS,
        EngineSection,
        SimulationRunSettings,
        SimulationSettings,
    )

    simulation = {
        e.name: values.pop(e.name)
        for section in SIMULATION_SECTIONS
        for e in settings_of(section)
        if e.name in values
    }
    for section in SIMULATION_SECTIONS:  # each section's own checks, before the cross checks
        section(**{k: v for k, v in simulation.items() if k in section.__dataclass_fields__})
    _check_engine_options(simulation)
    try:
        natural = natural_partition(values["task"])
    except ValueError as err:  # an unknown task or a bad task reference
        raise SettingError("task", str(err)) from None
    if values.get("partition") is None:
        values["partition"] = "natural" if natural else "dirichlet:0.5"
    run = SimulationRunSettings(
        min_available_nodes=simulation.get("clients", EngineSection.clients), **values
    )
    _check_privacy(run, simulation)
    try:
        settings = SimulationSettings(
            run=run, out_dir=out.resolve(), ray_logs=verbose, **simulation
        )
    except (HeterogeneityError, PartitionError) as err:
        raise SettingError(err.key, str(err)) from None
    try:  # split the data now: too many clients for it is a setting error, not a traceback later
        check_partition(settings)
    except (PartitionError, TaskConfigError) as err:
        raise SettingError("partition", str(err)) from None
    check_out_dir(settings.out_dir)
    try:  # a corrupt checkpoint is one line here, before anything is printed or started
        check_resume(settings)
    except ResumeError as err:
        raise SettingError("resume", str(err)) from None
    return settings


def _check_engine_options(simulation: dict[str, Any]) -> None:
    from simulations.settings import EngineSection

    default = EngineSection()
    engine = simulation.get("engine", default.engine)
    device = simulation.get("device", default.device)
    batched_only = (
        device != default.device
        or simulation.get("clients_per_batch", default.clients_per_batch)
        or simulation.get("pool_uploads", default.pool_uploads) != default.pool_uploads
    )
    if engine == "flower" and batched_only:
        raise SettingError(
            "engine",
            "--device, --clients-per-batch and --no-pool-uploads apply to --engine batched",
        )
    if device != "auto":
        from simulations.runner import DeviceError, resolve_device

        try:
            resolve_device(device)
        except DeviceError as err:
            raise SettingError("device", str(err)) from None


def _check_privacy(run: Any, simulation: dict[str, Any]) -> None:
    """Plan the run's cohorts and privacy now (a robust aggregator's cohort too small for
    num-malicious, or a noise calibration that cannot meet its target, raises naming the key)
    and refuse local DP on the batched engine, which builds replies without
    the SDK's client round: one line before anything starts, not a traceback mid-run."""
    from simulations.runner import resolve_engine
    from simulations.settings import EngineSection

    run.check_cohort(simulation.get("clients", EngineSection.clients))
    run.local_privacy()
    run.central_privacy(simulation.get("clients", EngineSection.clients))
    if run.dp_mode == "distributed":  # accounted over the model's values
        from client_sdk.tasks import get_task
        from client_sdk.weights import model_arrays

        model = model_arrays(get_task(run.task).build_model(seed=run.seed))
        values = sum(int(a.size) for a in model.values())
        run.distributed_privacy(simulation.get("clients", EngineSection.clients), values)
    engine = resolve_engine(simulation.get("engine", EngineSection.engine))
    if run.dp_mode == "local" and engine == "batched":
        raise SettingError(
            "dp-mode", "local runs in the SDK's client round: use --engine flower for it"
        )


def check_out_dir(out: Path) -> None:
    """Create ``--out`` (the run would a moment later) and prove a file can be written there,
    so an unwritable place is a setting error before anything starts, not a traceback after."""
    if out.exists() and not out.is_dir():
        raise SettingError("out", f"{out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".pollen-write-test-"):
            pass
    except OSError as err:
        why = err.strerror or type(err).__name__
        raise SettingError("out", f"cannot write run files in {out}: {why}") from None


def settings_table() -> str:
    """The README's settings reference (a markdown table), derived from the declarations; a
    test keeps the README's copy equal to it (print it with ``python -c "from pollen.settings
    import settings_table; print(settings_table())"``)."""
    rows = ["| flag | run-config key | default | what |", "|---|---|---|---|"]
    for e in simulate_settings():
        flag = f"`{e.flag}`" if e.kind is not bool else f"`{e.flag}` / `--no-{e.flag[2:]}`"
        key = f"`{e.key}`" if e.run_config else "-"
        shown = "natural or dirichlet:0.5" if e.cli_default is None else _shown(e.cli_default)
        if e.run_config and e.cli_default != e.default:
            shown += f" (run config: {_shown(e.default)})"
        what = e.help.replace("|", "\\|")
        rows.append(f"| {flag} | {key} | {shown} | {what} |")
    return "\n".join(rows) + "\n"


def _shown(value: Any) -> str:
    return f"`{str(value).lower() if isinstance(value, bool) else value}`"
