"""Pollen from Python: ``pollen.simulate(task, ...)`` runs what ``pollen simulate`` runs.

The keywords are the CLI's flags (``clients``, ``rounds``, ``engine``, ``partition``, ``out``)
and every run-config setting by its field name (``lr``, ``quant_bits``, ``secure_agg``,
``lr_schedule``, ...: :class:`server.RunSettings`). They are checked by the same code as the
flags, and a bad one raises :class:`SettingsError` naming the keyword. Python callers may also
pass what a flag cannot: a :class:`client_sdk.Task` object, any Flower Message-API strategy
object, metric aggregation functions and an ``on_round`` callback that receives each round's
row of ``metrics.jsonl`` as it is written.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pollen.settings import FlagError, simulation_settings

_KEYWORD_FOR_FLAG = {"--rounds": "rounds", "--fraction": "fraction_train", "--out": "out"}


class SettingsError(ValueError):
    """A keyword of :func:`simulate` has a value Pollen cannot run with; ``key`` names it."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"{key}: {why}")
        self.key = key


def simulate(
    task: Any = "digits",
    *,
    clients: int = 50,
    rounds: int = 3,
    out: str | Path = "runs/pollen",
    engine: str = "auto",
    partition: str | None = None,
    strategy: Any = "fedavg",
    on_round: Callable[[dict[str, Any]], None] | None = None,
    train_metrics_aggr_fn: Callable[[list[dict], list[float]], dict] | None = None,
    evaluate_metrics_aggr_fn: Callable[[list[dict], list[float]], dict] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Simulate ``clients`` virtual clients training ``task`` for ``rounds`` rounds; return the
    run's summary (also written to ``out/summary.json``, with ``metrics.jsonl`` and plots).

    ``task``: a built-in name, a reference (``pkg.mod:attr``, ``path/file.py:attr``) or a Task
    object (one defined at module level also runs on Flower's engine; any runs on the batched
    engine). ``strategy``: a name (``fedavg``, ``fedadam``, ``krum``, ...) or a Flower strategy
    object (``flwr.serverapp.strategy.FedAvgM(...)``). Other keywords: see the module docstring.
    """
    from client_sdk import Task
    from client_sdk.tasks.references import IN_PROCESS, reference_to
    from server.federation import ServerHooks
    from simulations.runner import simulate as run_simulation

    if isinstance(task, Task):
        task = reference_to(task)
    elif not isinstance(task, str):
        raise SettingsError("task", f"give a Task or a task name, got {type(task).__name__}")
    if task.startswith(IN_PROCESS):
        if engine == "flower":
            raise SettingsError(
                "task",
                "Flower's engine runs clients in other processes, which cannot see a Task made "
                "in this script: define it in a module you import (or name its file as "
                "'path/file.py:attr'), or use engine='batched'",
            )
        engine = "batched"  # "auto": the engine that runs a Task object in this process
    # a copy per run: a strategy object keeps state (momentum, the last model) between runs
    strategy_object = None if isinstance(strategy, str) else copy.deepcopy(strategy)
    for key, value in (("clients", clients), ("rounds", rounds)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise SettingsError(key, f"must be a whole number, got {value!r}")
    engine_keys = (
        "device",
        "clients_per_batch",
        "pool_uploads",
        "device_tiers",
        "client_cpus",
        "client_gpus",
    )
    engine_options = {k: settings.pop(k) for k in engine_keys if k in settings}
    heterogeneity = {k: settings.pop(k) for k in ("availability", "deadline") if k in settings}
    try:
        simulation = simulation_settings(
            clients=clients,
            partition=partition,
            out=Path(out),
            verbose=bool(settings.pop("verbose", False)),
            engine=engine,
            **engine_options,
            **heterogeneity,
            task=task,
            num_server_rounds=rounds,
            strategy=strategy if isinstance(strategy, str) else "fedavg",
            **settings,
        )
    except FlagError as err:
        key = _KEYWORD_FOR_FLAG.get(err.flag, err.flag.removeprefix("--").replace("-", "_"))
        raise SettingsError(key, str(err).split(": ", 1)[-1]) from None
    except TypeError as err:
        unknown = re.search(r"unexpected keyword argument '(\w+)'", str(err))
        if unknown is None:
            raise
        why = "not a setting of pollen.simulate (see server.RunSettings)"
        raise SettingsError(unknown.group(1), why) from None
    hooks = ServerHooks(
        strategy=strategy_object,
        train_metrics_aggr_fn=train_metrics_aggr_fn,
        evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
    )
    return run_simulation(simulation, on_round=on_round, hooks=hooks)
