"""Let any Flower Message-API strategy consume Pollen wire payloads.

The adapter wraps a Flower strategy the way Flower's DP wrappers do: it samples clients
reproducibly, forwards ``configure_*`` to the wrapped strategy, and in ``aggregate_train``
validates and decodes each reply's payload into the ``ArrayRecord`` + ``MetricRecord`` shape the
wrapped strategy expects. A payload that fails validation is logged with its reason, counted,
and left out; the round goes on with the rest. Aggregation itself stays Flower's; for the
mean-based strategies the adapter hands it one reply holding the streamed weighted mean, so the
server keeps one model in memory instead of one per client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
    QFedAvg,
    Strategy,
)

from strategies.aggregation import StreamingMean, common_scalars, weighted_metrics
from strategies.compression import CompressionSettings
from strategies.decoding import RoundDecoder, quantized_download
from strategies.pooling import Pool, group_pools
from strategies.pruning import magnitude_masks, prunable_names
from strategies.replies import (
    WEIGHT_KEY,
    checked_evaluate_replies,
    checked_replies,
    reject,
    strip_adapter_metrics,
)
from strategies.sampling import FixedNodesGrid, SeededSampler
from strategies.schedules import RoundHooks
from strategies.secagg import SecAggFailed, SecAggSession, SecAggSettings, secure_mean_reply
from strategies.stats import RoundStats
from strategies.validation import (
    ReplyLimits,
    as_rejection,
    check_update,
    is_finite_model,
)
from wire import (
    MASK_FIELD,
    POOLING_CONFIG_KEY,
    MaskSet,
)
from wire.rotation import block_for, padded_length, unrotate
from wire.secagg_protocol import SECAGG_RECORD_KEY
from wire.secagg_vector import kept_count, unflatten_kept

log = logging.getLogger(__name__)

# Flower strategies whose aggregate_train is the weighted mean of the replies' arrays (then, for
# FedOpt, a server-optimizer step): the adapter streams the mean instead of holding every model.
_MEAN_STRATEGIES = (FedAvg, FedProx, FedAdam, FedYogi, FedAdagrad, FedAvgM)


class WireStrategy(Strategy):
    """Adapter: ``inner`` (FedAvg, FedProx, FedAdam, ...) aggregates decoded wire updates."""

    def __init__(
        self,
        inner: Strategy,
        *,
        sampler: SeededSampler,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 0.0,
        min_train_nodes: int = 1,
        min_evaluate_nodes: int = 1,
        compression: CompressionSettings | None = None,
        clip_norm: float = 0.0,
        secure: SecAggSettings | None = None,
        limits: ReplyLimits | None = None,
        hooks: RoundHooks | None = None,
    ) -> None:
        if secure is not None and type(inner) not in _MEAN_STRATEGIES:
            raise ValueError(
                f"secure aggregation reveals only the sum of updates, but {type(inner).__name__} "
                "needs each update (robust aggregation): use fedavg, fedprox, fedadam, fedyogi "
                "or fedadagrad with secure aggregation"
            )
        if secure is not None and clip_norm > 0:
            raise ValueError(
                "update-norm clipping needs each decoded update; with secure aggregation the "
                "clients clip each coordinate (secagg clip) instead"
            )
        self.inner = inner
        self.limits = limits or ReplyLimits()
        self.hooks = hooks or RoundHooks()
        self._decoder = RoundDecoder(reference={}, limits=self.limits)
        self.needs_mean_only = type(inner) in _MEAN_STRATEGIES
        self.secure = secure
        self._session: SecAggSession | None = None
        self.compression = compression or CompressionSettings()
        self.clip_norm = clip_norm
        # Rounds already done before a resume: Flower's loop counts from 1 again, and every
        # round-dependent choice (sampling, masks, client seeds, FedAdam's bias correction)
        # must see the true round.
        self.round_offset = 0
        self.sampler = sampler
        self.fraction_train = fraction_train
        self.fraction_evaluate = fraction_evaluate
        self.min_train_nodes = min_train_nodes
        self.min_evaluate_nodes = min_evaluate_nodes
        self.rounds: dict[int, RoundStats] = {}
        self.masks: MaskSet | None = None  # this round's pruning mask (the server owns it)
        self._reference: dict[str, np.ndarray] = {}  # the model clients start from this round
        self._rotation_seed: int | None = None  # this round's shared rotation, if any
        # Only the weighted mean is needed: a host running many clients may pool their updates.
        self.pooling = self.needs_mean_only and secure is None and not clip_norm > 0

    # ----------------------------------------------------------------- Strategy interface
    def summary(self) -> None:
        log.info(
            "Pollen wire adapter around %s: fraction train %.2f / evaluate %.2f, seed %d",
            type(self.inner).__name__,
            self.fraction_train,
            self.fraction_evaluate,
            self.sampler.seed,
        )
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.round_offset
        comp = self.compression
        master = {name: array.numpy() for name, array in arrays.items()}
        self.masks, mask_bytes = None, b""
        sparsity = comp.pruning.sparsity(server_round) if comp.pruning else 0.0
        if comp.pruning and sparsity > 0:
            names = prunable_names(master, comp.frozen)
            self.masks = magnitude_masks(master, names, sparsity, comp.pruning.scope)
            master = self.masks.apply(master)
            arrays = ArrayRecord({k: Array(v) for k, v in master.items()})
            mask_bytes = self.masks.encode()
        codec_config = comp.codec_config(server_round, self.sampler.seed)
        self._rotation_seed = codec_config.get("rotate-seed")
        round_config = ConfigRecord({**dict(config), **codec_config})
        if (lr := self.hooks.round_lr(server_round)) is not None:
            round_config["lr"] = lr
        if self.pooling:
            round_config[POOLING_CONFIG_KEY] = True
        if mask_bytes:
            round_config[MASK_FIELD] = mask_bytes
        if isinstance(self.inner, FedAvgM):  # its momentum steps from the model clients get
            self.inner.current_arrays = arrays
        nodes = self.sampler.sample(grid, server_round, self.fraction_train, self.min_train_nodes)
        messages = list(
            self.inner.configure_train(
                server_round, arrays, round_config, FixedNodesGrid(grid, nodes)
            )
        )
        download = sum(a.nbytes for a in master.values())
        self._reference = master
        if comp.download_bits and messages:
            self._reference, download = quantized_download(
                messages, master, server_round, comp.download_bits, self.masks
            )
        self._decoder = RoundDecoder(
            reference=self._reference,
            masks=self.masks,
            frozen=comp.frozen,
            clip_norm=self.clip_norm,
            limits=self.limits,
            rotation_seed=self._rotation_seed,
            needs_loss=isinstance(self.inner, QFedAvg),
        )
        stats = self.rounds.setdefault(server_round, RoundStats(server_round=server_round))
        stats.sampled = len(messages)
        stats.download_bytes_per_client = download + len(mask_bytes)
        stats.sparsity = self.masks.sparsity() if self.masks else 0.0
        if self.secure is not None:
            messages = self._secure_setup(server_round, messages, grid, stats)
        return messages

    def _secure_setup(
        self, server_round: int, messages: list[Message], grid: Grid, stats: RoundStats
    ) -> list[Message]:
        """Stages 1-2 of secure aggregation; train only the clients that shared their keys."""
        assert self.secure is not None
        self._session = SecAggSession(self.secure, server_round, grid, stats)
        try:
            record = self._session.setup(
                (m.metadata.dst_node_id for m in messages), np.random.default_rng()
            )
        except Exception as err:  # noqa: BLE001 - SecAggFailed, or a fault no check foresaw
            why = str(err) if isinstance(err, SecAggFailed) else f"{type(err).__name__}: {err}"
            log.warning("round %d: secure aggregation failed: %s; no update", server_round, why)
            stats.secagg_failure = why[:300]
            self._session = None
            return []
        alive = set(self._session.alive)
        kept = [m for m in messages if m.metadata.dst_node_id in alive]
        for content in {id(m.content): m.content for m in kept}.values():
            content[SECAGG_RECORD_KEY] = record
        return kept

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        stats = self.rounds.setdefault(server_round, RoundStats(server_round=server_round))
        started = time.perf_counter()
        try:
            return self._aggregate_train(server_round, replies, stats)
        finally:
            stats.aggregate_s += time.perf_counter() - started

    def _aggregate_train(
        self, server_round: int, replies: Iterable[Message], stats: RoundStats
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self.secure is not None:
            return self._aggregate_secure(server_round, list(replies), stats)
        ordered, metrics_by_reply, received = checked_replies(
            replies, server_round, stats, self.limits
        )
        mean = StreamingMean(self._reference) if self.needs_mean_only else None
        accepted: list[Message] = []
        weights: dict[int, float] = {}
        for unit in group_pools(ordered):
            members = unit.replies if isinstance(unit, Pool) else [unit]
            try:
                if isinstance(unit, Pool):
                    self._decoder.add_pool(
                        unit,
                        [metrics_by_reply[id(m)] for m in members],
                        mean,
                        stats,
                        allowed=self.pooling,
                    )
                else:
                    deltas, weight = self._decoder.decode(unit, metrics_by_reply[id(unit)], stats)
                    if mean is not None:  # O(model) memory however many clients reply
                        mean.add(deltas, weight)
                    else:
                        local = {
                            name: Array(ref + deltas[name] if name in deltas else ref)
                            for name, ref in self._reference.items()
                        }
                        unit.content = RecordDict(
                            {
                                "arrays": ArrayRecord(local),
                                "metrics": MetricRecord({WEIGHT_KEY: weight}),
                            }
                        )
            except Exception as err:  # noqa: BLE001 - any fault of one reply is its rejection
                reject(server_round, stats, members, as_rejection(err, self.limits))
                continue
            for msg in members:
                weights[id(msg)] = float(metrics_by_reply[id(msg)][WEIGHT_KEY])
                strip_adapter_metrics(metrics_by_reply[id(msg)])
            stats.pooled += len(members) if isinstance(unit, Pool) else 0
            accepted += members
        stats.accepted = len(accepted)
        stats.dropped = max(stats.sampled - received, 0)  # no reply before the round deadline
        if stats.dropped:
            log.warning(
                "round %d: %d sampled clients did not reply in time", server_round, stats.dropped
            )
        if not accepted:
            log.warning("round %d: no valid update; the global model stays as it was", server_round)
            return None, None
        records = [metrics_by_reply[id(m)] for m in accepted]
        averaged = self.hooks.aggregate_metrics(
            "train", records, [weights[id(m)] for m in accepted], weighted_metrics
        )
        averaged.pop(WEIGHT_KEY, None)
        if mean is None:  # each update goes to the strategy, with the metrics all replies share
            shared = common_scalars(records)
            for msg in accepted:
                msg.content["metrics"] = MetricRecord(
                    {
                        **{k: metrics_by_reply[id(msg)][k] for k in shared},
                        WEIGHT_KEY: weights[id(msg)],
                    }
                )
        if mean is not None:
            # Flower's strategy averages one reply that carries the mean and the total weight:
            # its weighted mean of one record is that record; FedAdam/FedYogi step from it.
            carrier = accepted[0]
            carrier.content = RecordDict(
                {
                    "arrays": ArrayRecord({k: Array(v) for k, v in mean.result().items()}),
                    "metrics": MetricRecord({**averaged, WEIGHT_KEY: mean.total}),
                }
            )
            accepted = [carrier]
        arrays, _ = self._server_step(server_round, accepted, stats)
        metrics = MetricRecord(averaged) if arrays is not None else None
        if metrics is not None:
            stats.train_metrics = {k: float(v) for k, v in averaged.items() if _is_scalar(v)}
        return arrays, metrics

    def _server_step(
        self, server_round: int, replies: list[Message], stats: RoundStats
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The inner strategy's new model and metrics from the accepted replies; (None, None)
        (the model stays) when its step fails or its model is not finite."""
        try:
            arrays, metrics = self.inner.aggregate_train(server_round, replies)
        except Exception as err:  # noqa: BLE001 - a round fails, the run goes on
            stats.aggregation_failure = f"{type(err).__name__}: {str(err)[:300]}"
        else:
            if arrays is None or is_finite_model(arrays):
                if arrays is not None and self.compression.frozen:
                    # averaging equal values can move the last bit; frozen layers stay as sent
                    for name, ref in self._reference.items():
                        if name.startswith(self.compression.frozen):
                            arrays[name] = Array(ref)
                return arrays, metrics
            stats.aggregation_failure = "the aggregated model is not finite"
        log.warning(
            "round %d: %s; the global model stays as it was",
            server_round,
            stats.aggregation_failure,
        )
        return None, None

    def _aggregate_secure(
        self, server_round: int, replies: list[Message], stats: RoundStats
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Unmask the sum of the masked uploads and hand the inner strategy its weighted mean."""
        session, self._session = self._session, None
        if session is None:  # setup failed: nothing was sent
            return None, None
        specs = self._decoder.specs
        shapes = {s.name: s.shape for s in specs}
        try:
            kept = kept_count(shapes, self.masks)
            block = block_for(kept, self.compression.codec.rotate_block)
            rotated = self._rotation_seed is not None  # a shared rotation: unrotate the mean
            total = session.aggregate(
                replies, (padded_length(kept, block) if rotated else kept) + 1
            )
            mean, weight = session.spec.weighted_mean(total)
            if rotated:
                mean = unrotate(mean, self._rotation_seed, block, kept)
            deltas = unflatten_kept(mean, shapes, self.masks)
            check_update(deltas, self.limits)
            model = {
                name: (ref + deltas[name]).astype(np.float32) if name in deltas else ref
                for name, ref in self._reference.items()
            }
            carrier = secure_mean_reply(replies, model, WEIGHT_KEY, weight)
        except Exception as err:  # noqa: BLE001 - SecAggFailed, or a fault no check foresaw
            why = str(err) if isinstance(err, SecAggFailed) else f"{type(err).__name__}: {err}"
            log.warning("round %d: secure aggregation failed: %s; no update", server_round, why)
            stats.secagg_failure = why[:300]
            stats.accepted = 0
            stats.dropped = max(stats.sampled - len(replies), 0)
            return None, None
        stats.dropped = max(stats.sampled - len(replies), 0)
        arrays, metrics = self._server_step(server_round, [carrier], stats)
        if metrics is not None:
            stats.train_metrics = {k: float(v) for k, v in metrics.items() if _is_scalar(v)}
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.round_offset
        if self.fraction_evaluate <= 0:
            return []
        nodes = self.sampler.sample(
            grid, server_round, self.fraction_evaluate, self.min_evaluate_nodes, purpose=1
        )
        return self.inner.configure_evaluate(
            server_round, arrays, config, FixedNodesGrid(grid, nodes)
        )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """The weighted mean of the evaluation replies' checked metrics (Flower's arithmetic);
        a reply whose metrics or weight fail the checks is left out and counted."""
        server_round += self.round_offset
        stats = self.rounds.setdefault(server_round, RoundStats(server_round=server_round))
        records, weights = checked_evaluate_replies(replies, stats, self.limits)
        if not records:
            return None
        averaged = self.hooks.aggregate_metrics("evaluate", records, weights, weighted_metrics)
        stats.federated_evaluation = {k: float(v) for k, v in averaged.items() if _is_scalar(v)}
        return MetricRecord(averaged)


def _is_scalar(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
