"""Export a trained model as int8 weights + float32 scales for edge inference (numpy only).

Weight tensors (ndim >= 2) are stored as int8 with one symmetric scale per output row
(max|w| / 127), the same scheme as :class:`client_sdk.local_model.FakeQuantInt8`, so a model
trained with QAT exports without further error. Biases and other 1-D tensors stay float32.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

INT8_MAX = 127
_Q, _S = ".int8", ".scale"


def quantize_int8(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, arr in arrays.items():
        if arr.ndim < 2:
            out[name] = arr.astype(np.float32)
            continue
        rows = np.abs(arr.reshape(arr.shape[0], -1)).max(axis=1)
        scale = np.where(rows > 0, rows / INT8_MAX, 1.0).astype(np.float32)
        shaped = scale.reshape(-1, *([1] * (arr.ndim - 1)))
        out[name + _Q] = np.clip(np.rint(arr / shaped), -INT8_MAX, INT8_MAX).astype(np.int8)
        out[name + _S] = scale
    return out


def dequantize_int8(stored: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key, arr in stored.items():
        if key.endswith(_S):
            continue
        if key.endswith(_Q):
            name = key[: -len(_Q)]
            scale = stored[name + _S].reshape(-1, *([1] * (arr.ndim - 1)))
            out[name] = (arr.astype(np.float32) * scale).astype(np.float32)
        else:
            out[key] = arr
    return out


def save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> int:
    """Atomically write an uncompressed .npz (no pickle); return its size in bytes."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path.stat().st_size


def load_int8_model(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as stored:
        return dequantize_int8({k: stored[k] for k in stored.files})
