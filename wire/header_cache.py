"""A byte-bounded cache of parsed payload headers (see :class:`HeaderCache`)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from wire.stages import TensorSpec

Entry = tuple[dict[str, Any], tuple[TensorSpec, ...], int]


class HeaderCache:
    """Parsed headers by their raw bytes: every client of a round sends the same header.

    Bounded by the inflated JSON it holds (``max_text_bytes`` in all, ``max_entry_bytes`` per
    header), not by entry count: a parsed JSON object takes ~25x its text in Python objects, so
    64 crafted 1 MB headers would pin ~1.5 GB under an entry-count bound. Callers add only
    headers that matched the model and never mutate what they get.
    """

    def __init__(self, max_text_bytes: int = 4 << 20, max_entry_bytes: int = 64 << 10) -> None:
        self.max_text_bytes = max_text_bytes
        self.max_entry_bytes = max_entry_bytes
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        self.text_bytes = 0

    def get(self, raw: bytes) -> Entry | None:
        entry = self._entries.get(raw)
        if entry is not None:
            self._entries.move_to_end(raw)
        return entry

    def put(self, raw: bytes, entry: Entry) -> None:
        size = entry[2] + len(raw)
        if size > self.max_entry_bytes or raw in self._entries:
            return
        self._entries[raw] = entry
        self.text_bytes += size
        while self.text_bytes > self.max_text_bytes:
            old_raw, old = self._entries.popitem(last=False)
            self.text_bytes -= old[2] + len(old_raw)

    def clear(self) -> None:
        self._entries.clear()
        self.text_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)
