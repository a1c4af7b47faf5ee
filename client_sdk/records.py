"""Flower records for train replies, checked by exact type tests.

Flower's record constructors check every entry through generic helpers (``typing.get_args``,
``isinstance`` on ABCs, one ``__setitem__`` call each): 22 us for a train reply's five metrics
and 12 us for its RecordDict on a 2-core CPU. A device pays that once a round; the batched
engine, which builds thousands of replies a round, paid about a fifth of its host time per
client (``benchmarks/host_path.py``). Train replies hold only ``str`` keys and plain scalars,
so this module checks them with exact type tests (the types Flower accepts, ``bool`` refused
in a MetricRecord as Flower refuses it) and stores them where Flower's own ``TypedDict.copy``
puts a record's entries. Written by hand because Flower has no bulk constructor. If a Flower
release stops keeping entries there, :data:`FAST` is False and Flower's checked constructors
are used instead.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

_METRIC_TYPES = frozenset({int, float})
_CONFIG_TYPES = frozenset({int, float, str, bytes, bool})
_RECORD_TYPES = (ArrayRecord, MetricRecord, ConfigRecord)


def _keeps_entries_in_data() -> bool:
    probe = MetricRecord({"probe": 1})
    return probe.__dict__.get("_data") == {"probe": 1} and isinstance(
        RecordDict().__dict__.get("_data"), dict
    )


FAST = _keeps_entries_in_data()


def _filled(record, entries: dict):
    record.__dict__["_data"] = entries
    return record


def _check_scalars(entries: dict, allowed: frozenset[type], kind: str) -> None:
    for key, value in entries.items():
        if type(key) is not str:
            raise TypeError(f"{kind} keys must be str, got {type(key).__name__} ({key!r})")
        if type(value) not in allowed:
            names = ", ".join(sorted(t.__name__ for t in allowed))
            raise TypeError(
                f"{kind} value {key!r} must be one of {names}, got {type(value).__name__}"
            )


def metric_record(entries: dict[str, int | float]) -> MetricRecord:
    """``MetricRecord(entries)`` for scalar metrics; ``entries`` becomes the record's own dict."""
    if not FAST:
        return MetricRecord(entries)
    _check_scalars(entries, _METRIC_TYPES, "MetricRecord")
    return _filled(MetricRecord(), entries)


def config_record(entries: dict[str, int | float | str | bytes | bool]) -> ConfigRecord:
    """``ConfigRecord(entries)`` for scalar entries; ``entries`` becomes the record's own dict."""
    if not FAST:
        return ConfigRecord(entries)
    _check_scalars(entries, _CONFIG_TYPES, "ConfigRecord")
    return _filled(ConfigRecord(), entries)


def record_dict(records: dict[str, ArrayRecord | MetricRecord | ConfigRecord]) -> RecordDict:
    """``RecordDict(records)``; ``records`` becomes the RecordDict's own dict."""
    if not FAST:
        return RecordDict(records)
    for key, record in records.items():
        if type(key) is not str or not isinstance(record, _RECORD_TYPES):
            raise TypeError(
                f"RecordDict entries must be str -> ArrayRecord | MetricRecord | ConfigRecord, "
                f"got {key!r}: {type(record).__name__}"
            )
    return _filled(RecordDict(), records)


def reply(msg: Message, records: dict[str, ArrayRecord | MetricRecord | ConfigRecord]) -> Message:
    """The reply to ``msg`` holding ``records``."""
    return Message(content=record_dict(records), reply_to=msg)
