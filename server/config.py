"""Run settings of the ServerApp, read from Flower's run config (``[tool.flwr.app.config]``).

:class:`RunSettings` is made of the sections of :mod:`server.sections` (and
:mod:`server.privacy_section`), where each setting is
declared once (key, type, default, help, check): the run-config keys, the ``pollen simulate``
flags and pyproject's defaults (checked by a test) all come from there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from server.privacy_section import PrivacySection
from server.schema import SettingError, check_fields, from_keys, settings_of
from server.sections import (
    CompressionSection,
    LimitsSection,
    SecureSection,
    StrategySection,
    TaskSection,
)
from strategies import CompressionSettings, PruningSchedule, SecAggSettings
from strategies.aggregation import robust_cohort
from strategies.privacy.accounting import PrivacyError, RoundPlan, calibrate_noise
from strategies.privacy.central import AdaptiveClip, CentralDp
from strategies.privacy.distributed import (
    DistributedDp,
    calibrate_multiplier,
    noise_shares,
    round_scale,
)
from strategies.privacy.local import LocalDp, local_plan
from strategies.sampling import sample_size
from wire import CodecSpec


class RunConfigError(SettingError):
    """A run-config key has a value the server cannot use; ``key`` names it."""

    def __init__(self, key: str, why: str) -> None:
        ValueError.__init__(self, f"run config {key}: {why}")
        self.key = key
        self.why = why


@dataclass(frozen=True, kw_only=True)
class RunSettings(  # fields in the reverse order of the bases: the task's first
    LimitsSection,
    PrivacySection,
    SecureSection,
    CompressionSection,
    StrategySection,
    TaskSection,
):
    """Everything one federated run needs: the sections above, flat (``settings.quant_bits``).
    Field names are the run-config keys with '_' for '-'. Only what devices and the server use:
    a simulation's own settings (partition, attacks, dropouts) extend it in
    :class:`simulations.settings.SimulationRunSettings`, whose ServerApp accepts them."""

    def __post_init__(self) -> None:
        try:
            check_fields(self)
            self._check_compression()
            self._check_secure(self.strategy)
            self._check_secure_combinations()
            self._check_privacy(
                self.strategy, self.secure_agg, self.secagg_share_metrics, self.rotate
            )
            if self.dp_mode != "none" and self.fraction_evaluate > 0 and not self.dp_client_metrics:
                raise SettingError(
                    "fraction-evaluate",
                    "federated evaluation sends each client's metrics on its own data in the "
                    "clear, around the DP noise: set it to 0 (the server evaluates centrally), "
                    "or opt in with dp-client-metrics",
                )
        except SettingError as err:
            raise RunConfigError(err.key, err.why) from None

    def _check_secure_combinations(self) -> None:
        """What secure aggregation cannot be combined with (it reveals only the sum)."""
        if not self.secure_agg:
            return
        for key, value in (("topk", self.topk), ("clip-norm", self.clip_norm)):
            if value:
                raise SettingError(
                    key, "cannot be combined with secure-agg (individual updates needed)"
                )
        if self.error_feedback:
            raise SettingError("error-feedback", "cannot be combined with secure-agg")
        if self.quant_bits:
            raise SettingError(
                "quant-bits", "secure-agg quantizes by itself: set secagg-bits instead"
            )
        if self.rotate == "client":
            raise SettingError(
                "rotate", "secure-agg sums the uploads: use one rotation for all (shared)"
            )

    def section(self, cls: type) -> Any:
        """One section of these settings (e.g. ``settings.section(CompressionSection)``)."""
        return cls(**{entry.name: getattr(self, entry.name) for entry in settings_of(cls)})

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

    def local_privacy(self) -> LocalDp | None:
        """Local DP: each client's clip and noise, accounted per client over every round."""
        if self.dp_mode != "local":
            return None
        try:
            plan = local_plan(self.num_server_rounds, self.dp_target_delta or 1e-5)
            z = self.dp_noise_multiplier or calibrate_noise(self.dp_target_epsilon, plan)
            return LocalDp(
                noise_multiplier=z,
                clip=self.dp_clip,
                plan=plan,
                seeded=self.dp_seeded_noise,
                client_metrics=self.dp_client_metrics,
            )
        except PrivacyError as err:
            key = "dp-target-epsilon" if self.dp_target_epsilon else "dp-target-delta"
            raise RunConfigError(key, str(err)) from None

    def check_cohort(self, population: int) -> None:
        """Refuse a robust aggregator whose planned rounds (``population`` nodes sampled at
        fraction-train) are too small for num-malicious Byzantine updates, naming the key."""
        needed = robust_cohort(self.strategy, self.num_malicious)
        cohort = sample_size(population, self.fraction_train, 1)
        if cohort < needed:
            raise RunConfigError(
                "num-malicious",
                f"{self.strategy} with {self.num_malicious} malicious needs {needed} updates a "
                f"round, a round trains {cohort} of {population} clients: lower num-malicious "
                "or train more clients a round",
            )

    def privacy_plan(self, population: int) -> RoundPlan:
        """The rounds DP accounts for: ``population`` clients (dp-population wins when set),
        sampled as the run's sampler draws them (raises PrivacyError)."""
        n = self.dp_population or population
        return RoundPlan(
            population=n,
            per_round=sample_size(n, self.fraction_train, 1),
            rounds=self.num_server_rounds,
            delta=self.dp_target_delta or n**-1.1,
            sampling=self.dp_sampling,  # the run's sampler draws the same way (registry)
        )

    def central_privacy(self, population: int) -> CentralDp | None:
        """Central DP for ``population`` clients (dp-population wins when set), the noise
        calibrated to dp-target-epsilon where asked; a target that cannot be met is refused."""
        if self.dp_mode != "central":
            return None
        try:
            plan = self.privacy_plan(population)
            z = self.dp_noise_multiplier or calibrate_noise(self.dp_target_epsilon, plan)
        except PrivacyError as err:
            key = "dp-target-epsilon" if self.dp_target_epsilon else "dp-target-delta"
            raise RunConfigError(key, str(err)) from None
        try:  # the clip and multiplier are checked by their declarations: only the split is left
            return CentralDp(
                noise_multiplier=z,
                clip=self.dp_clip,
                plan=plan,
                adaptive=AdaptiveClip() if self.dp_adaptive_clip else None,
                noise_seed=self.seed if self.dp_seeded_noise else None,
                client_metrics=self.dp_client_metrics,
            )
        except PrivacyError as err:
            raise RunConfigError(
                "dp-adaptive-clip", f"{err}: sample more clients per round or lower the noise"
            ) from None

    def distributed_privacy(self, population: int, values: int) -> DistributedDp | None:
        """Distributed DP for ``population`` clients (dp-population wins when set) uploading
        ``values`` coordinates each (the model's trained parameters: the accounted dimension is
        their rotated length, conservative under pruning); the multiplier is calibrated to
        dp-target-epsilon where asked. Bits too few for a round's sum, or a target that cannot
        be met, are refused naming the setting."""
        if self.dp_mode != "distributed":
            return None
        n = self.dp_population or population
        per_round = sample_size(n, self.fraction_train, 1)  # as privacy_plan counts them
        if per_round >= 1 << self.dp_bits:
            raise RunConfigError(
                "dp-bits", f"{per_round} clients' count does not fit {self.dp_bits} bits"
            )
        try:
            round_scale(
                bits=self.dp_bits,
                clients=per_round,
                clip=self.dp_clip,
                values=values,
                z=1.0,
                shares=noise_shares(per_round, self.dp_dropout_tolerance),
            )
        except ValueError as err:
            raise RunConfigError("dp-bits", str(err)) from None
        try:
            plan = self.privacy_plan(population)
            z = self.dp_noise_multiplier or calibrate_multiplier(
                self.dp_target_epsilon,
                plan,
                clip=self.dp_clip,
                bits=self.dp_bits,
                values=values,
                tolerance=self.dp_dropout_tolerance,
            )
            return DistributedDp(
                noise_multiplier=z,
                clip=self.dp_clip,
                bits=self.dp_bits,
                plan=plan,
                run_seed=self.seed,
                seeded=self.dp_seeded_noise,
                client_metrics=self.dp_client_metrics,
                dropout_tolerance=self.dp_dropout_tolerance,
            )
        except PrivacyError as err:
            key = "dp-target-epsilon" if self.dp_target_epsilon else "dp-target-delta"
            raise RunConfigError(key, str(err)) from None

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
                quant_fraction=self.quant_fraction,
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
        try:
            return from_keys(cls, run_config)
        except RunConfigError:
            raise
        except SettingError as err:
            raise RunConfigError(err.key, err.why) from None
