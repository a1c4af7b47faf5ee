"""Every private attribute of Flower the batched engine touches, in this one module.

- Train-reply records filled in place (:data:`FAST_RECORDS`). Flower's record constructors
  check every entry through generic helpers (``typing.get_args``, ``isinstance`` on ABCs, one
  ``__setitem__`` call each), a large share of the engine's host time per client when it
  builds thousands of replies a round (``benchmarks/host_path.py``). Train replies hold
  only ``str`` keys and plain scalars, so these builders check them with exact type tests (the
  types Flower accepts, ``bool`` refused in a MetricRecord as Flower refuses it) and store
  them where Flower's own ``TypedDict.copy`` puts a record's entries (``_data``).
- Message ids stamped through ``metadata.__dict__["_message_id"]`` (:func:`stamp_message_id`),
  as Flower's own in-memory link state does (``linkstate/utils.py``): ``Metadata`` has no
  public setter for it.
- ``TaskIdentity``'s private fields saved and restored around a ServerApp run
  (:func:`task_identity`), as ``flwr.superlink.runtime.run_serverapp`` sets them.

Written against Flower :data:`TESTED_FLWR`. On another release the records take Flower's
checked constructors (:data:`client_sdk.client_round.FLOWER_RECORDS`), and the other two
refuse with :class:`FlowerInternalsChanged` when the attribute they write is gone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import flwr
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client_sdk.client_round import FLOWER_RECORDS, RecordBuilder

TESTED_FLWR = "1.42."  # the release series these attributes were read from
_METRIC_TYPES = frozenset({int, float})
_CONFIG_TYPES = frozenset({int, float, str, bytes, bool})
_RECORD_TYPES = (ArrayRecord, MetricRecord, ConfigRecord)
_IDENTITY_FIELDS = ("_task_id", "_run_id", "_node_id")


class FlowerInternalsChanged(RuntimeError):
    """The installed Flower no longer has a private attribute the batched engine writes."""


def tested_release(version: str | None = None) -> bool:
    """Whether ``version`` (the installed Flower's by default) is of :data:`TESTED_FLWR`."""
    return (flwr.__version__ if version is None else version).startswith(TESTED_FLWR)


def _keeps_entries_in_data() -> bool:
    probe = MetricRecord({"probe": 1})
    return probe.__dict__.get("_data") == {"probe": 1} and isinstance(
        RecordDict().__dict__.get("_data"), dict
    )


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
    _check_scalars(entries, _METRIC_TYPES, "MetricRecord")
    return _filled(MetricRecord(), entries)


def config_record(entries: dict[str, int | float | str | bytes | bool]) -> ConfigRecord:
    """``ConfigRecord(entries)`` for scalar entries; ``entries`` becomes the record's own dict."""
    _check_scalars(entries, _CONFIG_TYPES, "ConfigRecord")
    return _filled(ConfigRecord(), entries)


def record_dict(records: dict[str, ArrayRecord | MetricRecord | ConfigRecord]) -> RecordDict:
    """``RecordDict(records)``; ``records`` becomes the RecordDict's own dict."""
    for key, record in records.items():
        if type(key) is not str or not isinstance(record, _RECORD_TYPES):
            raise TypeError(
                f"RecordDict entries must be str -> ArrayRecord | MetricRecord | ConfigRecord, "
                f"got {key!r}: {type(record).__name__}"
            )
    return _filled(RecordDict(), records)


FAST = tested_release() and _keeps_entries_in_data()
# the train replies' records: filled in place on the tested release, else Flower's own
FAST_RECORDS = RecordBuilder(metric_record, config_record, record_dict) if FAST else FLOWER_RECORDS


def stamp_message_id(msg: Message, message_id: str) -> None:
    """Give a pushed message its id, as a SuperLink's link state does."""
    metadata = msg.metadata
    if not tested_release() and "_message_id" not in metadata.__dict__:
        raise FlowerInternalsChanged(
            f"flwr {flwr.__version__}: Message.metadata keeps no '_message_id' (the batched "
            f"engine was written for flwr {TESTED_FLWR}x); use Flower's simulation engine"
        )
    metadata.__dict__["_message_id"] = message_id


@contextlib.contextmanager
def task_identity(run_id: int, node_id: int) -> Iterator[None]:
    """The run identity Flower's runtime sets for a ServerApp (messages read their run id and
    source node from it) for the block, the previous identity restored after it."""
    if not tested_release() and not all(hasattr(TaskIdentity, f) for f in _IDENTITY_FIELDS):
        raise FlowerInternalsChanged(
            f"flwr {flwr.__version__}: TaskIdentity has no {', '.join(_IDENTITY_FIELDS)} (the "
            f"batched engine was written for flwr {TESTED_FLWR}x); use Flower's simulation engine"
        )
    saved = tuple(getattr(TaskIdentity, f) for f in _IDENTITY_FIELDS)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, node_id
    try:
        yield
    finally:
        for name, value in zip(_IDENTITY_FIELDS, saved, strict=True):
            setattr(TaskIdentity, name, value)
