"""Build a Flower ClientApp (Message API) from a Task.

The train handler loads the global model, trains locally, and replies with the
local-minus-global delta encoded by :mod:`wire` (never raw pickled tensors). The evaluate
handler reports loss/accuracy on the client's local test split; the query handler tells the
server which partition this node holds, so the server can sample clients reproducibly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client_sdk.feedback import encode_with_feedback, residual_norm
from client_sdk.local_model import finish_local_model, prepare_local_model
from client_sdk.task import ClientData, Task, TaskConfigError
from client_sdk.training import LocalSchedule, evaluate_model, train_local
from client_sdk.weights import load_arrays, model_arrays, tensor_specs
from wire import (
    DOWNLOAD_RECORD_KEY,
    MASK_FIELD,
    PAYLOAD_FIELD,
    UPDATE_RECORD_KEY,
    CodecConfigError,
    CodecSpec,
    MaskSet,
    decode_update,
)

log = logging.getLogger(__name__)

# (node context, the server's config for this round) -> this client's data
DataProvider = Callable[[Context, ConfigRecord], ClientData]
# a fixed Task, or a resolver from the task name the server sends in its config
TaskSource = Task | Callable[[str], Task]
# (local-minus-global delta, node context, round config) -> the delta to upload
UpdateHook = Callable[[dict[str, np.ndarray], Context, ConfigRecord], dict[str, np.ndarray]]


def partition_id_of(context: Context) -> int:
    """The node's ``partition-id`` (simulation sets it; deployments pass ``--node-config``)."""
    value = context.node_config.get("partition-id", -1)
    return int(value) if isinstance(value, (int, float)) else -1


def client_seed(seed: int, server_round: int, partition_id: int) -> int:
    """A per-client, per-round seed derived from the run seed (numpy SeedSequence)."""
    state = np.random.SeedSequence([seed, server_round, partition_id + 1]).generate_state(1)
    return int(state[0])


def _named_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


def codec_from_config(config: ConfigRecord) -> CodecSpec:
    """The update compression the server asked for in this round's config."""
    try:
        return CodecSpec(
            quant_bits=int(config.get("quant-bits", 0)),
            quant_chunk=int(config.get("quant-chunk", 1024)),
            stochastic=config.get("quant-rounding", "stochastic") != "nearest",
            topk=float(config.get("topk", 0.0)),
        )
    except CodecConfigError as err:
        raise TaskConfigError(f"server config: {err}") from None


def frozen_prefixes(task: Task, config: ConfigRecord) -> tuple[str, ...]:
    extra = [p for p in str(config.get("freeze", "")).split(",") if p]
    return tuple(task.frozen) + tuple(extra)


def received_model(
    msg: Message, model_arrays_now: dict[str, np.ndarray], masks: MaskSet | None
) -> dict[str, np.ndarray]:
    """The global model from the message: float32 arrays, or a compressed download payload."""
    records = msg.content.config_records
    if DOWNLOAD_RECORD_KEY in records:
        payload = records[DOWNLOAD_RECORD_KEY][PAYLOAD_FIELD]
        return decode_update(
            payload, expected=tensor_specs(model_arrays_now), masks=masks
        ).as_dict()
    return _named_arrays(msg.content["arrays"])


def _resolve(task: TaskSource, config: ConfigRecord) -> Task:
    if isinstance(task, Task):
        return task
    name = config.get("task")
    if not isinstance(name, str):
        raise TaskConfigError("the server's config has no 'task' name for this client to run")
    return task(name)


def _schedule(task: Task, config: ConfigRecord) -> LocalSchedule:
    """The Task's schedule, with any positive override the server sent in its config."""

    def pick(key: str, default: float) -> float:
        value = config.get(key, 0)
        return value if isinstance(value, (int, float)) and value > 0 else default

    return LocalSchedule(
        lr=float(pick("lr", task.optimizer.lr)),
        epochs=int(pick("local-epochs", task.local_epochs)),
        batch_size=int(pick("batch-size", task.batch_size)),
        proximal_mu=float(config.get("proximal-mu", 0.0) or 0.0),
    )


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
        config = msg.content.config_records.get("config", ConfigRecord())
        server_round = int(config.get("server-round", 0))
        the_task = _resolve(task, config)
        model = the_task.build_model(seed=0)
        shapes = {name: arr.shape for name, arr in model_arrays(model).items()}
        masks = (
            MaskSet.decode(config[MASK_FIELD], expected=shapes) if MASK_FIELD in config else None
        )
        global_arrays = received_model(msg, model_arrays(model), masks)
        load_arrays(model, global_arrays)
        frozen = frozen_prefixes(the_task, config)
        prepare_local_model(
            model,
            masks=None if masks is None else masks.masks,
            qat=bool(config.get("qat", False)),
            frozen=frozen,
        )
        client_data = data(context, config)
        pid = partition_id_of(context)
        seed = client_seed(int(config.get("seed", 0)), server_round, pid)
        generator = torch.Generator().manual_seed(seed)
        stats = train_local(model, the_task, client_data, _schedule(the_task, config), generator)
        finish_local_model(model)
        local = model_arrays(model)
        delta = {
            name: local[name] - g
            for name, g in global_arrays.items()
            if not name.startswith(frozen)
        }
        if update_hook is not None:
            delta = update_hook(delta, context, config)
        feedback = bool(config.get("error-feedback", False))
        carried = residual_norm(context.state) if feedback else 0.0
        payload = encode_with_feedback(
            delta,
            server_round=server_round,
            codec=codec_from_config(config),
            masks=masks,
            rng=np.random.default_rng(seed),
            state=context.state if feedback else None,
        )
        metrics = MetricRecord(
            {
                "num-examples": stats.num_examples,
                "train-loss": stats.mean_loss,
                "partition-id": pid,
                "upload-bytes": len(payload),
                **(
                    {"residual-carried": carried, "residual-norm": residual_norm(context.state)}
                    if feedback
                    else {}
                ),
            }
        )
        content = RecordDict(
            {UPDATE_RECORD_KEY: ConfigRecord({PAYLOAD_FIELD: payload}), "metrics": metrics}
        )
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        config = msg.content.config_records.get("config", ConfigRecord())
        the_task = _resolve(task, config)
        model = the_task.build_model(seed=0)
        load_arrays(model, _named_arrays(msg.content["arrays"]))
        client_data = data(context, config)
        loss, acc = evaluate_model(model, the_task, client_data.x_test, client_data.y_test)
        metrics = MetricRecord(
            {"num-examples": len(client_data.y_test), "eval-loss": loss, "eval-accuracy": acc}
        )
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        info = MetricRecord({"partition-id": partition_id_of(context)})
        return Message(content=RecordDict({"node-info": info}), reply_to=msg)

    return app
