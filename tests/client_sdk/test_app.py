import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MessageType, RecordDict

from client_sdk import ClientData, TaskConfigError, build_client_app, model_arrays, tensor_specs
from client_sdk.tasks import get_task
from client_sdk.tasks.digits import digits_task
from simulations.partitioners import IidPartitioner
from tests.messages import message, node_context
from wire import PAYLOAD_FIELD, UPDATE_RECORD_KEY, decode_update


def _data(context, config) -> ClientData:
    pid = int(context.node_config["partition-id"])
    return digits_task().data.client_data(pid, 4, partitioner=IidPartitioner(), seed=0)


GLOBAL = model_arrays(digits_task().build_model(seed=1))


def _request(message_type: str, **config) -> object:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}),
            "config": ConfigRecord({"server-round": 3, "task": "digits", **config}),
        }
    )
    return message(content, src=1, dst=7, message_type=message_type)


def test_train_replies_with_a_wire_payload_of_the_local_delta():
    app = build_client_app(get_task, _data)
    reply = app(_request(MessageType.TRAIN, seed=0), node_context(2, 4))
    payload = reply.content.config_records[UPDATE_RECORD_KEY][PAYLOAD_FIELD]
    update = decode_update(payload, expected=tensor_specs(GLOBAL), expected_round=3)
    metrics = reply.content.metric_records["metrics"]
    assert metrics["num-examples"] == _data(node_context(2, 4), None).num_train
    assert metrics["partition-id"] == 2 and metrics["upload-bytes"] == len(payload)
    assert any(np.abs(t).max() > 0 for t in update.tensors)
    assert "arrays" not in reply.content  # weights only travel as wire payloads


def test_train_is_reproducible_and_respects_server_overrides():
    app = build_client_app(digits_task(), _data)
    a = app(_request(MessageType.TRAIN, seed=5, lr=0.01, **{"local-epochs": 1}), node_context(0, 4))
    b = app(_request(MessageType.TRAIN, seed=5, lr=0.01, **{"local-epochs": 1}), node_context(0, 4))
    c = app(_request(MessageType.TRAIN, seed=5), node_context(0, 4))
    key = (UPDATE_RECORD_KEY, PAYLOAD_FIELD)
    pa, pb, pc = (r.content.config_records[key[0]][key[1]] for r in (a, b, c))
    assert pa == pb and pa != pc


def test_evaluate_reports_local_test_metrics():
    app = build_client_app(get_task, _data)
    reply = app(_request(MessageType.EVALUATE), node_context(1, 4))
    metrics = reply.content.metric_records["metrics"]
    assert metrics["num-examples"] >= 1 and 0 <= metrics["eval-accuracy"] <= 1


def test_query_reports_the_partition_id():
    app = build_client_app(get_task, _data)
    reply = app(_request(MessageType.QUERY), node_context(3, 4))
    assert reply.content.metric_records["node-info"]["partition-id"] == 3


def test_missing_task_name_is_a_clear_error():
    app = build_client_app(get_task, _data)
    request = _request(MessageType.TRAIN)
    del request.content.config_records["config"]["task"]
    with pytest.raises(TaskConfigError, match="task"):
        app(request, node_context(0, 4))
