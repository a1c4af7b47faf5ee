"""Run settings of the ServerApp, read from Flower's run config (``[tool.flwr.app.config]``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from client_sdk.tasks import get_task
from strategies import (
    STRATEGY_NAMES,
    SUM_STRATEGIES,
    CompressionSettings,
    PruningConfigError,
    PruningSchedule,
    SecAggSettings,
)
from strategies.schedules import ScheduleError, parse_schedule
from wire import CodecConfigError, CodecSpec
from wire.secagg_vector import SecAggVectorSpec


def _secagg_key(message: str) -> str:
    for key in ("threshold", "bits", "clip", "max-weight"):
        if key.replace("-", "_") in message or key in message:
            return key
    return "degree"


class RunConfigError(ValueError):
    """A run-config key has a value the server cannot use; the message names the key."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"run config {key}: {why}")
        self.key = key
        self.why = why


# A simulated attacker scales its update at most this much: larger factors only overflow float32
# (1e38 gives Inf) and say nothing more about a robust strategy.
MAX_ATTACK_SCALE = 1e6
MAX_SEED = 2**31 - 1
MAX_BATCH_SIZE = 2**20
# a codec error names its key; "rotate-block" before "rotate", "quant-scheme" before "quant-bits"
_CODEC_KEYS = (
    "quant-scheme",
    "eden-scale",
    "rotate-block",
    "rotate",
    "quant-bits",
    "quant-chunk",
    "topk",
)
_PRUNE_KEYS = ("prune-initial", "prune-start-round", "prune-schedule", "prune-scope", "prune")


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
    resume: bool = False  # continue from out-dir's checkpoint.npz if there is one
    round_timeout: float = 600.0  # seconds a round waits for replies; late or dead nodes are cut
    # ---- simulated attacks (simulation ClientApp only; see simulations.attacks)
    attack: str = ""  # "" | scale | sign-flip
    malicious_fraction: float = 0.0
    attack_scale: float = 10.0
    lr: float = 0.0  # 0: the Task's own learning rate
    local_epochs: int = 0  # 0: the Task's own
    batch_size: int = 0  # 0: the Task's own
    proximal_mu: float = 0.01  # FedProx only
    server_lr: float = 0.1  # FedAdam/FedYogi/FedAdagrad eta, FedAvgM's server learning rate
    server_momentum: float = 0.9  # FedAvgM only
    qffl_q: float = 0.1  # QFedAvg (q-FFL) only: larger q favours the worse-off clients
    lr_schedule: str = "constant"  # clients' lr by round: constant | cosine | step:N:G | exp:G
    trim_beta: float = 0.2  # FedTrimmedAvg only: fraction trimmed at each end
    num_malicious: int = 0  # Krum/MultiKrum only
    multikrum_select: int = 0  # MultiKrum only (0: one)
    clip_norm: float = 0.0  # clip each update to this L2 norm; 0: off
    # ---- compression (see strategies.compression / wire stages)
    prune: float = 0.0  # final sparsity of the shared pruning mask; 0: no pruning
    prune_schedule: str = "cubic"  # cubic (Zhu & Gupta 2017) | linear | constant
    prune_scope: str = "layer"  # layer | global
    prune_initial: float = 0.0
    prune_start_round: int = 1
    prune_end_round: int = 0  # 0: half of num-server-rounds
    quant_bits: int = 0  # 0: float32 updates; 1, 2, 4 or 8 bits
    quant_chunk: int = 1024
    quant_rounding: str = "stochastic"  # stochastic | nearest
    topk: float = 0.0  # fraction of coordinates sent; 0: dense
    quant_scheme: str = "uniform"  # uniform (min, max) | eden (EDEN/DRIVE) | sign (EF-signSGD)
    eden_scale: str = "unbiased"  # eden: unbiased | mse (least error, biased: use error-feedback)
    rotate: str = "none"  # randomized Hadamard rotation: none | client | shared (one per round)
    rotate_block: int = 1024  # values per Hadamard block (a power of two)
    error_feedback: bool = False
    qat: bool = False
    download_bits: int = 0  # 0: float32 global model; 8: 8-bit download
    freeze: str = ""  # comma-separated parameter-name prefixes not trained nor sent
    # ---- secure aggregation (SecAgg+; see strategies.secagg, client_sdk.secagg)
    secure_agg: bool = False
    secagg_degree: int = 0  # neighbours per client; 0: min(N-1, max(24, 3 log2 N))
    secagg_threshold: int = 0  # shares needed to rebuild a secret; 0: half the degree + 1
    secagg_bits: int = 8  # quantization levels 2^bits - 1 on one shared grid
    secagg_clip: float = 1.0  # each update coordinate is clipped to [-clip, clip]
    secagg_max_weight: int = 256  # a client's weight is min(num-examples, this)
    secagg_share_metrics: bool = False  # masked uploads also carry train-loss, partition-id...
    dropout_rate: float = 0.0  # simulation: fraction of clients vanishing after key sharing
    # ---- what the server accepts from a client (see strategies.validation)
    max_update_value: float = 1e6  # a decoded update coordinate beyond this is refused
    max_num_examples: int = 1_000_000_000  # a reply claiming more examples is refused
    max_failed_rounds: int = 3  # abort after this many rounds in a row with no update; 0: never

    def __post_init__(self) -> None:
        self._check_types()
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
        if not 0 <= self.seed <= MAX_SEED:  # torch.manual_seed takes seed-derived int64s
            raise bad("seed", f"must be in [0, {MAX_SEED}], got {self.seed}")
        if self.batch_size > MAX_BATCH_SIZE:  # engines size buffers by it before clipping to data
            raise bad("batch-size", f"must be at most {MAX_BATCH_SIZE}, got {self.batch_size}")
        if self.attack not in ("", "scale", "sign-flip"):
            raise bad("attack", f"must be scale or sign-flip (or empty), got {self.attack!r}")
        if not 0 <= self.malicious_fraction < 1:
            raise bad("malicious-fraction", f"must be in [0, 1), got {self.malicious_fraction}")
        if not self.round_timeout > 0:
            raise bad("round-timeout", f"must be > 0 seconds, got {self.round_timeout}")
        if not 0 <= self.server_momentum < 1:
            raise bad("server-momentum", f"must be in [0, 1), got {self.server_momentum}")
        if not 0 <= self.qffl_q <= 100:
            raise bad("qffl-q", f"must be in [0, 100], got {self.qffl_q}")
        try:
            parse_schedule(self.lr_schedule)
        except ScheduleError as err:
            raise bad("lr-schedule", str(err)) from None
        if not 0 <= self.trim_beta < 0.5:
            raise bad("trim-beta", f"must be in [0, 0.5), got {self.trim_beta}")
        if not self.max_update_value > 0:
            raise bad("max-update-value", f"must be > 0, got {self.max_update_value}")
        if self.max_num_examples < 1:
            raise bad("max-num-examples", f"must be >= 1, got {self.max_num_examples}")
        if self.max_failed_rounds < 0:
            raise bad("max-failed-rounds", f"must be >= 0, got {self.max_failed_rounds}")
        for key in (
            "num_malicious",
            "multikrum_select",
            "clip_norm",
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
        if self.quant_rounding not in ("stochastic", "nearest"):
            raise bad(
                "quant-rounding", f"must be stochastic or nearest, got {self.quant_rounding!r}"
            )
        self._check_secure_agg()
        if self.download_bits not in (0, 8):
            raise bad("download-bits", f"must be 0 (float32) or 8, got {self.download_bits}")
        try:
            self.compression()
        except PruningConfigError as err:
            key = next((k for k in _PRUNE_KEYS if k in str(err)), "prune")
            raise bad(key, str(err)) from None
        except CodecConfigError as err:
            key = next((k for k in _CODEC_KEYS if k in str(err)), "quant-bits")
            raise bad(key, str(err)) from None

    def _check_types(self) -> None:
        """Each value has its field's type (bool is not an int here) and every float is finite:
        a NaN passes every ``<``/``>`` range check below, so it is refused first."""
        for spec in fields(self):
            value, kind = getattr(self, spec.name), type(spec.default)
            key = spec.name.replace("_", "-")
            if kind is float:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise RunConfigError(key, f"expected a number, got {value!r}")
                if not math.isfinite(value):
                    raise RunConfigError(key, f"must be a finite number, got {value}")
            elif kind in (int, str, bool) and (
                not isinstance(value, kind) or (kind is int and isinstance(value, bool))
            ):
                raise RunConfigError(key, f"expected {kind.__name__}, got {value!r}")
        if abs(self.attack_scale) > MAX_ATTACK_SCALE:
            raise RunConfigError(
                "attack-scale",
                f"must be in [-{MAX_ATTACK_SCALE:g}, {MAX_ATTACK_SCALE:g}], "
                f"got {self.attack_scale:g}",
            )

    def _check_secure_agg(self) -> None:
        bad = RunConfigError
        if not 0 <= self.dropout_rate < 1:
            raise bad("dropout-rate", f"must be in [0, 1), got {self.dropout_rate}")
        if not self.secure_agg:
            return
        if self.strategy.lower() not in SUM_STRATEGIES:
            raise bad(
                "strategy",
                f"{self.strategy} needs each client's update, but secure aggregation reveals only "
                f"their sum: use one of {', '.join(SUM_STRATEGIES)} with secure-agg",
            )
        for key, value in (("topk", self.topk), ("clip-norm", self.clip_norm)):
            if value:
                raise bad(key, "cannot be combined with secure-agg (individual updates needed)")
        if self.error_feedback:
            raise bad("error-feedback", "cannot be combined with secure-agg")
        if self.quant_bits:
            raise bad("quant-bits", "secure-agg quantizes by itself: set secagg-bits instead")
        if self.rotate == "client":
            raise bad("rotate", "secure-agg sums the uploads: use one rotation for all (shared)")
        try:
            if self.secagg_degree:
                self.secure_aggregation().graph(self.secagg_degree + 1)
            SecAggVectorSpec(
                bits=self.secagg_bits, clip=self.secagg_clip, max_weight=self.secagg_max_weight
            )
        except ValueError as err:
            raise bad("secagg-" + _secagg_key(str(err)), str(err)) from None

    def secure_aggregation(self) -> SecAggSettings | None:
        if not self.secure_agg:
            return None
        return SecAggSettings(
            degree=self.secagg_degree,
            threshold=self.secagg_threshold,
            bits=self.secagg_bits,
            clip=self.secagg_clip,
            max_weight=self.secagg_max_weight,
            timeout=self.round_timeout,
            share_metrics=self.secagg_share_metrics,
        )

    def compression(self) -> CompressionSettings:
        """The compression every client is asked for, and the server's pruning schedule."""
        pruning = None
        if self.prune > 0:
            end = self.prune_end_round or max(1, self.num_server_rounds // 2)
            pruning = PruningSchedule(
                final_sparsity=self.prune,
                initial_sparsity=self.prune_initial,
                start_round=self.prune_start_round,
                end_round=max(end, self.prune_start_round),
                kind=self.prune_schedule,  # type: ignore[arg-type]
                scope=self.prune_scope,  # type: ignore[arg-type]
            )
        return CompressionSettings(
            codec=CodecSpec(
                quant_bits=self.quant_bits,
                quant_chunk=self.quant_chunk,
                stochastic=self.quant_rounding == "stochastic",
                topk=self.topk,
                scheme=self.quant_scheme,
                eden_scale=self.eden_scale,
                rotate=self.rotate,
                rotate_block=self.rotate_block,
            ),
            pruning=pruning,
            error_feedback=self.error_feedback,
            qat=self.qat,
            download_bits=self.download_bits,
            frozen=tuple(p for p in self.freeze.split(",") if p),
        )

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
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
                raise RunConfigError(key, f"expected {kind.__name__}, got {value!r}")
            values[name] = value
        return cls(**values)
