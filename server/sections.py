"""The sections of a run's settings; :class:`server.config.RunSettings` is made of them.

Each setting is declared once here (:func:`server.schema.setting`): its key, type, default, help
and check. Checks across the fields of one section are methods of that section.
"""

from __future__ import annotations

from dataclasses import dataclass

from client_sdk.tasks import get_task
from server.schema import Section, SettingError, above, at_least, one_of, setting, within
from strategies import (
    STRATEGY_NAMES,
    SUM_STRATEGIES,
    PruningSchedule,
    SecAggSettings,
    StrategySettings,
)
from strategies.privacy.accounting import MAX_ROUNDS
from strategies.schedules import parse_schedule
from wire import CodecSpec
from wire.codec import SCALES, SCHEMES
from wire.secagg_vector import SecAggVectorSpec

MAX_SEED = 2**31 - 1
MAX_BATCH_SIZE = 2**20
MAX_EPOCHS = 10_000  # local epochs a client runs in a round
_CODEC = CodecSpec()  # the codec's own defaults are the settings' defaults
_STRATEGY = StrategySettings()  # and the strategies' own defaults for their options


def _strategy_name(value: str) -> None:
    if value.lower() not in STRATEGY_NAMES:
        raise ValueError(f"{value!r} is not one of {', '.join(STRATEGY_NAMES)}")


def _batch_size(value: int) -> None:
    at_least(0)(value)
    if value > MAX_BATCH_SIZE:  # engines size buffers by it before clipping to data
        raise ValueError(f"must be at most {MAX_BATCH_SIZE}, got {value}")


def _download_bits(value: int) -> None:
    if value not in (0, 8):
        raise ValueError(f"must be 0 (float32) or 8, got {value}")


@dataclass(frozen=True, kw_only=True)
class TaskSection(Section):
    """What is trained, from which seed, where the run's files go."""

    task: str = setting(
        "digits",
        "Built-in digits | synthetic[:ALPHA,BETA] | tutorial-cnn[:SAMPLES], or your own "
        "Task: package.module:attr or path/to/file.py:attr.",
        check=get_task,
    )
    seed: int = setting(
        0,
        "Seed for init, partition, sampling and local shuffling.",
        check=within(0, MAX_SEED),  # torch.manual_seed takes seed-derived int64s
    )
    num_partitions: int = setting(
        0,
        "Partitions of the data (0: the nodes connected at the start).",
        check=at_least(0),
        flag="",
    )
    out_dir: str = setting(
        "", "Run folder (default: $POLLEN_HOME/runs/<run id>, ~/.pollen).", flag=""
    )
    resume: bool = setting(False, "Continue the run in --out from its checkpoint.")
    lr: float = setting(0.0, "Client learning rate (0: the Task's).", check=at_least(0))
    local_epochs: int = setting(0, "Local epochs (0: the Task's).", check=within(0, MAX_EPOCHS))
    batch_size: int = setting(0, "Local batch size (0: the Task's).", check=_batch_size)
    lr_schedule: str = setting(
        "constant",
        "Clients' lr by round: constant | cosine | step:EVERY:GAMMA | exp:GAMMA.",
        check=parse_schedule,
    )


