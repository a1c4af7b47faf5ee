"""Moving model weights between torch modules and named float32 numpy arrays.

Only floating-point state (parameters and float buffers) is federated; integer buffers such as
BatchNorm's ``num_batches_tracked`` stay local.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from wire import TensorSpec


def model_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """Named float32 copies of the model's floating-point state, in state_dict order."""
    return {
        name: tensor.detach().cpu().numpy().astype(np.float32, copy=True)
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point()
    }


def tensor_specs(arrays: Mapping[str, np.ndarray]) -> list[TensorSpec]:
    """The wire specs (name, shape) of named arrays."""
    return [TensorSpec(name=name, shape=tuple(arr.shape)) for name, arr in arrays.items()]


def load_arrays(model: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Copy named arrays into the model; every floating-point entry must be present."""
    state = model.state_dict()
    wanted = [name for name, t in state.items() if t.is_floating_point()]
    missing = [name for name in wanted if name not in arrays]
    unknown = [name for name in arrays if name not in state]
    if missing or unknown:
        raise KeyError(
            f"arrays do not match the model: missing {missing}, unknown {unknown}; "
            "was the global model built from the same Task?"
        )
    with torch.no_grad():
        for name in wanted:
            src = torch.from_numpy(np.asarray(arrays[name], dtype=np.float32))
            if tuple(src.shape) != tuple(state[name].shape):
                raise ValueError(
                    f"{name}: shape {tuple(src.shape)} != model's {tuple(state[name].shape)}"
                )
            state[name].copy_(src)
