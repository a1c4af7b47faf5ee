"""Local DP on the device: a real digits round whose upload is clipped and noised before it is
encoded (seeded noise reproduces, secret noise does not), and the wire mechanism by hand."""

import math

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MessageType, RecordDict

from client_sdk import model_arrays, train_round
from client_sdk.tasks.digits import digits_task
from simulations.partitioners import IidPartitioner
from tests.messages import message, node_context
from wire import PAYLOAD_FIELD, UPDATE_RECORD_KEY, decode_update, keys
from wire.dp import local_dp

TASK = digits_task()
GLOBAL = model_arrays(TASK.build_model(seed=1))


def _data(context, config):
    pid = int(context.node_config["partition-id"])
    return TASK.data.client_data(pid, 4, partitioner=IidPartitioner(), seed=0)


def _upload(allow_seeded_noise=True, **config):
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}),
            "config": ConfigRecord({"server-round": 2, "seed": 5, **config}),
        }
    )
    msg = message(content, src=1, dst=7, message_type=MessageType.TRAIN)
    reply = train_round(TASK, msg, node_context(1, 4), _data, allow_seeded_noise=allow_seeded_noise)
    payload = reply.content[UPDATE_RECORD_KEY][PAYLOAD_FIELD]
    return decode_update(payload).as_dict()


def test_the_upload_is_clipped_and_noised_on_the_device():
    plain = _upload()
    dp = {keys.DP_LOCAL_CLIP: 0.5, keys.DP_LOCAL_STDDEV: 0.01, keys.DP_LOCAL_SEEDED: True}
    noised = _upload(**dp)
    assert list(noised) == list(plain) == list(GLOBAL)  # the model's tensor order
    flat_plain = np.concatenate([plain[k].ravel() for k in sorted(plain)])
    flat_noised = np.concatenate([noised[k].ravel() for k in sorted(noised)])
    assert np.linalg.norm(flat_plain) > 0.5  # the clip binds
    clipped = flat_plain * (0.5 / np.linalg.norm(flat_plain))
    residual = flat_noised - clipped  # the noise alone: stddev 0.01 per coordinate
    assert abs(residual.std() - 0.01) < 5 * 0.01 / math.sqrt(2 * residual.size)
    assert all(np.array_equal(noised[k], _upload(**dp)[k]) for k in noised)  # seeded: repeats
    secret = {**dp, keys.DP_LOCAL_SEEDED: False}
    assert not np.array_equal(_upload(**secret)["0.weight"], _upload(**secret)["0.weight"])


def test_a_server_cannot_switch_a_devices_noise_to_a_seed_it_knows():
    """A device's app leaves seeded noise off, so the server's dp-local-seeded leaves the noise
    secret; a simulator's app that allows it takes only an exact True (not "false" or 1)."""
    dp = {keys.DP_LOCAL_CLIP: 0.5, keys.DP_LOCAL_STDDEV: 0.01}
    for allowed, asked in ((False, True), (True, "false"), (True, 1)):
        first, second = (
            _upload(allow_seeded_noise=allowed, **dp, **{keys.DP_LOCAL_SEEDED: asked})["0.weight"]
            for _ in range(2)
        )
        assert not np.array_equal(first, second), (allowed, asked)


def test_local_dp_by_hand():
    deltas = {"b": np.array([0.0, 4.0], np.float32), "a": np.array([[3.0]], np.float32)}
    out = local_dp(deltas, 1.0, 0.0, np.random.default_rng(0))  # norm 5 -> 1, no noise
    assert list(out) == ["b", "a"]  # the update's order, kept
    assert out["a"].shape == (1, 1) and np.allclose(out["a"], [[0.6]])
    assert np.allclose(out["b"], [0.0, 0.8])
