"""Let any Flower Message-API strategy consume Pollen wire payloads.

The adapter wraps a Flower strategy the way Flower's DP wrappers do. A round reads:
sample (reproducibly) -> configure (pruning mask, codec config, the inner strategy's
``configure_train``) -> decode + validate each reply (:mod:`strategies.aggregators`: an update or
a counted rejection; the round goes on with the rest) -> aggregate (:mod:`strategies.aggregators`:
the streaming mean, every update, or the secure sum, as the strategy's capability says) -> the
server step, Flower's own ``aggregate_train`` on fresh messages built for it (no reply that came
in is changed) -> train metrics (Flower's weighted mean of the checked metrics).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable
from dataclasses import replace

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvgM, QFedAvg, Strategy

from strategies.aggregation import weighted_metrics
from strategies.aggregators import (
    MEAN_ONLY_STRATEGIES,
    Aggregator,
    RoundDecoder,
    SecureSum,
    UpdateAggregator,
    aggregator_for,
    needs_only_mean,
    quantized_download,
)
from strategies.compression import CompressionSettings
from strategies.privacy.central import CentralDp
from strategies.privacy.distributed import DistributedDp
from strategies.privacy.local import LocalDp
from strategies.pruning import magnitude_masks, prunable_names
from strategies.replies import WEIGHT_KEY, checked_evaluate_replies
from strategies.sampling import FixedNodesGrid, SeededSampler
from strategies.schedules import RoundHooks
from strategies.secagg import SecAggFailed, SecAggSession, SecAggSettings
from strategies.secagg_metrics import shared_train_loss
from strategies.server_step import server_step
from strategies.stats import RoundStats
from strategies.validation import ReplyLimits
from wire import MASK_FIELD, POOLING_CONFIG_KEY, MaskSet, TensorSpec, keys
from wire.header_ref import RoundHeaders
from wire.secagg_protocol import SECAGG_RECORD_KEY
from wire.secagg_vector import kept_count

log = logging.getLogger(__name__)


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
        privacy: CentralDp | LocalDp | DistributedDp | None = None,
    ) -> None:
        mean_only = ", ".join(sorted(cls.__name__ for cls in MEAN_ONLY_STRATEGIES))
        central = isinstance(privacy, CentralDp)
        if central and (secure is not None or not needs_only_mean(inner)):
            raise ValueError(
                "central DP clips and noises the mean of each decoded update: it cannot run "
                f"with {'secure aggregation' if secure is not None else type(inner).__name__} "
                f"(use one of {mean_only}, without secure-agg)"
            )
        if isinstance(privacy, DistributedDp) and secure is None:
            raise ValueError("distributed DP adds its noise under secure aggregation: enable it")
        if secure is not None and not needs_only_mean(inner):
            raise ValueError(
                f"secure aggregation reveals only the sum of updates, but {type(inner).__name__} "
                f"needs each update (robust aggregation): use one of {mean_only} with secure "
                "aggregation"
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
        self.needs_mean_only = needs_only_mean(inner)
        self.secure = secure
        self._session: SecAggSession | None = None
        self.compression = compression or CompressionSettings()
        self.clip_norm = clip_norm
        self.privacy = privacy  # central or local DP (strategies.privacy), or None
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
        self._headers: RoundHeaders | None = None  # the headers this round expects
        # Only the weighted mean is needed: a host running many clients may pool their updates.
        self.pooling = (
            self.needs_mean_only and secure is None and not clip_norm > 0 and privacy is None
        )

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
        """prune -> round config -> sample -> the inner strategy's train messages (-> secure
        setup); what this round's replies are decoded against is fixed here."""
        server_round += self.round_offset
        master, arrays, mask_bytes = self._pruned(server_round, arrays)
        round_config = self._round_config(server_round, config, mask_bytes, master)
        if isinstance(self.inner, FedAvgM):  # its momentum steps from the model clients get
            self.inner.current_arrays = arrays
        nodes = self.sampler.sample_train(
            grid, server_round, self.fraction_train, self.min_train_nodes
        )
        messages = list(  # none when Poisson sampling drew no node (Flower's would wait)
            self.inner.configure_train(
                server_round, arrays, round_config, FixedNodesGrid(grid, nodes)
            )
            if nodes
            else ()
        )
        download = self._expect(server_round, master, messages)
        stats = self.rounds.setdefault(server_round, RoundStats(server_round=server_round))
        stats.sampled = len(messages)
        stats.download_bytes_per_client = download + len(mask_bytes)
        stats.sparsity = self.masks.sparsity() if self.masks else 0.0
        if self.secure is not None:
            messages = self._secure_setup(server_round, messages, grid, stats)
        return messages

    def _pruned(
        self, server_round: int, arrays: ArrayRecord
    ) -> tuple[dict[str, np.ndarray], ArrayRecord, bytes]:
        """This round's global model after the pruning schedule's mask (``self.masks``), as
        arrays and as a record, and the encoded mask (b"" when nothing is pruned)."""
        comp = self.compression
        master = {name: array.numpy() for name, array in arrays.items()}
        self.masks = None
        sparsity = comp.pruning.sparsity(server_round) if comp.pruning else 0.0
        if not (comp.pruning and sparsity > 0):
            return master, arrays, b""
        names = prunable_names(master, comp.frozen)
        self.masks = magnitude_masks(master, names, sparsity, comp.pruning.scope)
        master = self.masks.apply(master)
        return master, ArrayRecord({k: Array(v) for k, v in master.items()}), self.masks.encode()

    def _round_config(
        self, server_round: int, config: ConfigRecord, mask: bytes, master: dict
    ) -> ConfigRecord:
        """The train config: the caller's, the codec's, the scheduled lr, pooling, the mask,
        the digest of the header this round expects (:mod:`wire.header_ref`)."""
        comp = self.compression
        codec_config = comp.codec_config(server_round, self.sampler.seed)
        seed = codec_config.get(keys.ROTATE_SEED)
        self._rotation_seed = seed if comp.codec.rotate == "shared" else None
        specs = [
            TensorSpec(name, tuple(a.shape))
            for name, a in master.items()
            if not name.startswith(comp.frozen)
        ]
        codec = comp.codec if seed is None else replace(comp.codec, rotate_seed=int(seed))
        self._headers = RoundHeaders(tuple(specs), server_round, codec, self.masks)
        round_config = ConfigRecord({**dict(config), **codec_config})
        if self._headers.digest is not None:
            round_config[keys.HEADER_REF] = self._headers.digest
        if (lr := self.hooks.round_lr(server_round)) is not None:
            round_config[keys.LR] = lr
        if self.pooling:
            round_config[POOLING_CONFIG_KEY] = True
        if mask:
            round_config[MASK_FIELD] = mask
        return round_config

    def _expect(self, server_round: int, master: dict, messages: list[Message]) -> int:
        """Fix what this round's replies are decoded against (the model the clients start
        from, after the 8-bit download if any); returns the bytes each client downloads."""
        comp = self.compression
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
            headers=self._headers,
            needs_loss=isinstance(self.inner, QFedAvg),
        )
        return download

    def _secure_setup(
        self, server_round: int, messages: list[Message], grid: Grid, stats: RoundStats
    ) -> list[Message]:
        """Stages 1-2 of secure aggregation; train only the clients that shared their keys."""
        assert self.secure is not None
        self._session = SecAggSession(self.secure, server_round, grid, stats)
        if isinstance(self.privacy, DistributedDp):  # its vector spec, for the alive count
            shapes = {s.name: s.shape for s in self._decoder.specs}
            self._session.spec_for = functools.partial(
                self.privacy.vector_spec,
                kept=kept_count(shapes, self.masks),
                server_round=server_round,
                sampled=len(messages),
            )
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
        if isinstance(self.privacy, DistributedDp):
            self._session.min_uploads = self.privacy.min_uploads
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
        """decode + validate -> aggregate -> server step -> train metrics."""
        replies = list(replies)
        records: list[dict] = []  # each accepted client's checked metrics, and its weight
        weights: list[float] = []
        aggregator: Aggregator | None
        if self.secure is not None:
            aggregator = self._secure_sum(server_round, replies, stats)
        else:
            aggregator, records, weights = self._decoded(server_round, replies, stats)
        if aggregator is None:
            return None, None
        arrays = self._server_step(server_round, aggregator.strategy_input(), stats)
        if arrays is None:
            return None, None
        if self.secure is not None:  # only what the survivors chose to share
            metrics = shared_train_loss(replies)
        elif not records or (self.privacy is not None and not self.privacy.client_metrics):
            metrics = {}  # each client's metrics would leak around the noise (opt in to keep)
        else:
            metrics = self.hooks.aggregate_metrics("train", records, weights, weighted_metrics)
            metrics.pop(WEIGHT_KEY, None)
        if self.privacy is not None:
            stats.privacy = self.privacy.finish_round()
        stats.train_metrics = {k: float(v) for k, v in metrics.items() if _is_scalar(v)}
        return arrays, MetricRecord(metrics)

    def _decoded(
        self, server_round: int, replies: list[Message], stats: RoundStats
    ) -> tuple[UpdateAggregator | None, list[dict], list[float]]:
        """Each reply decoded and checked (or counted as a rejection) into the aggregator the
        inner strategy needs, with the accepted clients' metrics and weights; None when no
        update was accepted."""
        dp = (
            self.privacy.aggregator(self._reference, self.compression.frozen)
            if self.privacy is not None
            else None
        )
        aggregator = dp or aggregator_for(self.inner, self._reference, pools=self.pooling)
        records: list[dict] = []
        weights: list[float] = []
        for update in self._decoder.updates(replies, stats, pools=aggregator.accepts_pools):
            aggregator.add(update)  # the mean: O(model) memory however many clients reply
            records += update.metrics
            weights += update.weights
        if not stats.accepted and not (dp is not None and dp.releases_empty):
            log.warning("round %d: no valid update; the global model stays as it was", server_round)
            return None, [], []
        return aggregator, records, weights

    def _secure_sum(
        self, server_round: int, replies: list[Message], stats: RoundStats
    ) -> SecureSum | None:
        """The unmasked sum of the masked uploads; None when the protocol fails."""
        session, self._session = self._session, None
        if session is None:  # setup failed: nothing was sent
            return None
        stats.dropped = max(stats.sampled - len(replies), 0)
        aggregator = SecureSum(
            session,
            self._reference,
            shapes={s.name: s.shape for s in self._decoder.specs},
            masks=self.masks,
            limits=self.limits,
            rotation_seed=self._rotation_seed,
            rotate_block=self.compression.codec.rotate_block,
        )
        try:
            aggregator.sum_replies(replies)
        except Exception as err:  # noqa: BLE001 - SecAggFailed, or a fault no check foresaw
            why = str(err) if isinstance(err, SecAggFailed) else f"{type(err).__name__}: {err}"
            log.warning("round %d: secure aggregation failed: %s; no update", server_round, why)
            stats.secagg_failure = why[:300]
            stats.accepted = 0
            return None
        finally:  # distributed DP: a sum the server unmasked is spent, used or not
            if isinstance(self.privacy, DistributedDp) and session.unmasked:
                stats.privacy = self.privacy.summed(session.unmasked)
        return aggregator

    def _server_step(
        self, server_round: int, replies: list[Message], stats: RoundStats
    ) -> ArrayRecord | None:
        frozen = {
            name: ref
            for name, ref in self._reference.items()
            if self.compression.frozen and name.startswith(self.compression.frozen)
        }
        return server_step(self.inner, server_round, replies, stats, frozen=frozen)

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
