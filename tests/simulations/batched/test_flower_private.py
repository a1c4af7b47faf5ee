"""The one module that touches Flower's private attributes: fast records, message ids, and
the run identity, each equal to what Flower's public path gives, and refused or replaced on a
Flower release the module was not written for."""

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client_sdk.client_round import FLOWER_RECORDS
from simulations.batched import flower_private
from tests.messages import message

METRICS = {"num-examples": 50, "train-loss": 0.25, "partition-id": 3}


def test_the_installed_flower_is_the_tested_one_and_keeps_entries_where_the_fast_path_puts_them():
    assert flower_private.tested_release() and flower_private.FAST
    assert flower_private.FAST_RECORDS is not FLOWER_RECORDS
    assert not flower_private.tested_release("1.43.0")


def test_fast_records_equal_and_serialize_like_flowers_own():
    metrics = flower_private.metric_record(dict(METRICS))
    config = flower_private.config_record({"payload": b"\x00\x01", "pool-id": "ab", "size": 2})
    content = flower_private.record_dict({"update": config, "metrics": metrics})
    assert type(metrics) is MetricRecord and metrics == MetricRecord(METRICS)
    assert type(content) is RecordDict and dict(content) == {"update": config, "metrics": metrics}
    assert metrics.deflate() == MetricRecord(METRICS).deflate()
    assert config.deflate() == ConfigRecord(dict(config)).deflate()
    assert content.deflate() == RecordDict({"update": config, "metrics": metrics}).deflate()
    del metrics["partition-id"]  # still a working record: the server strips its own metrics
    metrics["loss"] = 1.0
    assert dict(metrics) == {"num-examples": 50, "train-loss": 0.25, "loss": 1.0}


@pytest.mark.parametrize(
    "entries",
    [
        {"ok": True},
        {"n": 1.0, "x": "text"},
        {3: 1},
        {"x": [1, 2]},
        {"x": __import__("numpy").float32(1)},
    ],
)
def test_metric_values_flower_refuses_are_refused_with_a_type_error(entries):
    with pytest.raises(TypeError):
        flower_private.metric_record(entries)


def test_config_and_record_dict_check_their_entries():
    with pytest.raises(TypeError, match="ConfigRecord value 'x'"):
        flower_private.config_record({"x": object()})
    with pytest.raises(TypeError, match="RecordDict entries"):
        flower_private.record_dict({"metrics": {"n": 1}})
    assert flower_private.record_dict({"a": ArrayRecord()})["a"] == ArrayRecord()


def test_fast_and_flowers_replies_answer_their_message_alike():
    msg = message(RecordDict(), src=1, dst=7, message_type="train")
    fast, checked = (
        builder.reply(msg, {"metrics": builder.metric(dict(METRICS))})
        for builder in (flower_private.FAST_RECORDS, FLOWER_RECORDS)
    )
    for reply in (fast, checked):
        assert reply.metadata.reply_to_message_id == msg.metadata.message_id
        assert reply.metadata.src_node_id == 7
    assert fast.content.deflate() == checked.content.deflate()


def test_a_pushed_message_gets_the_id_it_is_stamped_with():
    msg = Message(RecordDict(), 5, "train", group_id="1")
    flower_private.stamp_message_id(msg, "abc")
    assert msg.metadata.message_id == "abc"


def test_another_flower_release_without_the_message_id_attribute_is_refused(monkeypatch):
    monkeypatch.setattr(flower_private.flwr, "__version__", "9.0.0")
    msg = Message(RecordDict(), 5, "train", group_id="1")
    flower_private.stamp_message_id(msg, "kept")  # the attribute is there: still written
    assert msg.metadata.message_id == "kept"
    del msg.metadata.__dict__["_message_id"]
    with pytest.raises(flower_private.FlowerInternalsChanged, match="flwr 9.0.0"):
        flower_private.stamp_message_id(msg, "abc")


def test_the_run_identity_is_set_for_the_block_and_restored_after_it():
    before = (TaskIdentity.run_id, TaskIdentity.node_id)
    with pytest.raises(RuntimeError, match="inside"):
        with flower_private.task_identity(41, 3):
            assert (TaskIdentity.run_id, TaskIdentity.node_id) == (41, 3)
            raise RuntimeError("inside")
    assert (TaskIdentity.run_id, TaskIdentity.node_id) == before
