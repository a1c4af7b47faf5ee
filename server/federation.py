"""One federated run on any Flower Grid: strategy loop, central evaluation, metrics, model file.

The same function runs under ``flwr run`` against a real SuperLink, inside Flower's simulation
engine, and on Pollen's batched engine (``simulations.batched.BatchedGrid``), since all of them
hand the ServerApp a Grid.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import nn

from client_sdk import Task, load_arrays, model_arrays
from client_sdk.export import load_int8_model, quantize_int8, save_npz
from client_sdk.tasks import get_task
from client_sdk.training import evaluate_metrics
from server.checkpoint import (
    Checkpoint,
    ResumeError,
    check_resumable,
    load_checkpoint,
    optimizer_state,
    restore_optimizer_state,
    save_checkpoint,
)
from server.config import RunSettings
from server.metrics import MetricsLog
from server.schema import defaults_of, settings_of
from strategies import (
    ReplyLimits,
    SeededSampler,
    StrategySettings,
    build_strategy,
    stall_reason,
)
from strategies.privacy.accounting import PrivacyError
from strategies.privacy.central import CentralDp
from strategies.privacy.distributed import DistributedDp
from strategies.privacy.local import LocalDp
from strategies.schedules import MetricsAggregation, parse_schedule
from wire import keys

log = logging.getLogger(__name__)
PREVIOUS_METRICS = "metrics.previous.jsonl"  # --resume without a checkpoint keeps the old log

RoundCallback = Callable[[dict[str, Any]], None]
MODEL_FILE = "final_model.npz"
ABORT_FILE = "aborted.txt"  # why the run stopped early (absent when it did not)
INT8_MODEL_FILE = "final_model_int8.npz"
EXPORT_FILE = "export.json"


@runtime_checkable
class RoundReporter(Protocol):
    """A Grid that has figures of its own for the round just trained (e.g. a simulated clock)."""

    def round_metrics(self) -> dict[str, Any]: ...


class RunAborted(RuntimeError):
    """The run stopped early: no update was accepted in ``max-failed-rounds`` rounds in a row."""


@dataclass(frozen=True, kw_only=True)
class ServerHooks:
    """What a Python caller may add to a run besides its settings: any Flower Message-API
    strategy object (used instead of the ``strategy`` name) and metric aggregation functions
    ``(each reply's metrics, their weights) -> metrics``."""

    strategy: Strategy | None = None
    train_metrics_aggr_fn: MetricsAggregation | None = None
    evaluate_metrics_aggr_fn: MetricsAggregation | None = None


@dataclass(frozen=True)
class FederationResult:
    final_arrays: dict[str, np.ndarray]
    rows: list[dict[str, Any]]
    out_dir: Path


def default_out_dir(run_id: int) -> Path:
    home = Path(os.environ.get("POLLEN_HOME", Path.home() / ".pollen")).expanduser()
    return home / "runs" / str(run_id)


# StrategySettings fields that are run settings of the same name (the others are renamed or built)
_SHARED_STRATEGY_FIELDS = tuple(
    sorted(
        {f.name for f in fields(StrategySettings)}
        & {e.name for e in settings_of(RunSettings)} - {"lr_schedule"}  # parsed from its text
    )
)


def client_config(settings: RunSettings, num_partitions: int) -> ConfigRecord:
    """What every client needs each round besides the model (the server is the source of truth)."""
    return ConfigRecord(
        {
            keys.TASK: settings.task,
            keys.SEED: settings.seed,
            keys.NUM_PARTITIONS: num_partitions,
            keys.LR: settings.lr,
            keys.LOCAL_EPOCHS: settings.local_epochs,
            keys.BATCH_SIZE: settings.batch_size,
            # nothing simulation-only: the simulation ClientApp reads how it splits the data,
            # and its attacks and dropouts, from its own run (simulations.settings)
        }
    )


def run_federation(
    grid: Grid,
    settings: RunSettings,
    *,
    out_dir: Path,
    on_round: RoundCallback | None = None,
    hooks: ServerHooks | None = None,
) -> FederationResult:
    """Train ``settings.task`` for ``settings.num_server_rounds`` rounds over ``grid``.

    With ``settings.resume`` and a checkpoint in ``out_dir``, continue after its round.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = load_checkpoint(out_dir) if settings.resume else None
    if checkpoint is not None:
        check_resumable(checkpoint, asdict(settings), defaults=defaults_of(type(settings)))
        log.info("resuming %s after round %d", out_dir, checkpoint.server_round)
    elif settings.resume:
        previous = out_dir / "metrics.jsonl"
        if previous.is_file():  # a run whose checkpoint is gone: keep its log, start afresh
            kept = previous.replace(out_dir / PREVIOUS_METRICS)
            log.warning(
                "no checkpoint in %s: starting from round 1 (its log kept as %s)",
                out_dir,
                kept.name,
            )
        else:
            log.info("no checkpoint in %s: starting from round 1", out_dir)
    (out_dir / "run_config.json").write_text(json.dumps(asdict(settings), indent=2))
    (out_dir / ABORT_FILE).unlink(missing_ok=True)
    task = get_task(settings.task)
    model = task.build_model(seed=settings.seed)
    initial = model_arrays(model) if checkpoint is None else checkpoint.arrays
    done = 0 if checkpoint is None else checkpoint.server_round
    privacy = settings.local_privacy()
    if settings.dp_mode in ("central", "distributed"):  # over N: the nodes unless declared
        waiting = SeededSampler(seed=settings.seed, min_available=settings.min_available_nodes)
        population = settings.num_partitions or len(waiting.wait_for_nodes(grid))
        privacy = settings.central_privacy(population) or settings.distributed_privacy(
            population, sum(int(a.size) for a in initial.values())
        )
    strategy = build_strategy(
        StrategySettings(
            **{name: getattr(settings, name) for name in _SHARED_STRATEGY_FIELDS},
            name=settings.strategy,
            lr_schedule=parse_schedule(settings.lr_schedule),
            num_rounds=settings.num_server_rounds,
            inner=hooks.strategy if hooks else None,
            train_metrics_aggr_fn=hooks.train_metrics_aggr_fn if hooks else None,
            evaluate_metrics_aggr_fn=hooks.evaluate_metrics_aggr_fn if hooks else None,
            client_lr=settings.lr or task.optimizer.lr,
            compression=settings.compression(),
            secure=settings.secure_aggregation(),
            privacy=privacy,
            limits=ReplyLimits(
                max_update_value=settings.max_update_value,
                max_weight=settings.max_num_examples,
            ),
        )
    )
    if checkpoint is not None:
        restore_optimizer_state(strategy.inner, checkpoint.optimizer, list(checkpoint.arrays))
        if privacy is not None:
            restore_privacy(privacy, checkpoint)
            if settings.dp_target_epsilon and not settings.dp_noise_multiplier:
                recalibrate_privacy(privacy, checkpoint, settings, initial)
        strategy.round_offset = done
    num_partitions = settings.num_partitions or len(strategy.sampler.wait_for_nodes(grid))
    settings.check_cohort(num_partitions)
    central = central_evaluation(task, num_partitions, settings.seed)
    metrics_log = MetricsLog(out_dir / "metrics.jsonl", keep_until=done if checkpoint else None)
    clock = {"start": time.perf_counter(), "last": time.perf_counter()}

    def _score(arrays: dict[str, np.ndarray]) -> float:
        load_arrays(model, arrays)
        return central(model).get(task.primary_metric, float("nan"))

    def evaluate_fn(loop_round: int, arrays: ArrayRecord) -> MetricRecord:
        server_round = loop_round + done
        named = {name: a.numpy() for name, a in arrays.items()}
        load_arrays(model, named)
        found = central(model)  # the Task's metrics (and loss) on the central test set
        if loop_round == 0 and done:  # the resumed model: its row is already in the log
            return MetricRecord(found)
        now = time.perf_counter()
        row: dict[str, Any] = {
            "round": server_round,
            **found,
            "round_wall_s": now - clock["last"],
            "elapsed_s": now - clock["start"],
        }
        clock["last"] = now
        if server_round in strategy.rounds:
            row.update(strategy.rounds[server_round].as_metrics())
        if isinstance(grid, RoundReporter):
            row.update(grid.round_metrics())
        metrics_log.write(row)
        if server_round > 0:
            state = Checkpoint(
                server_round,
                named,
                optimizer_state(strategy.inner, list(named)),
                asdict(settings),
                privacy={} if privacy is None else privacy.state(),
            )
            save_checkpoint(out_dir, state)
        if on_round is not None:
            on_round(row)
        stalled = stall_reason(strategy.rounds, server_round, settings.max_failed_rounds)
        if stalled is not None:
            why = f"{stalled}; stopped (max-failed-rounds = {settings.max_failed_rounds})"
            (out_dir / ABORT_FILE).write_text(why + "\n")
            log.error("run aborted: %s", why)
            raise RunAborted(why)
        return MetricRecord(found)

    config = client_config(settings, num_partitions)
    if privacy is not None and settings.dp_mode in ("local", "distributed"):  # clients noise
        config = ConfigRecord({**dict(config), **privacy.round_config()})
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord({k: Array(v) for k, v in initial.items()}),
        num_rounds=max(settings.num_server_rounds - done, 0),
        timeout=settings.round_timeout,
        train_config=config,
        evaluate_config=ConfigRecord(dict(config)),
        evaluate_fn=evaluate_fn,
    )
    final = {name: a.numpy() for name, a in result.arrays.items()} if result.arrays else initial
    if strategy.masks is not None:  # a server optimizer's momentum may touch pruned weights
        final = strategy.masks.apply(final)
    export = export_models(final, out_dir, evaluate=_score, metric=task.primary_metric)
    log.info(
        "run finished: %d rounds, models saved to %s: %s",
        settings.num_server_rounds,
        out_dir,
        export,
    )
    return FederationResult(final_arrays=final, rows=metrics_log.rows, out_dir=out_dir)


def restore_privacy(privacy: CentralDp | LocalDp | DistributedDp, checkpoint: Checkpoint) -> None:
    """Continue a DP run's ledger from its checkpoint: a resumed run that counted from zero
    would report less privacy spent than it was (a checkpoint without a ledger is refused)."""
    where = f"{checkpoint.source}: " if checkpoint.source is not None else ""
    if not checkpoint.privacy:
        raise ResumeError(
            f"{where}the checkpoint holds no privacy ledger, so the epsilon spent before round "
            f"{checkpoint.server_round} is unknown; start the DP run afresh"
        )
    try:
        privacy.restore(checkpoint.privacy, checkpoint.server_round)
    except PrivacyError as err:
        raise ResumeError(f"{where}{err}") from None


def recalibrate_privacy(
    privacy: CentralDp | LocalDp | DistributedDp,
    checkpoint: Checkpoint,
    settings: RunSettings,
    initial: dict[str, np.ndarray],
) -> None:
    """Resuming a run calibrated to dp-target-epsilon: the rounds left get the noise that keeps
    the total (the ledger so far plus them) within the target. Without this, a run resumed
    with more planned rounds would calibrate as if starting afresh and overshoot the target."""
    left = settings.num_server_rounds - checkpoint.server_round
    if left <= 0:
        return
    before = privacy.noise_multiplier
    try:
        if isinstance(privacy, DistributedDp):
            values = sum(int(a.size) for a in initial.values())
            privacy.recalibrate(settings.dp_target_epsilon, left, values)
        else:
            privacy.recalibrate(settings.dp_target_epsilon, left)
    except PrivacyError as err:
        where = f"{checkpoint.source}: " if checkpoint.source is not None else ""
        raise ResumeError(f"{where}dp-target-epsilon: {err}") from None
    rises = privacy.noise_multiplier > before * 1.01  # a target nearly spent: little signal left
    (log.warning if rises else log.info)(
        "resumed DP run: noise multiplier %.4g -> %.4g for the %d rounds left (target %g)",
        before,
        privacy.noise_multiplier,
        left,
        settings.dp_target_epsilon,
    )


def central_evaluation(
    task: Task, num_partitions: int, seed: int
) -> Callable[[nn.Module], dict[str, float]]:
    """The server's evaluation of a model: the Task's ``evaluate_fn``, or its loss and
    ``metrics_fn`` on the data source's central test set."""
    if task.evaluate_fn is not None:
        own = task.evaluate_fn
        return lambda model: {str(k): float(v) for k, v in own(model).items()}
    x_test, y_test = task.data.central_test(num_partitions=num_partitions, seed=seed)
    return lambda model: evaluate_metrics(model, task, x_test, y_test)


def export_models(
    final: dict[str, np.ndarray],
    out_dir: Path,
    evaluate: Callable[[dict[str, np.ndarray]], float],
    metric: str = "accuracy",
) -> dict[str, Any]:
    """Write the float32 and int8 models, and what each weighs and scores on the Task's
    primary ``metric``, to ``export.json``."""
    float_bytes = save_npz(out_dir / MODEL_FILE, final)
    int8_bytes = save_npz(out_dir / INT8_MODEL_FILE, quantize_int8(final))
    export = {
        "float32_model_bytes": float_bytes,
        "int8_model_bytes": int8_bytes,
        "int8_size_ratio": float_bytes / int8_bytes,
        "metric": metric,
        f"float32_{metric}": evaluate(final),
        f"int8_{metric}": evaluate(load_int8_model(out_dir / INT8_MODEL_FILE)),
        "nonzero_weights": int(sum(np.count_nonzero(a) for a in final.values())),
        "total_weights": int(sum(a.size for a in final.values())),
    }
    (out_dir / EXPORT_FILE).write_text(json.dumps(export, indent=2))
    return export
