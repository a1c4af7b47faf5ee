"""Train replies are built by the RecordBuilder the caller passes: Flower's checked
constructors on a device, a simulator's own builder of the same records otherwise."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from client_sdk.client_round import FLOWER_RECORDS, RecordBuilder, TrainStats, reply_message
from client_sdk.tasks import get_task
from tests.helpers.batched import round_plan
from tests.messages import message, node_context


def test_flowers_builder_checks_entries_as_flowers_constructors_do():
    assert FLOWER_RECORDS.metric({"n": 1}) == MetricRecord({"n": 1})
    with pytest.raises(TypeError):
        FLOWER_RECORDS.metric({"n": np.float32(1)})
    with pytest.raises(TypeError):
        FLOWER_RECORDS.config({"x": object()})


def test_the_reply_is_built_by_the_builder_passed_in_and_equals_flowers():
    plan = round_plan(get_task("digits"), {})
    msg = message(RecordDict(), src=1, dst=7, message_type="train")
    stats = TrainStats(mean_loss=0.5, num_examples=12, steps=3)
    built: list[str] = []

    def metric(entries):
        built.append("metric")
        return MetricRecord(entries)

    def config(entries):
        built.append("config")
        return ConfigRecord(entries)

    counting = RecordBuilder(metric, config)
    ours = reply_message(msg, plan, node_context(2, 4), b"\x01\x02", stats, records=counting)
    theirs = reply_message(msg, plan, node_context(2, 4), b"\x01\x02", stats)
    assert built == ["metric", "config"]
    assert ours.content.deflate() == theirs.content.deflate()
    assert dict(theirs.content["metrics"])["num-examples"] == 12
    assert ours.metadata.reply_to_message_id == msg.metadata.message_id
