"""Simulated Byzantine clients for robustness experiments (simulation only).

Also the simulated dropout of ``dropout-rate`` of the clients each round (they raise
:class:`SimulatedDropout` after training, so they never upload). The first
``malicious-fraction`` of partitions replace their update: ``scale`` multiplies it by
``attack-scale``; ``sign-flip`` sends ``-attack-scale`` times it (the sign-flipping attack of
Damaskinos et al. / Allen-Zhu et al., as used to evaluate Krum and trimmed mean). Who attacks
follows from the seed and the partition id, so a run is reproducible. These settings never travel
to devices: the simulation's own ClientApp gets them from its run (:func:`attack_hook`) or, under
``flwr run``, from the run config every ClientApp of the run sees
(:func:`simulations.settings.simulated_clients`).
"""

from __future__ import annotations

from functools import partial

import numpy as np
from flwr.app import ConfigRecord, Context

from client_sdk import UpdateHook, partition_id_of
from simulations.settings import SimulatedClientsSection, simulated_clients
from wire import keys


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


def attack_hook(simulated: SimulatedClientsSection) -> UpdateHook | None:
    """The update hook of a run that simulates attackers or dropouts (else None: without a hook
    the batched engine encodes uncompressed updates on its vectorized path)."""
    if not (simulated.attack or simulated.dropout_rate):
        return None
    return partial(simulated_attack, simulated=simulated)


def simulated_attack(
    delta: dict[str, np.ndarray],
    context: Context,
    config: ConfigRecord,
    simulated: SimulatedClientsSection | None = None,
) -> dict[str, np.ndarray]:
    """Drop out (raise :class:`SimulatedDropout`) or replace ``delta`` as ``simulated`` says
    (default: :func:`simulated_clients` of this node's run config)."""
    s = simulated if simulated is not None else simulated_clients(context)
    pid = partition_id_of(context)
    seed, server_round = int(config.get(keys.SEED, 0)), int(config.get(keys.SERVER_ROUND, 0))
    if drops_out(seed, server_round, pid, s.dropout_rate):
        raise SimulatedDropout(
            f"partition {pid} dropped out (simulated, dropout-rate {s.dropout_rate})"
        )
    if not s.attack or s.malicious_fraction <= 0:
        return delta
    num = context.node_config.get(keys.NUM_PARTITIONS, config.get(keys.NUM_PARTITIONS, 0))
    if not is_malicious(pid, int(num), s.malicious_fraction):
        return delta
    factor = np.float32(-s.attack_scale if s.attack == "sign-flip" else s.attack_scale)
    return {name: (value * factor).astype(np.float32) for name, value in delta.items()}
