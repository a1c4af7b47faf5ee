"""Flower's own strategies, by name, wrapped to consume Pollen wire payloads."""

from __future__ import annotations

from dataclasses import dataclass, field

from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    Strategy,
)

from strategies.compression import CompressionSettings
from strategies.sampling import SeededSampler
from strategies.secagg import SecAggSettings
from strategies.validation import ReplyLimits
from strategies.wire_adapter import WireStrategy

STRATEGY_NAMES = (
    "fedavg",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedmedian",
    "fedtrimmedavg",
    "krum",
    "multikrum",
)
# Robust aggregators look at individual updates (so they cannot run under secure aggregation).
ROBUST_STRATEGIES = ("fedmedian", "fedtrimmedavg", "krum", "multikrum")
# What secure aggregation can feed: strategies that need only the (weighted) sum of updates.
SUM_STRATEGIES = tuple(name for name in STRATEGY_NAMES if name not in ROBUST_STRATEGIES)


class UnknownStrategy(ValueError):
    """The strategy name is not one Pollen wires up."""


@dataclass(frozen=True, kw_only=True)
class StrategySettings:
    """Options shared by every strategy; FedProx/FedOpt read their own fields."""

    name: str = "fedavg"
    fraction_train: float = 1.0
    fraction_evaluate: float = 0.0
    min_train_nodes: int = 1
    min_evaluate_nodes: int = 1
    min_available_nodes: int = 1
    seed: int = 0
    proximal_mu: float = 0.01  # FedProx (Li et al. 2020)
    server_lr: float = 0.1  # FedAdam/FedYogi eta (Reddi et al., ICLR 2021)
    client_lr: float = 0.1  # FedAdam/FedYogi eta_l, reported to clients by Flower
    tau: float = 1e-3  # FedAdam/FedYogi adaptivity
    trim_beta: float = 0.2  # FedTrimmedAvg: fraction cut at each end (Yin et al., ICML 2018)
    num_malicious: int = 0  # Krum/MultiKrum: assumed Byzantine clients (Blanchard et al. 2017)
    multikrum_select: int = 0  # MultiKrum: lowest-score updates averaged (0: one, i.e. Krum)
    clip_norm: float = 0.0  # clip each client's update to this L2 norm (0: off)
    compression: CompressionSettings = field(default_factory=CompressionSettings)
    secure: SecAggSettings | None = None  # SecAgg+: the server sees only the sum of updates
    limits: ReplyLimits = field(default_factory=ReplyLimits)  # what one reply may hold


def _inner(settings: StrategySettings) -> Strategy:
    # The adapter samples (and skips evaluation when its fraction is 0); the wrapped strategy
    # takes every node it is shown.
    common = {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1,
        "min_available_nodes": 1,
    }
    name = settings.name.lower()
    if name == "fedavg":
        return FedAvg(**common)
    if name == "fedprox":
        return FedProx(**common, proximal_mu=settings.proximal_mu)
    if name in ("fedadam", "fedyogi"):
        cls = FedAdam if name == "fedadam" else FedYogi
        return cls(**common, eta=settings.server_lr, eta_l=settings.client_lr, tau=settings.tau)
    if name == "fedmedian":
        return FedMedian(**common)
    if name == "fedtrimmedavg":
        return FedTrimmedAvg(**common, beta=settings.trim_beta)
    if name == "krum":
        return Krum(**common, num_malicious_nodes=settings.num_malicious)
    if name == "multikrum":
        return MultiKrum(
            **common,
            num_malicious_nodes=settings.num_malicious,
            num_nodes_to_select=settings.multikrum_select or 1,
        )
    raise UnknownStrategy(
        f"unknown strategy {settings.name!r}; choose one of: {', '.join(STRATEGY_NAMES)}"
    )


def build_strategy(settings: StrategySettings) -> WireStrategy:
    """The named Flower strategy inside Pollen's wire adapter."""
    return WireStrategy(
        _inner(settings),
        sampler=SeededSampler(seed=settings.seed, min_available=settings.min_available_nodes),
        fraction_train=settings.fraction_train,
        fraction_evaluate=settings.fraction_evaluate,
        min_train_nodes=settings.min_train_nodes,
        min_evaluate_nodes=settings.min_evaluate_nodes,
        compression=settings.compression,
        clip_norm=settings.clip_norm,
        secure=settings.secure,
        limits=settings.limits,
    )
