"""The per-round metrics log: one JSON object a line in ``metrics.jsonl``, flushed each round."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


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
    """Rows of a ``metrics.jsonl`` file: each line a JSON object with an int ``round``. Other
    lines (a last line cut by a crash mid-append, or anything else) are skipped with a warning
    naming the file and lines, so a resume or a status never fails on them."""
    rows: list[dict[str, Any]] = []
    skipped: list[int] = []
    text = path.read_bytes().decode("utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        valid = isinstance(row, dict) and isinstance(row.get("round"), int)
        if valid and not isinstance(row["round"], bool):
            rows.append(row)
        else:
            skipped.append(number)
    if skipped:
        shown = ", ".join(map(str, skipped[:5])) + (", ..." if len(skipped) > 5 else "")
        log.warning(
            "%s: skipped %d line(s) that are not a round's metrics: %s", path, len(skipped), shown
        )
    return rows
