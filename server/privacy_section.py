"""The privacy section of a run's settings (:mod:`server.sections` holds the others): each
setting declared once (:func:`server.schema.setting`), and the checks across them.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.schema import Section, SettingError, at_least, one_of, setting, within
from strategies import SUM_STRATEGIES
from strategies.privacy.accounting import SAMPLINGS
from strategies.privacy.distributed import MAX_TOLERANCE

MAX_POPULATION = 10**9  # dp-population: clients a run may sample from
MAX_CLIP = 1e6  # dp-clip: an update's L2 norm beyond this is no update (max-update-value's default)


@dataclass(frozen=True, kw_only=True)
class PrivacySection(Section):
    """Differential privacy (strategies.privacy; central: DP-FedAvg, McMahan et al. 2018)."""

    dp_mode: str = setting(
        "none",
        "none | central: the server clips and noises the sum | local: each client noises its own"
        " | distributed: each client adds a discrete Gaussian share under secure-agg (it rotates"
        " by itself: rotate stays none; secagg-bits/-clip/-max-weight do not apply).",
        check=one_of("none", "central", "local", "distributed"),
    )
    dp_noise_multiplier: float = setting(
        0.0, "Noise stddev / dp-clip (0: calibrated from dp-target-epsilon).", check=at_least(0)
    )
    dp_clip: float = setting(
        1.0,
        "L2 clip of each update (the start, if adaptive).",
        check=within(0, MAX_CLIP, low_open=True),
    )
    dp_adaptive_clip: bool = setting(False, "Track the median update norm (Andrew et al. 2021).")
    dp_target_epsilon: float = setting(
        0.0, "Epsilon to calibrate the noise for over the planned rounds.", check=at_least(0)
    )
    dp_target_delta: float = setting(
        0.0, "Delta of the reported epsilon (0: 1/N^1.1).", check=within(0, 1, high_open=True)
    )
    dp_population: int = setting(
        0,
        "Clients that may be sampled, N (0: num-partitions, else the nodes).",
        check=within(0, MAX_POPULATION),
    )
    dp_sampling: str = setting(
        "fixed",
        "Central DP's cohort: fixed (m of N) | poisson (each client with probability m/N: "
        "less noise for the same epsilon; a round may train nobody and releases noise).",
        check=one_of(*SAMPLINGS),
    )
    dp_client_metrics: bool = setting(False, "Keep clients' train metrics (they bypass the noise).")
    dp_seeded_noise: bool = setting(
        False, "Draw the noise from the run seed (reproducible experiments only: not private)."
    )
    dp_bits: int = setting(
        16,
        "Distributed DP: bits per coordinate of the secure sum's modulus (8-32).",
        check=within(8, 32),
    )
    dp_dropout_tolerance: float = setting(
        0.1,
        "Distributed DP: the fraction of a round's clients that may vanish after sharing keys; "
        "each noise share is sized for the rest, and a sum of fewer uploads is not unmasked.",
        check=within(0, MAX_TOLERANCE),
    )

    def _check_privacy(
        self, strategy: str, secure_agg: bool, share_metrics: bool, rotate: str = "none"
    ) -> None:
        if self.dp_sampling != "fixed" and self.dp_mode != "central":
            raise SettingError(
                "dp-sampling", f"{self.dp_sampling} is accounted for dp-mode central only"
            )
        if self.dp_mode == "none":
            for key, value in (
                ("dp-target-epsilon", self.dp_target_epsilon),
                ("dp-noise-multiplier", self.dp_noise_multiplier),
            ):
                if value > 0:
                    raise SettingError(
                        key, "is set but dp-mode is none: the run would have no DP; set dp-mode"
                    )
            return
        if secure_agg and share_metrics and not self.dp_client_metrics:
            raise SettingError(
                "secagg-share-metrics",
                "sends each client's metrics in the clear, around the DP noise: turn it off, or "
                "opt in with dp-client-metrics",
            )
        if (self.dp_noise_multiplier > 0) == (self.dp_target_epsilon > 0):
            raise SettingError(
                "dp-noise-multiplier",
                "set exactly one of dp-noise-multiplier and dp-target-epsilon",
            )
        if self.dp_mode == "local":  # noised before upload: any aggregation is post-processing
            return
        if strategy.lower() not in SUM_STRATEGIES:
            raise SettingError(
                "dp-mode",
                f"{strategy} reads each update, which DP noise on the mean cannot protect: use "
                f"one of {', '.join(SUM_STRATEGIES)}",
            )
        if self.dp_mode == "distributed":
            self._check_distributed(secure_agg, rotate)
        elif secure_agg:
            raise SettingError(
                "dp-mode", "central DP needs each decoded update: it cannot run with secure-agg"
            )

    def _check_distributed(self, secure_agg: bool, rotate: str) -> None:
        """Distributed DP rides on the secure sum and rotates with the round's shared seed."""
        if not secure_agg:
            raise SettingError(
                "secure-agg", "dp-mode distributed adds its noise under secure aggregation: set it"
            )
        if rotate != "none":
            raise SettingError(
                "rotate", "dp-mode distributed rotates by itself with the round's seed: use none"
            )
        if self.dp_adaptive_clip:
            raise SettingError(
                "dp-adaptive-clip", "is central DP's; dp-mode distributed clips at a fixed dp-clip"
            )
