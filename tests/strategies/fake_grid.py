"""A tiny in-memory stand-in for Flower's Grid: nodes that answer QUERY with a partition id."""

from __future__ import annotations

from flwr.app import Message, MessageType, MetricRecord, RecordDict

from tests.messages import message


class QueryAnsweringGrid:
    def __init__(self, partitions: dict[int, int]) -> None:
        self.partitions = partitions  # node id -> partition id
        self.queries = 0

    def get_node_ids(self) -> list[int]:
        return list(self.partitions)

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        replies = []
        for msg in messages:
            assert msg.metadata.message_type == MessageType.QUERY
            self.queries += 1
            node = msg.metadata.dst_node_id
            content = RecordDict(
                {"node-info": MetricRecord({"partition-id": self.partitions[node]})}
            )
            replies.append(message(content, src=node, dst=1, message_type=MessageType.QUERY))
        return replies
