import pytest
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from client_sdk import records
from tests.messages import message

METRICS = {"num-examples": 50, "train-loss": 0.25, "partition-id": 3}


def test_the_flower_release_keeps_record_entries_where_the_fast_path_puts_them():
    assert records.FAST  # flwr 1.42: else every record below takes the checked constructor


def test_fast_records_equal_and_serialize_like_flowers_own():
    metrics = records.metric_record(dict(METRICS))
    config = records.config_record({"payload": b"\x00\x01", "pool-id": "ab", "size": 2})
    content = records.record_dict({"update": config, "metrics": metrics})
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
        records.metric_record(entries)


def test_config_and_record_dict_check_their_entries():
    with pytest.raises(TypeError, match="ConfigRecord value 'x'"):
        records.config_record({"x": object()})
    with pytest.raises(TypeError, match="RecordDict entries"):
        records.record_dict({"metrics": {"n": 1}})
    assert records.record_dict({"a": ArrayRecord()})["a"] == ArrayRecord()


def test_reply_answers_its_message():
    msg = message(RecordDict(), src=1, dst=7, message_type="train")
    reply = records.reply(msg, {"metrics": records.metric_record(dict(METRICS))})
    assert reply.metadata.reply_to_message_id == msg.metadata.message_id
    assert reply.metadata.src_node_id == 7 and reply.content["metrics"] == MetricRecord(METRICS)
