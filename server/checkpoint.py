"""Per-round checkpoints for exact resume after a ServerApp crash.

After every round the server writes one ``checkpoint.npz`` atomically (write to a temporary
file, then rename): the global model, the wrapped Flower strategy's optimizer state (FedAdam /
FedYogi / FedAdagrad moments ``m_t``, ``v_t``), the round number and the run settings. Nothing
else is needed: client sampling, pruning masks and client seeds are functions of (seed, round),
so a resumed run continues exactly where the crashed one stopped. Client-side state (error
feedback residuals) lives on the clients; in simulation it is lost with the crashed process.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CHECKPOINT_FILE = "checkpoint.npz"
OPTIMIZER_ATTRS = ("m_t", "v_t")  # Flower's FedOpt family keeps its moments here
# Settings that may differ between the crashed run and its resumption.
RESUMABLE_CHANGES = ("resume", "out_dir", "num_server_rounds")


class ResumeError(ValueError):
    """The checkpoint cannot continue this run; the message says why."""


@dataclass(frozen=True)
class Checkpoint:
    server_round: int
    arrays: dict[str, np.ndarray]
    optimizer: dict[str, dict[str, np.ndarray]]
    settings: dict[str, Any]


def optimizer_state(strategy: object) -> dict[str, dict[str, np.ndarray]]:
    return {
        attr: dict(value)
        for attr in OPTIMIZER_ATTRS
        if isinstance(value := getattr(strategy, attr, None), dict) and value
    }


def restore_optimizer_state(
    strategy: object, state: Mapping[str, Mapping[str, np.ndarray]]
) -> None:
    for attr, value in state.items():
        if attr not in OPTIMIZER_ATTRS or not hasattr(strategy, attr):
            raise ResumeError(f"checkpoint holds {attr!r}, which {type(strategy).__name__} lacks")
        setattr(strategy, attr, {k: np.array(v) for k, v in value.items()})


def save_checkpoint(out_dir: Path, checkpoint: Checkpoint) -> Path:
    entries: dict[str, np.ndarray] = {f"arrays/{k}": v for k, v in checkpoint.arrays.items()}
    for attr, values in checkpoint.optimizer.items():
        entries.update({f"opt/{attr}/{k}": v for k, v in values.items()})
    meta = {"server_round": checkpoint.server_round, "settings": checkpoint.settings}
    entries["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    path = out_dir / CHECKPOINT_FILE
    tmp = out_dir / (CHECKPOINT_FILE + ".tmp.npz")
    np.savez(tmp, **entries)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(out_dir: Path) -> Checkpoint | None:
    path = out_dir / CHECKPOINT_FILE
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as stored:
        meta = json.loads(stored["meta"].tobytes())
        arrays = {k.split("/", 1)[1]: stored[k] for k in stored.files if k.startswith("arrays/")}
        optimizer: dict[str, dict[str, np.ndarray]] = {}
        for key in stored.files:
            if key.startswith("opt/"):
                _, attr, name = key.split("/", 2)
                optimizer.setdefault(attr, {})[name] = stored[key]
    return Checkpoint(
        server_round=int(meta["server_round"]),
        arrays=arrays,
        optimizer=optimizer,
        settings=meta["settings"],
    )


def check_resumable(checkpoint: Checkpoint, settings: Mapping[str, Any]) -> None:
    """Refuse to continue a run under different settings (other than rounds and paths)."""
    differ = sorted(
        key
        for key in set(checkpoint.settings) | set(settings)
        if key not in RESUMABLE_CHANGES and checkpoint.settings.get(key) != settings.get(key)
    )
    if differ:
        raise ResumeError(
            "the checkpoint was made with other settings for "
            + ", ".join(
                f"{k} ({checkpoint.settings.get(k)!r} != {settings.get(k)!r})" for k in differ
            )
        )
