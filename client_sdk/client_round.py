"""One client round, the seam every runtime shares: plan -> local update -> encode -> reply.

1. plan: :func:`plan_round` reads the server's train message (model, pruning mask, codec,
   schedule, seeds) into a :class:`RoundPlan`;
2. local update: :func:`local_update` trains one client's model as the plan says;
3. encode + reply: :func:`upload_reply` encodes ``local - global`` (top-k, error feedback,
   quantization, or secure aggregation's masked vector) and wraps it in the reply Message.

A device's ClientApp runs the three for one client (:func:`train_round`). Pollen's batched
simulator runs step 1 once per round, trains K clients at once in place of step 2, and builds
the replies with step 3's parts (:func:`reply_message`, :func:`reply_metrics`, the secure
aggregation steps below, the error-feedback state), so both runtimes send byte-for-byte the
same replies. This module (with the package's ``__init__``) is the SDK's public API for that
seam; an import-linter contract keeps ``simulations`` from importing the modules behind it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message

from client_sdk.local_model import FakeQuantInt8, finish_local_model, prepare_local_model
from client_sdk.records import FLOWER_RECORDS, RecordBuilder
from client_sdk.rounds import RoundPlan, TaskSource, UpdateHook, partition_id_of, plan_round
from client_sdk.secagg import MaskPeers, mark_masked, mask_peers, masked_message, share_keys, unmask
from client_sdk.task import ClientData
from client_sdk.training import TrainStats, targets_tensor, train_local
from client_sdk.upload import (
    flat_norm,
    load_residual,
    reply_message,
    reply_metrics,
    secure_metrics,
    store_flat_residual,
    upload_reply,
)
from client_sdk.weights import load_arrays, model_arrays

# (node context, the server's config for this round) -> this client's data
DataProvider = Callable[[Context, ConfigRecord], ClientData]

__all__ = [
    "FLOWER_RECORDS",
    "DataProvider",
    "FakeQuantInt8",
    "MaskPeers",
    "RecordBuilder",
    "RoundPlan",
    "TaskSource",
    "TrainStats",
    "UpdateHook",
    "flat_norm",
    "load_residual",
    "local_update",
    "mark_masked",
    "mask_peers",
    "masked_message",
    "partition_id_of",
    "plan_round",
    "reply_message",
    "reply_metrics",
    "secure_metrics",
    "share_keys",
    "store_flat_residual",
    "targets_tensor",
    "train_round",
    "unmask",
    "upload_reply",
]


def local_update(
    plan: RoundPlan, data: ClientData, seed: int
) -> tuple[dict[str, np.ndarray], TrainStats]:
    """Step 2 for one client: the plan's global model, pruned, fake-quantized and partly
    frozen as the server asked, trained on ``data`` with shuffles drawn from ``seed``; the
    trained model's arrays (parametrizations baked in) and the training statistics."""
    model = plan.task.build_model(seed=0)
    load_arrays(model, plan.global_arrays)
    prepare_local_model(
        model,
        masks=None if plan.masks is None else plan.masks.masks,
        qat=plan.qat,
        frozen=plan.frozen,
    )
    generator = torch.Generator().manual_seed(seed)
    stats = train_local(model, plan.task, data, plan.schedule, generator)
    finish_local_model(model)
    return model_arrays(model), stats


def train_round(
    task: TaskSource,
    msg: Message,
    context: Context,
    data: DataProvider,
    update_hook: UpdateHook | None = None,
    *,
    allow_seeded_noise: bool = False,
) -> Message:
    """The whole round for one client: plan, local update, encode, reply
    (``allow_seeded_noise``: :func:`client_sdk.upload.seeded_noise`)."""
    plan = plan_round(task, msg)
    client_data = data(context, plan.config)
    local, stats = local_update(plan, client_data, plan.seed_for(partition_id_of(context)))
    return upload_reply(
        msg, plan, context, local, stats, update_hook, allow_seeded_noise=allow_seeded_noise
    )
