"""Evaluation metrics a Task reports: ``metrics_fn(outputs, targets) -> {name: value}``.

A Task's ``metrics_fn`` sees the model's outputs and the targets of a whole evaluation set (one
client's local test split, or the server's central test set) and returns plain floats; its
``primary_metric`` names the one that summaries and plots follow, and ``higher_is_better``
which way is good. The loss is always reported as ``loss`` (the Task's own ``loss_fn``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch

MetricsFn = Callable[[torch.Tensor, torch.Tensor], Mapping[str, float]]


def classification(top_k: Sequence[int] = ()) -> MetricsFn:
    """``accuracy`` (top-1), and ``top{k}-accuracy`` for each k in ``top_k``."""

    def metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        logits = outputs.reshape(-1, outputs.shape[-1])
        labels = targets.reshape(-1)
        found = {"accuracy": float((logits.argmax(dim=1) == labels).float().mean())}
        for k in top_k:
            best = logits.topk(min(k, logits.shape[1]), dim=1).indices
            found[f"top{k}-accuracy"] = float((best == labels[:, None]).any(dim=1).float().mean())
        return found

    return metrics


def regression(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """``mse`` and ``mae`` of the predictions (outputs shaped like the targets, or [n, 1])."""
    predictions = outputs.reshape(targets.shape).float()
    error = predictions - targets.float()
    return {"mse": float((error**2).mean()), "mae": float(error.abs().mean())}


def next_token(top_k: Sequence[int] = (5,)) -> MetricsFn:
    """Language modelling: ``perplexity`` (exp of the mean cross-entropy per token) and the
    classification metrics over tokens."""
    tokens = classification(top_k)

    def metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        logits = outputs.reshape(-1, outputs.shape[-1])
        nll = float(torch.nn.functional.cross_entropy(logits.float(), targets.reshape(-1)))
        return {"perplexity": math.exp(min(nll, 700.0)), **tokens(outputs, targets)}

    return metrics


accuracy = classification()
