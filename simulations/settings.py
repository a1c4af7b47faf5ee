"""Simulation-only settings: the simulated clients, the engine and devices, each declared once.

Like the server's sections (:mod:`server.sections`), each field comes from
:func:`server.schema.setting`, so ``pollen simulate``'s flags and ``pollen.simulate``'s keywords
derive from here. None of them reaches a device: the simulated clients' settings (partition,
attack, dropout) are run-config keys of the simulated App only (:class:`SimulationRunSettings`,
read by ``simulations.app:serverapp``; the simulation ClientApp reads them from its own run), and
the engine's and devices' are not run-config keys at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from flwr.app import Context

from client_sdk.tasks import natural_partition
from server import RunSettings
from server.schema import (
    Section,
    SettingError,
    at_least,
    check_fields,
    from_keys,
    one_of,
    setting,
    settings_of,
    within,
)
from simulations.heterogeneity import Heterogeneity, HeterogeneityError, load_tiers
from simulations.partitioners import PartitionError, parse_partition

ENGINES = ("auto", "flower", "batched")
# A simulated attacker scales its update at most this much: larger factors only overflow float32
# (1e38 gives Inf) and say nothing more about a robust strategy.
MAX_ATTACK_SCALE = 1e6


def _cpus(value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"must be a finite number > 0, got {value}")


@dataclass(frozen=True, kw_only=True)
class SimulatedClientsSection(Section):
    """What the simulation ClientApp does with its data and update (simulations.app/attacks)."""

    partition: str = setting(
        "dirichlet:0.5",
        "iid | dirichlet:ALPHA | shards:K | natural (default: dirichlet:0.5, or natural)",
        cli_default=None,
    )
    attack: str = setting(
        "",
        "Simulated attack: scale | sign-flip (default: none).",
        check=one_of("", "scale", "sign-flip"),
    )
    malicious_fraction: float = setting(
        0.0, "Fraction of clients that attack.", check=within(0, 1, high_open=True)
    )
    attack_scale: float = setting(
        10.0,
        "How much attackers scale their update.",
        check=within(-MAX_ATTACK_SCALE, MAX_ATTACK_SCALE),
    )
    dropout_rate: float = setting(
        0.0,
        "Fraction of clients that vanish each round after sharing keys.",
        check=within(0, 1, high_open=True),
    )


@dataclass(frozen=True, kw_only=True)
class SimulationRunSettings(SimulatedClientsSection, RunSettings):
    """The run config of a simulated App: the server's :class:`~server.RunSettings` and the
    simulated clients' settings, last (``simulations.app:serverapp`` reads it; the deployment
    ServerApp, ``server.app:app``, refuses these keys)."""


def simulated_clients(context: Context) -> SimulatedClientsSection:
    """The simulated-client settings of this node's run config (under ``flwr run``; defaults for
    the keys it lacks, e.g. in Flower's in-process engine, whose run config is empty)."""
    own = {entry.key for entry in settings_of(SimulatedClientsSection)}
    return from_keys(
        SimulatedClientsSection, {k: v for k, v in context.run_config.items() if k in own}
    )


@dataclass(frozen=True, kw_only=True)
class EngineSection(Section):
    """Which engine runs the virtual clients, on what."""

    clients: int = setting(
        50, "Number of virtual clients (SuperNodes).", check=at_least(1), run_config=False
    )
    engine: str = setting(
        "auto",
        "flower (Ray) | batched (K clients per vmapped kernel) | auto (batched on GPU)",
        check=one_of(*ENGINES),
        run_config=False,
    )
    device: str = setting("auto", "Batched engine device: auto | cpu | cuda[:N].", run_config=False)
    client_cpus: float = setting(
        1.0, "Flower's engine: Ray CPUs per client.", check=_cpus, run_config=False
    )
    client_gpus: float = setting(
        0.0, "Flower's engine: Ray GPU share per client.", check=within(0, 64), run_config=False
    )
    clients_per_batch: int = setting(
        0,
        "Batched engine: clients per kernel (0: planned from free memory).",
        check=at_least(0),
        run_config=False,
    )
    pool_uploads: bool = setting(
        True,
        "Batched engine: send each kernel's float32 updates as one weighted mean when the "
        "strategy needs only the mean (no-: one payload per client).",
        run_config=False,
    )


@dataclass(frozen=True, kw_only=True)
class DevicesSection(Section):
    """Simulated device heterogeneity (:mod:`simulations.heterogeneity`)."""

    device_tiers: str = setting(
        "",
        "Device tiers (compute, bandwidth): default | PATH.json (default: none).",
        run_config=False,
    )
    availability: float = setting(
        1.0, "Probability a client is online in a round.", run_config=False
    )
    deadline: float = setting(
        0.0, "Simulated seconds per round; later clients are dropped (0: none).", run_config=False
    )


SIMULATION_SECTIONS = (EngineSection, DevicesSection)


@dataclass(frozen=True, kw_only=True)
class SimulationSettings(DevicesSection, EngineSection):
    """One simulation: the server's run settings plus the engine and devices."""

    run: SimulationRunSettings = field(default_factory=SimulationRunSettings)
    out_dir: Path
    ray_logs: bool = False  # forward Ray workers' output (Flower's client logs) to this console

    def heterogeneity(self) -> Heterogeneity | None:
        """The device model, or None when every client is an always-online, equal device."""
        if not self.device_tiers and self.availability == 1.0 and not self.deadline:
            return None
        return Heterogeneity(
            tiers=load_tiers(self.device_tiers or "default"),
            availability=self.availability,
            deadline_s=self.deadline,
            seed=self.run.seed,
        )

    def __post_init__(self) -> None:
        try:
            check_fields(self)
        except SettingError as err:  # typed as before: heterogeneity or partition/engine
            devices = err.key in {entry.key for entry in settings_of(DevicesSection)}
            raise (HeterogeneityError if devices else PartitionError)(
                f"{err.key} {err.why}", err.key
            ) from None
        self.heterogeneity()  # refuse a bad tier file, availability or deadline now
        natural = natural_partition(self.run.task)
        spec = parse_partition(self.run.partition)
        if natural and spec is not None:
            raise PartitionError(
                f"task {self.run.task!r} has a natural partition; use partition 'natural'"
            )
        if not natural and spec is None:
            raise PartitionError(f"task {self.run.task!r} needs iid, dirichlet:ALPHA or shards:K")
