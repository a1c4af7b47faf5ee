"""Build a Flower ClientApp (Message API) from a Task.

The train handler runs one client round (:func:`client_sdk.client_round.train_round`: load
the global model, train locally, reply with the local-minus-global delta encoded by
:mod:`wire`, never raw pickled tensors). The evaluate
handler reports loss/accuracy on the client's local test split; the query handler tells the
server which partition this node holds, so the server can sample clients reproducibly. The
``query.secagg_*`` handlers are the client's stages of secure aggregation
(:mod:`client_sdk.secagg`); the masked upload itself is the train reply.
"""

from __future__ import annotations

import logging
import math

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client_sdk import secagg
from client_sdk.client_round import DataProvider, train_round
from client_sdk.rounds import (
    TaskSource,
    UpdateHook,
    named_arrays,
    partition_id_of,
    resolve_task,
    round_config,
)
from client_sdk.seeding import client_seed
from client_sdk.training import evaluate_metrics
from client_sdk.weights import load_arrays

log = logging.getLogger(__name__)

__all__ = ["DataProvider", "build_client_app", "client_seed", "partition_id_of"]


def build_client_app(
    task: TaskSource,
    data: DataProvider,
    *,
    update_hook: UpdateHook | None = None,
    allow_seeded_noise: bool = False,
) -> ClientApp:
    """A Flower ClientApp that trains ``task`` on the data ``data`` returns for this node.

    ``update_hook`` may change the delta before it is compressed and sent (simulated attacks,
    local differential-privacy noise). ``allow_seeded_noise``: a simulator's app lets the
    server's ``dp-seeded-noise`` draw DP noise from the client's round seed (reproducible
    experiments); a device's app leaves it off, so its noise is always secret.
    """
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return train_round(  # .client_round
            task, msg, context, data, update_hook, allow_seeded_noise=allow_seeded_noise
        )

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
