"""Per-round accounting kept by the wire adapter: bytes each way, rejections, failures."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

MAX_DETAIL_CHARS = 300  # a client writes the detail (an error reason, a bad field): cut it


@dataclass
class Rejection:
    node_id: int
    reason: str
    detail: str

    def __post_init__(self) -> None:
        self.detail = str(self.detail)
        if len(self.detail) > MAX_DETAIL_CHARS:
            self.detail = self.detail[:MAX_DETAIL_CHARS] + "..."


@dataclass
class RoundStats:
    """What happened in one training round, as the server saw it."""

    server_round: int
    sampled: int = 0
    download_bytes_per_client: int = 0
    upload_bytes: list[int] = field(default_factory=list)
    accepted: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    failures: list[Rejection] = field(default_factory=list)
    federated_evaluation: dict[str, float] = field(default_factory=dict)
    sparsity: float = 0.0
    pooled: int = 0  # accepted updates that arrived inside a pool (strategies.pooling)
    dropped: int = 0  # sampled clients with no reply (dead, disconnected, or past the deadline)
    train_metrics: dict[str, float] = field(default_factory=dict)
    aggregate_s: float = 0.0  # server seconds in aggregate_train (decoding, checks, the mean)
    secagg_failure: str = ""  # why secure aggregation could not finish this round ("" = fine)
    aggregation_failure: str = ""  # why the server step produced no model ("" = fine)
    evaluate_rejected: list[Rejection] = field(default_factory=list)  # bad evaluation replies
    privacy: dict[str, float] = field(default_factory=dict)  # dp-epsilon (total), -round, -clip

    @property
    def download_bytes_total(self) -> int:
        return self.download_bytes_per_client * self.sampled

    @property
    def upload_bytes_total(self) -> int:
        return sum(self.upload_bytes)

    def as_metrics(self) -> dict[str, Any]:
        received = len(self.upload_bytes)
        return {
            "sampled_clients": self.sampled,
            "accepted_updates": self.accepted,
            "pooled_updates": self.pooled,
            "rejected_updates": len(self.rejected),
            "failed_clients": len(self.failures),
            "dropped_clients": self.dropped,
            "upload_bytes_total": self.upload_bytes_total,
            "upload_bytes_per_client": self.upload_bytes_total / received if received else 0.0,
            "download_bytes_total": self.download_bytes_total,
            "download_bytes_per_client": self.download_bytes_per_client,
            "sparsity": self.sparsity,
            "aggregate_s": round(self.aggregate_s, 4),
            "rejections": [asdict(r) for r in self.rejected],
            **({"secagg_failure": self.secagg_failure} if self.secagg_failure else {}),
            **(
                {"aggregation_failure": self.aggregation_failure}
                if self.aggregation_failure
                else {}
            ),
            **(
                {"evaluate_rejections": [asdict(r) for r in self.evaluate_rejected]}
                if self.evaluate_rejected
                else {}
            ),
            "failures": [asdict(r) for r in self.failures],
            # clients name their metrics eval-X / train-X: one prefix in the log, not two
            **{
                f"federated_{k.removeprefix('eval-')}": v
                for k, v in self.federated_evaluation.items()
            },
            **{f"train_{k.removeprefix('train-')}": v for k, v in self.train_metrics.items()},
            **{k.replace("-", "_"): v for k, v in self.privacy.items()},
        }


def stall_reason(rounds: dict[int, RoundStats], upto: int, limit: int) -> str | None:
    """Why the ``limit`` rounds up to ``upto`` all ended with no new model (no accepted update,
    or a server step that failed), naming the most common reason; None while any of them
    produced one (or ``limit`` is 0)."""
    if limit <= 0 or upto < limit:
        return None
    last = [rounds.get(r) for r in range(upto - limit + 1, upto + 1)]
    if any(
        stats is None
        # a DP round releases its noise even with no update (Poisson sampling may draw nobody);
        # a secure sum that failed its checks released nothing, spent or not
        or (
            (stats.accepted or (stats.privacy and not stats.secagg_failure))
            and not stats.aggregation_failure
        )
        for stats in last
    ):
        return None
    reasons: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for stats in last:
        for item in stats.rejected + stats.failures:  # type: ignore[union-attr]
            reasons[item.reason] += 1
            examples.setdefault(item.reason, item.detail)
        for reason, detail in (
            ("secagg-failure", stats.secagg_failure),  # type: ignore[union-attr]
            ("aggregation-failure", stats.aggregation_failure),  # type: ignore[union-attr]
        ):
            if detail:
                reasons[reason] += 1
                examples.setdefault(reason, detail)
        if stats.dropped:  # type: ignore[union-attr]
            reasons["no-reply"] += stats.dropped  # type: ignore[union-attr]
            examples.setdefault("no-reply", "sampled clients did not reply before the deadline")
    if not reasons:
        return f"no client update in the last {limit} rounds (rounds {upto - limit + 1}-{upto})"
    reason, count = reasons.most_common(1)[0]
    return (
        f"no update was accepted in {limit} rounds in a row (rounds {upto - limit + 1}-{upto}); "
        f"most common reason: {reason} ({count} times), e.g. {examples[reason][:200]!r}"
    )
