"""Simulated Byzantine clients for robustness experiments (simulation only).

The first ``malicious-fraction`` of partitions replace their update: ``scale`` multiplies it by
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


def is_malicious(partition_id: int, num_partitions: int, fraction: float) -> bool:
    return 0 <= partition_id < int(round(fraction * num_partitions))


def simulated_attack(
    delta: dict[str, np.ndarray], context: Context, config: ConfigRecord
) -> dict[str, np.ndarray]:
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
