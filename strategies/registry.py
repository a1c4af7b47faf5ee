"""Flower's own strategies, by name, wrapped to consume Pollen wire payloads."""

from __future__ import annotations

from dataclasses import dataclass, field

from flwr.serverapp.strategy import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    QFedAvg,
    Strategy,
)

from strategies.aggregators import needs_only_mean
from strategies.compression import CompressionSettings
from strategies.privacy.central import CentralDp
from strategies.privacy.distributed import DistributedDp
from strategies.privacy.local import LocalDp
from strategies.replies import LOSS
from strategies.sampling import PoissonSampler, SeededSampler
from strategies.schedules import LrSchedule, MetricsAggregation, RoundHooks
from strategies.secagg import SecAggSettings
from strategies.validation import ReplyLimits
from strategies.wire_adapter import WireStrategy

# Each name's Flower strategy. Whether it needs only the weighted mean (so that secure
# aggregation and pooled uploads can feed it) is a capability of its class, decided once in
# strategies.aggregators.needs_only_mean; the lists below derive from it.
STRATEGY_CLASSES: dict[str, type[Strategy]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
    "fedavgm": FedAvgM,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
    "krum": Krum,
    "multikrum": MultiKrum,
    "bulyan": Bulyan,
    "qfedavg": QFedAvg,
}
STRATEGY_NAMES = tuple(STRATEGY_CLASSES)
# What secure aggregation can feed: strategies that need only the (weighted) sum of updates.
SUM_STRATEGIES = tuple(n for n, cls in STRATEGY_CLASSES.items() if needs_only_mean(cls))
# Strategies that read each update (robust aggregators, and q-FFL's loss-weighted updates).
PER_UPDATE_STRATEGIES = tuple(n for n in STRATEGY_NAMES if n not in SUM_STRATEGIES)


class UnknownStrategy(ValueError):
    """The strategy name is not one Pollen wires up."""


@dataclass(frozen=True, kw_only=True)
class StrategySettings:
    """Options shared by every strategy; FedProx/FedOpt read their own fields. The defaults of
    the options a run sets are declared here once: the run's settings (``server.sections``
    StrategySection) take theirs from this class, as the codec settings take CodecSpec's."""

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
    server_momentum: float = 0.9  # FedAvgM's server momentum (Hsu et al. 2019)
    qffl_q: float = 0.1  # q-FFL's fairness exponent (Li et al., ICLR 2020)
    secure: SecAggSettings | None = None  # SecAgg+: the server sees only the sum of updates
    privacy: CentralDp | LocalDp | DistributedDp | None = None  # DP (strategies.privacy)
    limits: ReplyLimits = field(default_factory=ReplyLimits)  # what one reply may hold
    lr_schedule: LrSchedule = field(default_factory=LrSchedule)  # per-round client lr
    num_rounds: int = 0  # planned rounds (a cosine schedule anneals over them)
    # any Flower Message-API strategy object, used instead of ``name`` (Python API only)
    inner: Strategy | None = None
    # (each reply's metrics, their weights) -> aggregated metrics (default: weighted mean)
    train_metrics_aggr_fn: MetricsAggregation | None = None
    evaluate_metrics_aggr_fn: MetricsAggregation | None = None


_SAMPLE_ALL = {
    "fraction_train": 1.0,
    "fraction_evaluate": 1.0,
    "min_train_nodes": 1,
    "min_evaluate_nodes": 1,
    "min_available_nodes": 1,
}


def _options(settings: StrategySettings) -> dict[str, dict]:
    """Each strategy's own constructor options (the others take Flower's defaults)."""
    fedopt = {"eta": settings.server_lr, "eta_l": settings.client_lr, "tau": settings.tau}
    return {
        "fedprox": {"proximal_mu": settings.proximal_mu},  # Li et al. 2020
        "fedadam": fedopt,  # FedAdam/FedYogi/FedAdagrad: Reddi et al., ICLR 2021
        "fedyogi": fedopt,
        "fedadagrad": fedopt,
        "fedavgm": {  # Hsu et al. 2019: server momentum on the averaged update
            "server_learning_rate": settings.server_lr,
            "server_momentum": settings.server_momentum,
        },
        "bulyan": {"num_malicious_nodes": settings.num_malicious},  # El Mhamdi et al., ICML 2018
        "qfedavg": {  # Li et al., ICLR 2020 (q-FFL): fairer across clients
            "client_learning_rate": settings.client_lr,
            "q": settings.qffl_q,
            "train_loss_key": LOSS,
        },
        "fedtrimmedavg": {"beta": settings.trim_beta},  # Yin et al., ICML 2018
        "krum": {"num_malicious_nodes": settings.num_malicious},  # Blanchard et al. 2017
        "multikrum": {
            "num_malicious_nodes": settings.num_malicious,
            "num_nodes_to_select": settings.multikrum_select or 1,
        },
    }


def _inner(settings: StrategySettings) -> Strategy:
    # The adapter samples (and skips evaluation when its fraction is 0); the wrapped strategy
    # takes every node it is shown.
    name = settings.name.lower()
    if name not in STRATEGY_CLASSES:
        raise UnknownStrategy(
            f"unknown strategy {settings.name!r}; choose one of: {', '.join(STRATEGY_NAMES)}"
        )
    return STRATEGY_CLASSES[name](**_SAMPLE_ALL, **_options(settings).get(name, {}))


def _takes_every_node(inner: Strategy) -> Strategy:
    """A strategy object given by the user, set to take every node the adapter shows it (the
    adapter samples reproducibly; Flower's own sampling would wait for its minimums)."""
    for name, value in _SAMPLE_ALL.items():
        if hasattr(inner, name):
            setattr(inner, name, value)
    return inner


def sampler_for(privacy: object, *, seed: int, min_available: int) -> SeededSampler:
    """Poisson sampling at the accounted rate when central DP is accounted for it (its plan
    says so), else fixed-size: the sampler and the accountant read the same setting."""
    if isinstance(privacy, CentralDp) and privacy.plan.sampling == "poisson":
        return PoissonSampler(seed=seed, min_available=min_available, rate=privacy.plan.rate)
    return SeededSampler(seed=seed, min_available=min_available)


def build_strategy(settings: StrategySettings) -> WireStrategy:
    """The named Flower strategy (or ``settings.inner``) inside Pollen's wire adapter."""
    return WireStrategy(
        _takes_every_node(settings.inner) if settings.inner is not None else _inner(settings),
        sampler=sampler_for(
            settings.privacy, seed=settings.seed, min_available=settings.min_available_nodes
        ),
        fraction_train=settings.fraction_train,
        fraction_evaluate=settings.fraction_evaluate,
        min_train_nodes=settings.min_train_nodes,
        min_evaluate_nodes=settings.min_evaluate_nodes,
        compression=settings.compression,
        clip_norm=settings.clip_norm,
        secure=settings.secure,
        privacy=settings.privacy,
        limits=settings.limits,
        hooks=RoundHooks(
            client_lr=settings.client_lr,
            lr_schedule=settings.lr_schedule,
            num_rounds=settings.num_rounds,
            train_metrics_aggr_fn=settings.train_metrics_aggr_fn,
            evaluate_metrics_aggr_fn=settings.evaluate_metrics_aggr_fn,
        ),
    )
