"""Pollen from Python: ``pollen.simulate(task, ...)`` runs what ``pollen simulate`` runs.

The keywords are every setting ``pollen simulate`` takes, by field name (``clients``,
``engine``, ``partition``, ``lr``, ``quant_bits``, ``secure_agg``, ...; ``rounds`` for
``num_server_rounds``), derived from the same declarations as the flags (:mod:`server.sections`,
:mod:`simulations.settings`) and checked by the same code; a bad one raises
:class:`SettingsError` naming the keyword. Python callers may also
pass what a flag cannot: a :class:`client_sdk.Task` object, any Flower Message-API strategy
object, metric aggregation functions and an ``on_round`` callback that receives each round's
row of ``metrics.jsonl`` as it is written.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pollen.settings import keyword_for, simulate_settings, simulation_settings
from server.schema import SettingError


class SettingsError(SettingError):
    """A keyword of :func:`simulate` has a value Pollen cannot run with; ``key`` names it."""


def _keywords() -> dict[str, str]:
    """``pollen.simulate`` keyword -> settings field name, for every declared setting."""
    return {keyword_for(e.key): e.name for e in simulate_settings()}


def simulate(
    task: Any = "digits",
    *,
    out: str | Path = "runs/pollen",
    strategy: Any = "fedavg",
    on_round: Callable[[dict[str, Any]], None] | None = None,
    train_metrics_aggr_fn: Callable[[list[dict], list[float]], dict] | None = None,
    evaluate_metrics_aggr_fn: Callable[[list[dict], list[float]], dict] | None = None,
    verbose: bool = False,
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
    names = _keywords()
    values = {}
    for keyword, value in settings.items():
        if keyword not in names:
            why = "not a setting of pollen.simulate (see the README's settings reference)"
            raise SettingsError(keyword, why)
        values[names[keyword]] = value
    if task.startswith(IN_PROCESS):
        if values.get("engine") == "flower":
            raise SettingsError(
                "task",
                "Flower's engine runs clients in other processes, which cannot see a Task made "
                "in this script: define it in a module you import (or name its file as "
                "'path/file.py:attr'), or use engine='batched'",
            )
        values["engine"] = "batched"  # "auto": the engine that runs a Task object in this process
    # a copy per run: a strategy object keeps state (momentum, the last model) between runs
    strategy_object = None if isinstance(strategy, str) else copy.deepcopy(strategy)
    try:
        simulation = simulation_settings(
            out=Path(out),
            verbose=bool(verbose),
            **values,
            task=task,
            strategy=strategy if isinstance(strategy, str) else "fedavg",
        )
    except SettingError as err:
        raise SettingsError(keyword_for(err.key), err.why) from None
    hooks = ServerHooks(
        strategy=strategy_object,
        train_metrics_aggr_fn=train_metrics_aggr_fn,
        evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
    )
    return run_simulation(simulation, on_round=on_round, hooks=hooks)


def _signature() -> inspect.Signature:
    """The keywords ``help(pollen.simulate)`` shows: its own, then every declared setting with
    its default (``partition`` None: the Task's natural split, else dirichlet:0.5)."""
    own = inspect.signature(simulate).parameters.values()
    declared = [
        inspect.Parameter(
            keyword_for(e.key),
            inspect.Parameter.KEYWORD_ONLY,
            default=None if e.name == "partition" else e.default,
            annotation=e.kind,
        )
        for e in simulate_settings()
        if e.name not in ("task", "strategy")
    ]
    return inspect.Signature([p for p in own if p.kind != p.VAR_KEYWORD] + declared)


simulate.__signature__ = _signature()  # type: ignore[attr-defined]
