"""A client's round plan and a few clients' data, for the batched engine's equality tests."""

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MessageType, RecordDict

from client_sdk import model_arrays
from client_sdk.rounds import plan_round
from simulations.partitioners import parse_partition
from tests.messages import message
from wire import MASK_FIELD, MaskSet

CPU = torch.device("cpu")


def round_plan(task, config, prune=False):
    """The SDK's plan for round 2 of ``task`` under ``config`` (pruned at the median if asked)."""
    arrays = model_arrays(task.build_model(seed=1))
    if prune:
        masks = MaskSet(
            {n: np.abs(a) > np.median(np.abs(a)) for n, a in arrays.items() if a.ndim >= 2}
        )
        arrays = masks.apply(arrays)
        config = {**config, MASK_FIELD: masks.encode()}
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "config": ConfigRecord({"server-round": 2, "seed": 3, **config}),
        }
    )
    return plan_round(task, message(content, src=0, dst=5, message_type=MessageType.TRAIN))


def client_data(task, k=5):
    """The first ``k`` clients' data (digits: Dirichlet(0.5) partitions, unequal sizes)."""
    pooled = task.name == "digits"
    partitioner = parse_partition("dirichlet:0.5", min_samples=2) if pooled else None
    return [task.data.client_data(i, 12, partitioner=partitioner, seed=0) for i in range(k)]
