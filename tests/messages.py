"""Build Flower Messages as they arrive at a ServerApp or ClientApp, for unit tests."""

from __future__ import annotations

import itertools
import time

from flwr.app import Context, Message, Metadata, RecordDict

_ids = itertools.count(1)


def message(content: RecordDict, *, src: int, dst: int, message_type: str) -> Message:
    """A Message with full metadata, as the Grid delivers it (src/dst node ids set)."""
    metadata = Metadata(
        run_id=1,
        message_id=f"m{next(_ids)}",
        src_node_id=src,
        dst_node_id=dst,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=3600.0,
        message_type=message_type,
    )
    return Message(content=content, metadata=metadata)


def node_context(partition_id: int, num_partitions: int, node_id: int = 7) -> Context:
    return Context(
        run_id=1,
        node_id=node_id,
        node_config={"partition-id": partition_id, "num-partitions": num_partitions},
        state=RecordDict(),
        run_config={},
    )
