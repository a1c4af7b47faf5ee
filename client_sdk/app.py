"""Build a Flower ClientApp (Message API) from a Task.

The train handler loads the global model, trains locally, and replies with the
local-minus-global delta encoded by :mod:`wire` (never raw pickled tensors). The evaluate
handler reports loss/accuracy on the client's local test split; the query handler tells the
server which partition this node holds, so the server can sample clients reproducibly. The
``query.secagg_*`` handlers are the client's stages of secure aggregation
(:mod:`client_sdk.secagg`); the masked upload itself is the train reply.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client_sdk import secagg
from client_sdk.local_model import finish_local_model, prepare_local_model
from client_sdk.rounds import (
    TaskSource,
    UpdateHook,
    named_arrays,
    partition_id_of,
    plan_round,
    resolve_task,
    round_config,
    upload_reply,
)
from client_sdk.seeding import client_seed
from client_sdk.task import ClientData
from client_sdk.training import evaluate_metrics, train_local
from client_sdk.weights import load_arrays, model_arrays

log = logging.getLogger(__name__)

# (node context, the server's config for this round) -> this client's data
DataProvider = Callable[[Context, ConfigRecord], ClientData]

__all__ = ["DataProvider", "build_client_app", "client_seed", "partition_id_of"]


def build_client_app(
    task: TaskSource, data: DataProvider, *, update_hook: UpdateHook | None = None
) -> ClientApp:
    """A Flower ClientApp that trains ``task`` on the data ``data`` returns for this node.

    ``update_hook`` may change the delta before it is compressed and sent (simulated attacks,
    local differential-privacy noise).
    """
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        plan = plan_round(task, msg)
        model = plan.task.build_model(seed=0)
        load_arrays(model, plan.global_arrays)
        prepare_local_model(
            model,
            masks=None if plan.masks is None else plan.masks.masks,
            qat=plan.qat,
            frozen=plan.frozen,
        )
        client_data = data(context, plan.config)
        generator = torch.Generator().manual_seed(plan.seed_for(partition_id_of(context)))
        stats = train_local(model, plan.task, client_data, plan.schedule, generator)
        finish_local_model(model)
        return upload_reply(msg, plan, context, model_arrays(model), stats, update_hook)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        config = round_config(msg)
        the_task = resolve_task(task, config)
        model = the_task.build_model(seed=0)
        load_arrays(model, named_arrays(msg))
        client_data = data(context, config)
        found = evaluate_metrics(model, the_task, client_data.x_test, client_data.y_test)
        metrics = MetricRecord(
            {
                "num-examples": len(client_data.y_test),
                **{f"eval-{k}": v for k, v in found.items() if math.isfinite(v)},
            }
        )
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        info = MetricRecord({"partition-id": partition_id_of(context)})
        return Message(content=RecordDict({"node-info": info}), reply_to=msg)

    # secure aggregation (SecAgg+): the stages around the masked train reply
    app.query("secagg_keys")(secagg.advertise_keys)
    app.query("secagg_shares")(secagg.share_keys)
    app.query("secagg_unmask")(secagg.unmask)

    return app