@dataclass(frozen=True, kw_only=True)
class StrategySection(Section):
    """Rounds, client sampling and the server's strategy."""

    num_server_rounds: int = setting(
        3, "Federated rounds.", check=within(1, MAX_ROUNDS), flag="--rounds", cli_default=30
    )
    strategy: str = setting(
        "fedavg",
        "fedavg | fedprox | fedadam | fedyogi | fedadagrad | fedavgm | fedmedian | "
        "fedtrimmedavg | krum | multikrum | bulyan | qfedavg",
        check=_strategy_name,
    )
    fraction_train: float = setting(
        _STRATEGY.fraction_train,
        "Fraction of clients trained each round, in (0, 1].",
        check=within(0, 1, low_open=True),
        flag="--fraction",
    )
    fraction_evaluate: float = setting(
        _STRATEGY.fraction_evaluate, "Fraction of clients for federated eval.", check=within(0, 1)
    )
    min_available_nodes: int = setting(
        2, "Nodes to wait for before the first round.", check=at_least(1), flag=""
    )
    round_timeout: float = setting(
        600.0, "Seconds a round waits for replies; late or dead nodes are cut.", check=above(0)
    )
    proximal_mu: float = setting(
        _STRATEGY.proximal_mu, "FedProx proximal term mu.", check=at_least(0)
    )
    server_lr: float = setting(
        _STRATEGY.server_lr,
        "FedAdam/FedYogi/FedAdagrad eta; FedAvgM server learning rate.",
        check=at_least(0),
    )
    server_momentum: float = setting(
        _STRATEGY.server_momentum, "FedAvgM server momentum.", check=within(0, 1, high_open=True)
    )
    qffl_q: float = setting(
        _STRATEGY.qffl_q, "QFedAvg (q-FFL) fairness exponent q.", check=within(0, 100)
    )
    trim_beta: float = setting(
        _STRATEGY.trim_beta,
        "FedTrimmedAvg: fraction cut at each end.",
        check=within(0, 0.5, high_open=True),
    )
    num_malicious: int = setting(
        _STRATEGY.num_malicious,
        "Krum/MultiKrum/Bulyan: assumed malicious clients.",
        check=at_least(0),
    )
    multikrum_select: int = setting(
        _STRATEGY.multikrum_select, "MultiKrum: updates averaged (0: one).", check=at_least(0)
    )
    clip_norm: float = setting(
        _STRATEGY.clip_norm, "Clip each client update to this L2 norm.", check=at_least(0)
    )


@dataclass(frozen=True, kw_only=True)
class CompressionSection(Section):
    """Pruning, update compression and the download (see strategies.compression, wire)."""

    prune: float = setting(
        0.0,
        "Final sparsity of the shared pruning mask (0: off).",
        check=lambda v: PruningSchedule(final_sparsity=v),
    )
    prune_schedule: str = setting(
        "cubic",
        "cubic (Zhu & Gupta) | linear | constant",
        check=lambda v: PruningSchedule(final_sparsity=0.0, kind=v),
    )
    prune_scope: str = setting(
        "layer",
        "layer | global magnitude pruning",
        check=lambda v: PruningSchedule(final_sparsity=0.0, scope=v),
    )
    prune_initial: float = setting(0.0, "Sparsity at --prune-start-round.", check=at_least(0))
    prune_start_round: int = setting(1, "Round the sparsity ramp starts.", check=at_least(1))
    prune_end_round: int = setting(
        0, "Round the final sparsity is reached (0: half).", check=at_least(0)
    )
    quant_bits: int = setting(
        _CODEC.quant_bits,
        "Update quantization bits: 1, 2, 4, 8 (0: float32).",
        check=lambda v: CodecSpec(quant_bits=v),
    )
    quant_chunk: int = setting(
        _CODEC.quant_chunk,
        "Values per quantization range.",
        check=lambda v: CodecSpec(quant_chunk=v),
    )
    quant_rounding: str = setting(
        "stochastic", "stochastic (unbiased) | nearest", check=one_of("stochastic", "nearest")
    )
    topk: float = setting(
        _CODEC.topk,
        "Send only this fraction of coordinates (0: dense).",
        check=lambda v: CodecSpec(topk=v),
    )
    quant_scheme: str = setting(
        _CODEC.scheme,
        "uniform (min, max) | eden (EDEN/DRIVE, with --rotate) | sign (EF-signSGD).",
        check=one_of(*SCHEMES),
    )
    eden_scale: str = setting(
        _CODEC.eden_scale, "eden: unbiased | mse (biased; with EF).", check=one_of(*SCALES)
    )
    rotate: str = setting(
        _CODEC.rotate,
        "Randomized Hadamard rotation: none|client|shared.",
        check=lambda v: CodecSpec(rotate=v),
    )
    rotate_block: int = setting(
        _CODEC.rotate_block,
        "Values per Hadamard block (a power of two).",
        check=lambda v: CodecSpec(rotate_block=v),
    )
    quant_fraction: float = setting(
        _CODEC.quant_fraction,
        "Fraction of rotated values sent (eden, rotate client; 1: all).",
        check=within(0, 1, low_open=True),
    )
    error_feedback: bool = setting(False, "Carry the compression residual over.")
    qat: bool = setting(False, "Train with fake-quantized int8 weights.")
    download_bits: int = setting(
        0, "Global model download: 0 float32, 8 bits.", check=_download_bits
    )
    freeze: str = setting("", "Comma-separated parameter prefixes to keep frozen.")

    def _check_compression(self) -> None:
        """Checks across fields, each naming the field it adds to the ones already checked."""
        codec = {"quant_bits": self.quant_bits}
        for key, name, value in (
            ("quant-scheme", "scheme", self.quant_scheme),
            ("eden-scale", "eden_scale", self.eden_scale),
            ("rotate", "rotate", self.rotate),
            ("topk", "topk", self.topk),
            ("quant-fraction", "quant_fraction", self.quant_fraction),
        ):
            codec[name] = value
            try:
                CodecSpec(**codec)
            except ValueError as err:
                raise SettingError(key, str(err)) from None
        if self.prune > 0:
            try:
                PruningSchedule(final_sparsity=self.prune, initial_sparsity=self.prune_initial)
            except ValueError as err:
                raise SettingError("prune-initial", str(err)) from None


