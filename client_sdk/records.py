"""How a client's train reply records are built (:class:`RecordBuilder`).

A device builds them with Flower's own checked constructors (:data:`FLOWER_RECORDS`). A
simulator that builds thousands of replies a round may pass a builder of the same records
made faster (Pollen's batched engine: ``simulations.batched.flower_private``); the reply's
layout stays written once, in :mod:`client_sdk.upload`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

Records = dict[str, ArrayRecord | MetricRecord | ConfigRecord]


@dataclass(frozen=True)
class RecordBuilder:
    """The three constructors a train reply needs; each must return the Flower record type."""

    metric: Callable[[dict[str, int | float]], MetricRecord] = MetricRecord
    config: Callable[[dict[str, int | float | str | bytes | bool]], ConfigRecord] = ConfigRecord
    content: Callable[[Records], RecordDict] = RecordDict

    def reply(self, msg: Message, records: Records) -> Message:
        """The reply to ``msg`` holding ``records``."""
        return Message(content=self.content(records), reply_to=msg)


FLOWER_RECORDS = RecordBuilder()  # Flower's own constructors, every entry checked
