"""A three-weight global model, FedAvg-style train replies and a configured strategy."""

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MessageType, MetricRecord, RecordDict

from strategies import StrategySettings, build_strategy
from tests.messages import message
from tests.strategies.fake_grid import QueryAnsweringGrid
from wire import PAYLOAD_FIELD, UPDATE_RECORD_KEY, encode_update

GLOBAL = {"w": np.array([1.0, 2.0, 3.0], np.float32)}


def float32_arrays(named):
    return ArrayRecord({k: Array(np.asarray(v, np.float32)) for k, v in named.items()})


def train_reply(node, delta, n, server_round=1, partition=None, payload=None):
    """Node ``node``'s train reply: ``delta`` encoded (or ``payload`` as given), ``n`` examples."""
    payload = payload if payload is not None else encode_update(delta, server_round=server_round)
    metrics = {
        "num-examples": n,
        "train-loss": 0.5,
        "partition-id": node if partition is None else partition,
    }
    content = RecordDict(
        {
            UPDATE_RECORD_KEY: ConfigRecord({PAYLOAD_FIELD: payload}),
            "metrics": MetricRecord(metrics),
        }
    )
    return message(content, src=node, dst=1, message_type=MessageType.TRAIN)


def configured(name="fedavg", nodes=2, **kw):
    """A strategy built from ``StrategySettings`` and its round-1 train messages to ``nodes``."""
    strategy = build_strategy(StrategySettings(name=name, **kw))
    grid = QueryAnsweringGrid({n: n for n in range(1, nodes + 1)})
    msgs = list(
        strategy.configure_train(1, float32_arrays(GLOBAL), ConfigRecord({"task": "digits"}), grid)
    )
    return strategy, msgs
