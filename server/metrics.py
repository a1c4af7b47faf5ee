"""The per-round metrics log: one JSON object a line in ``metrics.jsonl``, flushed each round."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class MetricsLog:
    """Append-only JSONL writer; ``rows`` keeps what was written for summaries.

    ``keep_until=R`` (resuming) keeps the existing rows up to round R and drops later ones,
    which a crashed run may have logged after its last checkpoint.
    """

    def __init__(self, path: Path, keep_until: int | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[dict[str, Any]] = []
        if keep_until is not None and path.exists():
            kept = [row for row in read_metrics(path) if row.get("round", 0) <= keep_until]
        path.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in kept))
        self.rows: list[dict[str, Any]] = kept

    def write(self, row: Mapping[str, Any]) -> None:
        record = dict(row)
        with self.path.open("a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        self.rows.append(record)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``metrics.jsonl`` file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
