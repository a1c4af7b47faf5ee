"""The baseline of benchmarks/privacy.py: Flower 1.42's own central DP, as a Flower user runs it.

``DifferentialPrivacyServerSideFixedClipping`` (flwr.serverapp.strategy, Message API) wraps
``FedAvg`` in a plain ``run_simulation`` (Ray): it clips each reply's ``model - current`` to
``C`` and adds ``N(0, (z C / m)^2)`` to the aggregated model, ``m`` the clients per round. Every
reply carries weight 1 (the wrapper's noise is calibrated to the equally weighted mean, as
Pollen's central DP weighs; example-count weights would let one client move the mean further
than ``C / m``). The clients train Pollen's Task (same model, initial weights, partition,
optimizer, epochs and batch size) with Pollen's ``train_local``; FedAvg samples ``m`` of the
``N`` nodes without replacement as Pollen's sampler does, with its own random draw.

One ``run_simulation`` runs every (epsilon, seed) job of a task in turn (one Ray start), each a
fresh model and wrapper; Flower's noise comes from NumPy's global generator, seeded per job.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import cloudpickle
import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg
from flwr.simulation import run_simulation

import benchmarks.privacy_tasks as privacy_tasks
from benchmarks.privacy_tasks import TaskSpec
from client_sdk.task import ClientData
from client_sdk.training import LocalSchedule, evaluate_model, train_local
from simulations.app import MIN_SAMPLES_PER_CLIENT
from simulations.partitioners import parse_partition

cloudpickle.register_pickle_by_value(privacy_tasks)  # Ray workers need not import benchmarks/
cloudpickle.register_pickle_by_value(sys.modules[__name__])
WEIGHT = "dp-weight"


def _client_app(spec: TaskSpec) -> ClientApp:
    app = ClientApp()
    cache: dict[tuple[int, int], ClientData] = {}

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        pid = int(context.node_config["partition-id"])
        config = msg.content["config"]
        seed, round_ = int(config["seed"]), int(config["server-round"])
        task = spec.task_object()
        if (pid, seed) not in cache:
            partitioner = parse_partition(spec.partition, min_samples=MIN_SAMPLES_PER_CLIENT)
            cache[(pid, seed)] = task.data.client_data(
                pid, spec.clients, partitioner=partitioner, seed=seed
            )
        model = task.build_model(seed)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        schedule = LocalSchedule(
            lr=task.optimizer.lr, epochs=task.local_epochs, batch_size=task.batch_size
        )
        generator = torch.Generator().manual_seed(seed * 1_000_003 + round_ * 1009 + pid)
        train_local(model, task, cache[(pid, seed)], schedule, generator)
        content = RecordDict(
            {
                "arrays": ArrayRecord(model.state_dict()),
                "metrics": MetricRecord({WEIGHT: 1.0}),
            }
        )
        return Message(content=content, reply_to=msg)

    return app


def _server_app(
    spec: TaskSpec, jobs: list[tuple[float, int, float]], rounds: int, found: list[float]
) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        task = spec.task_object()
        for _epsilon, seed, noise_multiplier in jobs:
            x_test, y_test = task.data.central_test(num_partitions=spec.clients, seed=seed)
            model = task.build_model(seed)
            fedavg = FedAvg(
                fraction_train=spec.per_round / spec.clients,
                fraction_evaluate=0.0,
                min_train_nodes=spec.per_round,
                min_available_nodes=spec.clients,
                weighted_by_key=WEIGHT,
            )
            strategy = DifferentialPrivacyServerSideFixedClipping(
                fedavg, noise_multiplier, spec.clip, spec.per_round
            )
            np.random.seed(seed)  # Flower draws its noise from NumPy's global generator
            result = strategy.start(
                grid=grid,
                initial_arrays=ArrayRecord(model.state_dict()),
                num_rounds=rounds,
                train_config=ConfigRecord({"seed": seed}),
            )
            model.load_state_dict(result.arrays.to_torch_state_dict())
            found.append(float(evaluate_model(model, task, x_test, y_test)[1]))

    return app


def run_flower_dp(spec: TaskSpec, jobs: list[tuple[float, int, float]], rounds: int) -> list[float]:
    """Final central test accuracy of each (epsilon, seed, noise multiplier) job, in order."""
    found: list[float] = []
    logging.getLogger("flwr").setLevel(logging.WARNING)
    backend: dict[str, Any] = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"include_dashboard": False},
    }
    run_simulation(
        server_app=_server_app(spec, jobs, rounds, found),
        client_app=_client_app(spec),
        num_supernodes=spec.clients,
        backend_config=backend,
    )
    if len(found) != len(jobs):
        raise RuntimeError(f"Flower's run finished {len(found)} of {len(jobs)} jobs")
    return found
