"""Simulation-only settings: the engine and the simulated devices, each declared once.

Like the server's sections (:mod:`server.sections`), each field comes from
:func:`server.schema.setting`, so ``pollen simulate``'s flags and ``pollen.simulate``'s keywords
derive from here. They are not run-config keys and never reach a device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from client_sdk.tasks import natural_partition
from server import RunSettings
from server.schema import (
    Section,
    SettingError,
    at_least,
    check_fields,
    one_of,
    setting,
    settings_of,
    within,
)
from simulations.heterogeneity import Heterogeneity, HeterogeneityError, load_tiers
from simulations.partitioners import PartitionError, parse_partition

ENGINES = ("auto", "flower", "batched")


def _cpus(value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"must be a finite number > 0, got {value}")


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

    run: RunSettings = field(default_factory=RunSettings)
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
