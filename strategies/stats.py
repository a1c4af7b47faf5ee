"""Per-round accounting kept by the wire adapter: bytes each way, rejections, failures."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Rejection:
    node_id: int
    reason: str
    detail: str


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
            "failures": [asdict(r) for r in self.failures],
            **{f"federated_{k}": v for k, v in self.federated_evaluation.items()},
            **{f"train_{k}": v for k, v in self.train_metrics.items()},
        }
