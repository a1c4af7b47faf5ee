"""Server side of pooled uploads (:mod:`wire.pooling`): group the replies, check each pool.

A pool is usable only when the server allowed pooling this round (its strategy needs just the
weighted mean), exactly one reply carries the payload, every member the carrier counts has
replied, and the carrier's weight is the sum of the members' ``num-examples``: then adding the
carrier's mean with that weight is exactly adding each member's update with its own. Anything
else rejects the whole pool, member by member, with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

from flwr.app import ConfigRecord, Message

from strategies.validation import ReplyLimits, checked_weight
from wire import (
    PAYLOAD_FIELD,
    POOL_ID_FIELD,
    POOL_MEMBER_BYTES_FIELD,
    POOL_SIZE_FIELD,
    POOL_WEIGHT_FIELD,
    UPDATE_RECORD_KEY,
    RejectReason,
    UpdateRejected,
)


@dataclass
class Pool:
    """The replies (carrier included) that share one pool id, in the order they came."""

    pool_id: str
    replies: list[Message] = field(default_factory=list)

    @cached_property
    def carriers(self) -> list[Message]:  # read once the pool is complete (group_pools)
        return [m for m in self.replies if isinstance(_record(m).get(PAYLOAD_FIELD), bytes)]

    def payload_bytes(self) -> int:
        """What each member uploaded: the carrier's ``pool-member-bytes`` (a quantized update)
        when it is a positive int, else a float32 update the size of the carrier's payload."""
        carriers = self.carriers
        if len(carriers) != 1:
            return 0
        record = _record(carriers[0])
        member = record.get(POOL_MEMBER_BYTES_FIELD)
        if isinstance(member, int) and not isinstance(member, bool) and member > 0:
            return member
        return len(record[PAYLOAD_FIELD])


def _record(msg: Message) -> ConfigRecord:
    record = msg.content.get(UPDATE_RECORD_KEY)
    return record if isinstance(record, ConfigRecord) else ConfigRecord()


def pool_id_of(msg: Message) -> str | None:
    value = _record(msg).get(POOL_ID_FIELD)
    return value if isinstance(value, str) else None


def group_pools(replies: list[Message]) -> list[Message | Pool]:
    """``replies`` in their order, the members of each pool gathered at its first member's place."""
    units: list[Message | Pool] = []
    pools: dict[str, Pool] = {}
    for msg in replies:
        pool_id = pool_id_of(msg)
        if pool_id is None:
            units.append(msg)
            continue
        if pool_id not in pools:
            pools[pool_id] = Pool(pool_id)
            units.append(pools[pool_id])
        pools[pool_id].replies.append(msg)
    return units


def check_pool(
    pool: Pool, metrics: list[dict], weight_key: str, *, allowed: bool, limits: ReplyLimits
) -> tuple[Message, float]:
    """The pool's carrier and total weight; :class:`UpdateRejected` (``bad-pool``) if unusable.

    ``metrics`` are the pool's replies' checked metrics, in ``pool.replies`` order.
    """

    def refuse(detail: str) -> UpdateRejected:
        return UpdateRejected(RejectReason.BAD_POOL, f"pool {pool.pool_id!r}: {detail}")

    if not allowed:
        raise refuse(
            "this round's strategy needs every client's own update (the server's train config "
            "did not allow pooling); send one payload per client"
        )
    carriers = pool.carriers
    if len(carriers) != 1:
        raise refuse(f"needs exactly one reply carrying the payload, got {len(carriers)}")
    record = _record(carriers[0])
    size, total = record.get(POOL_SIZE_FIELD), record.get(POOL_WEIGHT_FIELD)
    member = record.get(POOL_MEMBER_BYTES_FIELD, 1)
    if not isinstance(member, int) or isinstance(member, bool) or member < 1:
        raise refuse(f"{POOL_MEMBER_BYTES_FIELD} must be a positive int, got {member!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size != len(pool.replies):
        raise refuse(
            f"the carrier counts {size!r} members but {len(pool.replies)} replied; a pool is "
            "used only whole (a member that did not reply is still inside its mean)"
        )
    weights = []
    for msg, record_metrics in zip(pool.replies, metrics, strict=True):
        try:
            weights.append(checked_weight(record_metrics.get(weight_key), weight_key, limits))
        except UpdateRejected as err:
            raise refuse(f"member node {msg.metadata.src_node_id}: {err.detail}") from None
    if (
        not isinstance(total, (int, float))
        or isinstance(total, bool)
        or not math.isclose(total, math.fsum(weights))
    ):
        raise refuse(
            f"{POOL_WEIGHT_FIELD} {total!r} is not the sum of the members' {weight_key!r} "
            f"({math.fsum(weights)})"
        )
    return carriers[0], float(total)