@dataclass(frozen=True, kw_only=True)
class SecureSection(Section):
    """Secure aggregation (SecAgg+; see strategies.secagg, client_sdk.secagg)."""

    secure_agg: bool = setting(
        False, "SecAgg+: the server learns only the sum of the (quantized) updates."
    )
    secagg_degree: int = setting(0, "Neighbours (0: up to 24, 3 log2 N above).", check=at_least(0))
    secagg_threshold: int = setting(
        0, "Shares to rebuild a secret (0: degree/2+1).", check=at_least(0)
    )
    secagg_bits: int = setting(8, "Secure-aggregation quantization bits (1-16).")
    secagg_clip: float = setting(1.0, "Clip update coordinates to [-clip, clip].")
    secagg_max_weight: int = setting(256, "A client's weight is min(num-examples, this).")
    secagg_share_metrics: bool = setting(
        False, "Masked uploads also carry train-loss, partition-id... in the clear."
    )

    def _check_secure(self, strategy: str) -> None:
        if not self.secure_agg:
            return
        if strategy.lower() not in SUM_STRATEGIES:
            raise SettingError(
                "strategy",
                f"{strategy} needs each client's update, but secure aggregation reveals only "
                f"their sum: use one of {', '.join(SUM_STRATEGIES)} with secure-agg",
            )
        checks = (
            ("secagg-bits", lambda: SecAggVectorSpec(bits=self.secagg_bits)),
            ("secagg-clip", lambda: SecAggVectorSpec(clip=self.secagg_clip)),
            ("secagg-max-weight", lambda: SecAggVectorSpec(max_weight=self.secagg_max_weight)),
            (
                "secagg-threshold" if self.secagg_threshold else "secagg-degree",
                lambda: (
                    self.secagg_degree
                    and SecAggSettings(
                        degree=self.secagg_degree, threshold=self.secagg_threshold
                    ).graph(self.secagg_degree + 1)
                ),
            ),
            (
                "secagg-bits",
                lambda: SecAggVectorSpec(
                    bits=self.secagg_bits,
                    clip=self.secagg_clip,
                    max_weight=self.secagg_max_weight,
                ),
            ),
        )
        for key, check in checks:
            try:
                check()
            except ValueError as err:
                raise SettingError(key, str(err)) from None


@dataclass(frozen=True, kw_only=True)
class LimitsSection(Section):
    """What the server accepts from a client (see strategies.validation)."""

    max_update_value: float = setting(
        1e6, "Refuse a client update with a coordinate beyond this (out-of-bounds).", check=above(0)
    )
    max_num_examples: int = setting(
        1_000_000_000,
        "Refuse a reply claiming more examples than this (bad-weight).",
        check=at_least(1),
    )
    max_failed_rounds: int = setting(
        3,
        "Stop after this many rounds in a row with no accepted update (0: never).",
        check=at_least(0),
    )
