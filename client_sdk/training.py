"""Local training and evaluation of a Task's model on one client's data.

Plain minibatch training with the Task's optimizer; ``proximal_mu > 0`` adds FedProx's proximal
term mu/2 * ||w - w_global||^2 (Li et al., "Federated Optimization in Heterogeneous Networks",
MLSys 2020). Shuffling draws from the ``torch.Generator`` passed in, so a run is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from client_sdk.task import ClientData, Task, TaskConfigError


@dataclass(frozen=True, kw_only=True)
class LocalSchedule:
    """How one round of local training runs (Task defaults, overridable by the server)."""

    lr: float
    epochs: int
    batch_size: int
    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        if not self.lr > 0 or self.epochs < 1 or self.batch_size < 1 or self.proximal_mu < 0:
            raise TaskConfigError(
                f"local schedule needs lr > 0, epochs >= 1, batch_size >= 1, proximal_mu >= 0; "
                f"got {self}"
            )


@dataclass(frozen=True)
class TrainStats:
    mean_loss: float
    num_examples: int
    steps: int


def train_local(
    model: nn.Module,
    task: Task,
    data: ClientData,
    schedule: LocalSchedule,
    generator: torch.Generator,
) -> TrainStats:
    """Train ``model`` in place for ``schedule.epochs`` epochs over ``data``'s train split."""
    x = torch.from_numpy(np.asarray(data.x_train, dtype=np.float32))
    y = targets_tensor(data.y_train, task)
    n = len(y)
    if n == 0:
        raise TaskConfigError("client has no training examples; check the partition guard")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TaskConfigError("every parameter is frozen; nothing to train")
    anchor = [p.detach().clone() for p in params] if schedule.proximal_mu else []
    optimizer = task.optimizer.build(iter(params), lr=schedule.lr)
    model.train()
    total, steps = 0.0, 0
    for _ in range(schedule.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, schedule.batch_size):
            idx = order[start : start + schedule.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = task.loss_fn(model(x[idx]), y[idx])
            if anchor:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))
                loss = loss + 0.5 * schedule.proximal_mu * prox
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            steps += 1
    return TrainStats(mean_loss=total / max(steps, 1), num_examples=n, steps=steps)


def targets_tensor(y: np.ndarray, task: Task | None = None) -> torch.Tensor:
    """Targets as torch wants them: int64 class labels (or token ids), or float32 for a
    regression Task's float targets. Float labels (from pandas or ``np.loadtxt``) of a Task
    whose loss takes class indices (cross-entropy, NLL) stay labels."""
    array = np.asarray(y)
    regression = np.issubdtype(array.dtype, np.floating) and not _takes_class_indices(task)
    dtype = np.float32 if regression else np.int64
    return torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))


def _takes_class_indices(task: Task | None) -> bool:
    if task is None:
        return False
    loss = task.loss_fn
    return loss in (F.cross_entropy, F.nll_loss) or isinstance(
        loss, nn.CrossEntropyLoss | nn.NLLLoss
    )


@torch.no_grad()
def evaluate_metrics(
    model: nn.Module, task: Task, x: np.ndarray, y: np.ndarray, batch_size: int = 1024
) -> dict[str, float]:
    """``loss`` (the Task's ``loss_fn``, mean over examples) and the Task's ``metrics_fn`` on
    (x, y); NaN for each when there is nothing to evaluate."""
    if len(y) == 0:
        return {"loss": float("nan"), task.primary_metric: float("nan")}
    model.eval()
    xt = torch.from_numpy(np.asarray(x, dtype=np.float32))
    yt = targets_tensor(y, task)
    loss_sum, outputs = 0.0, []
    for start in range(0, len(yt), batch_size):
        out = model(xt[start : start + batch_size])
        target = yt[start : start + batch_size]
        loss_sum += float(task.loss_fn(out, target)) * len(target)
        outputs.append(out)
    found = {name: float(value) for name, value in task.metrics_fn(torch.cat(outputs), yt).items()}
    return {"loss": loss_sum / len(yt), **found}


def evaluate_model(
    model: nn.Module, task: Task, x: np.ndarray, y: np.ndarray, batch_size: int = 1024
) -> tuple[float, float]:
    """Mean loss and the Task's primary metric (accuracy for a classifier) of ``model``."""
    found = evaluate_metrics(model, task, x, y, batch_size)
    return found["loss"], found.get(task.primary_metric, float("nan"))
