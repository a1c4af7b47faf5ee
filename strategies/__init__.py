"""Flower strategy adapters that decode Pollen wire payloads (numpy; never torch)."""

from strategies.aggregators import Aggregator, UpdateAggregator, aggregator_for, needs_only_mean
from strategies.compression import CompressionSettings
from strategies.pruning import PruningConfigError, PruningSchedule, magnitude_masks, prunable_names
from strategies.registry import (
    STRATEGY_NAMES,
    SUM_STRATEGIES,
    StrategySettings,
    UnknownStrategy,
    build_strategy,
)
from strategies.sampling import FixedNodesGrid, SeededSampler
from strategies.secagg import SecAggFailed, SecAggSession, SecAggSettings
from strategies.stats import Rejection, RoundStats, stall_reason
from strategies.validation import ReplyLimits
from strategies.wire_adapter import WireStrategy

__all__ = [
    "Aggregator",
    "UpdateAggregator",
    "aggregator_for",
    "needs_only_mean",
    "CompressionSettings",
    "PruningConfigError",
    "PruningSchedule",
    "magnitude_masks",
    "prunable_names",
    "STRATEGY_NAMES",
    "SUM_STRATEGIES",
    "SecAggFailed",
    "SecAggSession",
    "SecAggSettings",
    "FixedNodesGrid",
    "Rejection",
    "ReplyLimits",
    "RoundStats",
    "SeededSampler",
    "StrategySettings",
    "UnknownStrategy",
    "WireStrategy",
    "build_strategy",
    "stall_reason",
]
