"""The client-round seam: plan -> local update -> encode -> reply, as the ClientApp runs it."""

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MessageType, RecordDict

from client_sdk import build_client_app, local_update, model_arrays, plan_round, train_round
from client_sdk.tasks.digits import digits_task
from simulations.partitioners import IidPartitioner
from tests.messages import message, node_context
from wire import PAYLOAD_FIELD, UPDATE_RECORD_KEY

TASK = digits_task()
GLOBAL = model_arrays(TASK.build_model(seed=1))


def _data(context, config):
    pid = int(context.node_config["partition-id"])
    return TASK.data.client_data(pid, 4, partitioner=IidPartitioner(), seed=0)


def _train(**config):
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}),
            "config": ConfigRecord({"server-round": 2, "seed": 5, **config}),
        }
    )
    return message(content, src=1, dst=7, message_type=MessageType.TRAIN)


def test_the_client_app_sends_exactly_the_seams_reply():
    msg = _train(**{"quant-bits": 4})
    ours = train_round(TASK, msg, node_context(1, 4), _data)
    app_reply = build_client_app(TASK, _data)(msg, node_context(1, 4))
    update = ours.content[UPDATE_RECORD_KEY][PAYLOAD_FIELD]
    assert update == app_reply.content[UPDATE_RECORD_KEY][PAYLOAD_FIELD]
    assert dict(ours.content["metrics"]) == dict(app_reply.content["metrics"])


def test_a_local_update_is_reproducible_from_its_seed_and_trains_every_example():
    plan = plan_round(TASK, _train())
    data = _data(node_context(1, 4), plan.config)
    first, stats = local_update(plan, data, seed=11)
    again, _ = local_update(plan, data, seed=11)
    other, _ = local_update(plan, data, seed=12)
    assert stats.num_examples == data.num_train and stats.steps > 0
    assert all(np.array_equal(first[n], again[n]) for n in first)
    assert any(not np.array_equal(first[n], other[n]) for n in first)
    assert any(not np.array_equal(first[n], GLOBAL[n]) for n in first)  # it trained
