"""Run settings of the ServerApp, read from Flower's run config (``[tool.flwr.app.config]``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from client_sdk.tasks import get_task
from strategies import STRATEGY_NAMES


class RunConfigError(ValueError):
    """A run-config key has a value the server cannot use; the message names the key."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"run config {key}: {why}")
        self.key = key
        self.why = why


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """Everything one federated run needs. Keys mirror the run config with '-' for '_'."""

    task: str = "digits"
    num_server_rounds: int = 3
    strategy: str = "fedavg"
    fraction_train: float = 1.0
    fraction_evaluate: float = 0.0
    min_available_nodes: int = 2
    partition: str = "dirichlet:0.5"  # how simulated clients split a pooled dataset
    num_partitions: int = 0  # 0: the number of nodes connected when the run starts
    seed: int = 0
    out_dir: str = ""  # "" : $POLLEN_HOME/runs/<run id> (POLLEN_HOME defaults to ~/.pollen)
    lr: float = 0.0  # 0: the Task's own learning rate
    local_epochs: int = 0  # 0: the Task's own
    batch_size: int = 0  # 0: the Task's own
    proximal_mu: float = 0.01  # FedProx only
    server_lr: float = 0.1  # FedAdam/FedYogi only

    def __post_init__(self) -> None:
        bad = RunConfigError
        if self.num_server_rounds < 1:
            raise bad("num-server-rounds", f"must be >= 1, got {self.num_server_rounds}")
        if self.strategy.lower() not in STRATEGY_NAMES:
            raise bad("strategy", f"{self.strategy!r} is not one of {', '.join(STRATEGY_NAMES)}")
        if not 0 < self.fraction_train <= 1:
            raise bad("fraction-train", f"must be in (0, 1], got {self.fraction_train}")
        if not 0 <= self.fraction_evaluate <= 1:
            raise bad("fraction-evaluate", f"must be in [0, 1], got {self.fraction_evaluate}")
        if self.min_available_nodes < 1:
            raise bad("min-available-nodes", f"must be >= 1, got {self.min_available_nodes}")
        for key in (
            "lr",
            "local_epochs",
            "batch_size",
            "proximal_mu",
            "server_lr",
            "num_partitions",
        ):
            if getattr(self, key) < 0:
                raise bad(key.replace("_", "-"), f"must be >= 0, got {getattr(self, key)}")
        try:
            get_task(self.task)
        except ValueError as err:
            raise bad("task", str(err)) from None

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunSettings:
        """Build from a run config; unknown keys are refused so typos do not pass silently."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in run_config.items():
            name = key.replace("-", "_")
            if name not in known:
                raise RunConfigError(
                    key,
                    "unknown key; known keys: "
                    + ", ".join(sorted(k.replace("_", "-") for k in known)),
                )
            kind = type(known[name].default)
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise RunConfigError(key, f"expected {kind.__name__}, got {value!r}")
            values[name] = value
        return cls(**values)
