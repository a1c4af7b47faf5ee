"""Simulated Byzantine clients for robustness experiments (simulation only).

Also the simulated dropout of ``dropout-rate`` of the clients each round (they raise
:class:`SimulatedDropout` after training, so they never upload). The first
``malicious-fraction`` of partitions replace their update: ``scale`` multiplies it by
``attack-scale``; ``sign-flip`` sends ``-attack-scale`` times it (the sign-flipping attack of
Damaskinos et al. / Allen-Zhu et al., as used to evaluate Krum and trimmed mean). The server's
round config says who attacks, so a run is reproducible; deployed clients built with the plain
SDK ignore these keys.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Context

from client_sdk import partition_id_of

ATTACKS = ("", "scale", "sign-flip")


class SimulatedDropout(RuntimeError):
    """A simulated client vanishing after it trained (for secure aggregation: after sharing
    its keys, before its masked upload)."""


def drops_out(seed: int, server_round: int, partition_id: int, rate: float) -> bool:
    """Whether this client vanishes this round: a seeded draw, the same in every engine."""
    if rate <= 0:
        return False
    return bool(np.random.default_rng([seed, server_round, partition_id + 1, 7]).random() < rate)


def is_malicious(partition_id: int, num_partitions: int, fraction: float) -> bool:
    return 0 <= partition_id < int(round(fraction * num_partitions))


def simulated_attack(
    delta: dict[str, np.ndarray], context: Context, config: ConfigRecord
) -> dict[str, np.ndarray]:
    rate = float(config.get("dropout-rate", 0.0))
    pid = partition_id_of(context)
    if drops_out(int(config.get("seed", 0)), int(config.get("server-round", 0)), pid, rate):
        raise SimulatedDropout(f"partition {pid} dropped out (simulated, dropout-rate {rate})")
    attack = str(config.get("attack", ""))
    fraction = float(config.get("malicious-fraction", 0.0))
    if not attack or fraction <= 0:
        return delta
    num = int(context.node_config.get("num-partitions", config.get("num-partitions", 0)))
    if not is_malicious(partition_id_of(context), num, fraction):
        return delta
    scale = float(config.get("attack-scale", 10.0))
    factor = np.float32(-scale if attack == "sign-flip" else scale)
    return {name: (value * factor).astype(np.float32) for name, value in delta.items()}
