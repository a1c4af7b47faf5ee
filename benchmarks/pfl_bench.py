"""Baseline: Apple's pfl-research (pfl 0.6, PyTorch) on benchmarks/simulation.py's work.

Runs in pfl's own virtual environment (``bash benchmarks/pfl_env.sh`` makes .venv-pfl), never
in Pollen's: it imports neither Pollen nor Flower. The same work as the other rows: Flower's
tutorial CNN, one local epoch of SGD (momentum 0.9, lr 0.01) over each client's generated
CIFAR-shaped images (the tutorial-cnn task's data: ``torch.Generator().manual_seed(client id)``,
sizes from client_sdk/tasks/sizes.py for skewed rows) in batches of BATCH, FedAvg over every
client each round (weighted by examples, the central step plain SGD with lr 1: the mean
update added). Written with pfl's own APIs as its image-classification benchmark uses them:
``FederatedDataset`` (users held in memory, ``user_id_to_weight`` = example counts so pfl's
distributed sampler balances skewed users across workers), ``PyTorchModel``,
``FederatedAveraging`` + ``NNAlgorithmParams``, ``SimulatedBackend``.

    .venv-pfl/bin/python benchmarks/pfl_bench.py 100 4 --samples 50 [--sizes dirichlet:0.3]
    .venv-pfl/bin/torchrun --nproc_per_node 2 benchmarks/pfl_bench.py 100 4 ...   # multi-process

Prints ``RESULT pfl ... median_later_round_s=S`` (rank 0): the median wall time of the rounds
after the first, as the other rows report.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pfl.aggregate.simulate import SimulatedBackend
from pfl.aggregate.weighting import WeightByDatapoints
from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
from pfl.callback.base import TrainingProcessCallback
from pfl.data.dataset import Dataset
from pfl.data.federated_dataset import FederatedDataset
from pfl.data.sampling import get_user_sampler
from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
from pfl.internal.ops.selector import get_default_framework_module
from pfl.metrics import Weighted
from pfl.model.pytorch import PyTorchModel
from torch import nn

ROOT = Path(__file__).resolve().parent.parent


def _sizes_module():
    """client_sdk/tasks/sizes.py (numpy only) without importing Pollen's packages."""
    spec = importlib.util.spec_from_file_location("sizes", ROOT / "client_sdk/tasks/sizes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TutorialCNN(nn.Module):
    """Flower's tutorial CNN (client_sdk/tasks/tutorial_cnn.py), with pfl's loss/metrics."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.pool = nn.Conv2d(3, 6, 5), nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))

    def loss(self, x, y, eval=False):  # noqa: A002 (pfl's signature)
        self.eval() if eval else self.train()
        return F.cross_entropy(self(x), y)

    @torch.no_grad()
    def metrics(self, x, y, eval=False):  # noqa: A002
        self.eval() if eval else self.train()
        return {"loss": Weighted(float(F.cross_entropy(self(x), y, reduction="sum")), len(y))}


def client_images(client: int, count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The tutorial-cnn task's images of ``client`` (client_sdk/tasks/tutorial_cnn.py)."""
    generator = torch.Generator().manual_seed(client + (seed << 32))
    x = torch.randn(count, 3, 32, 32, generator=generator)
    return x, torch.randint(0, 10, (count,), generator=generator)


def client_counts(clients: int, samples: int, sizes: str) -> list[int]:
    if not sizes or sizes == "equal":
        return [samples] * clients
    return _sizes_module().client_sizes(sizes, samples, clients, 0).tolist()


class RoundClock(TrainingProcessCallback):
    """Wall time at the start of training and after every central iteration."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_begin(self, *, model):
        self.stamps.append(time.perf_counter())
        return super().on_train_begin(model=model)

    def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
        self.stamps.append(time.perf_counter())
        return False, type(aggregate_metrics)()


def build(clients: int, counts: list[int], lr: float, momentum: float, seed_model: int = 0):
    """(federated dataset, pfl model, its torch module): users in memory, FedAvg's SGD(1)."""
    data = {u: client_images(u, n) for u, n in enumerate(counts)}
    dataset = FederatedDataset(
        lambda user: Dataset(data[user], user_id=user),
        get_user_sampler("minimize_reuse", list(range(clients))),
        user_id_to_weight=dict(enumerate(counts)),
    )
    torch.manual_seed(seed_model)
    module = TutorialCNN()
    model = PyTorchModel(
        model=module,
        local_optimizer_create=functools.partial(torch.optim.SGD, momentum=momentum),
        central_optimizer=torch.optim.SGD(module.parameters(), lr=1.0),
    )
    return dataset, model, module


def run(clients: int, rounds: int, counts: list[int], batch: int, lr: float, momentum: float):
    dataset, model, _ = build(clients, counts, lr, momentum)
    clock = RoundClock()
    FederatedAveraging().run(
        algorithm_params=NNAlgorithmParams(
            central_num_iterations=rounds,
            evaluation_frequency=rounds + 1,
            train_cohort_size=clients,
            val_cohort_size=None,
        ),
        backend=SimulatedBackend(
            training_data=dataset, val_data=None, postprocessors=[WeightByDatapoints()]
        ),
        model=model,
        model_train_params=NNTrainHyperParams(
            local_learning_rate=lr, local_num_epochs=1, local_batch_size=batch
        ),
        model_eval_params=NNEvalHyperParams(local_batch_size=batch),
        callbacks=[clock],
    )
    return np.diff(clock.stamps).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clients", type=int)
    parser.add_argument("rounds", type=int)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--sizes", default="equal", help="equal | dirichlet:ALPHA | pareto:A")
    args = parser.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    ops = get_default_framework_module()  # pfl's PyTorch ops; under torchrun: distributed
    counts = client_counts(args.clients, args.samples, args.sizes)
    rounds = run(args.clients, args.rounds, counts, args.batch, lr=0.01, momentum=0.9)
    if ops.distributed.global_rank == 0:
        mode = "torchrun" if world > 1 else "single-process"
        print(
            f"RESULT pfl mode={mode} workers={world} clients={args.clients} sizes={args.sizes} "
            f"rounds={[round(r, 3) for r in rounds]} "
            f"median_later_round_s={statistics.median(rounds[1:]):.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
