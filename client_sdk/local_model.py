"""Preparing the local model a client trains: pruning mask, fake-quantized weights, frozen layers.

Both the mask and the fake quantization are ``torch.nn.utils.parametrize`` parametrizations on
the weight, so the optimizer updates the underlying tensor while the forward pass (and so the
gradient) sees ``fake_quant(weight * mask)``: pruned coordinates get zero gradient and stay
exactly zero. Fake quantization is symmetric int8 per output row with a straight-through
estimator (Jacob et al., CVPR 2018; Bengio et al. 2013 for the STE). ``finish`` bakes the
parametrizations in, so the weights left are pruned and int8-representable.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

INT8_MAX = 127


def int8_scale(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-row symmetric scale max|w| / 127 (1 where a row is all zeros)."""
    rows = weight.detach().reshape(weight.shape[0], -1).abs().amax(dim=1)
    scale = torch.where(rows > 0, rows / INT8_MAX, torch.ones_like(rows))
    return scale.reshape(-1, *([1] * (weight.dim() - 1)))


class KeepMask(nn.Module):
    """weight -> weight * mask (the server's pruning mask, fixed for the round)."""

    def __init__(self, mask: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mask", torch.from_numpy(np.asarray(mask, dtype=np.float32)))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


class FakeQuantInt8(nn.Module):
    """weight -> round(weight / s) * s in the forward pass; identity gradient (STE)."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        scale = int8_scale(weight)
        quantized = torch.clamp(torch.round(weight / scale), -INT8_MAX, INT8_MAX) * scale
        return weight + (quantized - weight).detach()


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, attr = name.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), attr


def prepare_local_model(
    model: nn.Module,
    *,
    masks: Mapping[str, np.ndarray] | None = None,
    qat: bool = False,
    frozen: Sequence[str] = (),
) -> None:
    """Attach mask / fake-quant parametrizations and freeze parameters named by ``frozen``."""
    prefixes = tuple(frozen)
    for name, param in list(model.named_parameters()):
        if prefixes and name.startswith(prefixes):
            param.requires_grad_(False)
            continue
        owner, attr = _owner(model, name)
        if masks is not None and name in masks:
            parametrize.register_parametrization(owner, attr, KeepMask(masks[name]))
        if qat and param.dim() >= 2:
            parametrize.register_parametrization(owner, attr, FakeQuantInt8())


def finish_local_model(model: nn.Module) -> None:
    """Remove the parametrizations, keeping the masked / quantized weights they produce."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for attr in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=True)


def trainable(model: nn.Module) -> Iterator[nn.Parameter]:
    return (p for p in model.parameters() if p.requires_grad)
