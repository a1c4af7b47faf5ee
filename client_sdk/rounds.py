"""Step 1 of a client round: the plan, read from the server's train message.

:func:`plan_round` reads what the server sent (model, pruning mask, codec, schedule, seeds)
into a :class:`RoundPlan`; :func:`client_sdk.upload.upload_reply` later turns the model trained
on it into the reply. The SDK's ClientApp trains one model between the two; Pollen's batched
simulation engine trains K clients at once between them, so both runtimes send byte-for-byte
the same kind of reply. Other packages use these through :mod:`client_sdk.client_round`, the
seam's public API.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, Context, Message

from client_sdk.seeding import client_seed, client_seeds
from client_sdk.task import Task, TaskConfigError
from client_sdk.training import LocalSchedule
from client_sdk.weights import model_arrays, tensor_specs
from wire import (
    DOWNLOAD_RECORD_KEY,
    MASK_FIELD,
    PAYLOAD_FIELD,
    CodecConfigError,
    CodecSpec,
    MaskSet,
    TensorSpec,
    decode_update,
    keys,
)
from wire.header_ref import REF_BYTES, RoundHeaders

# a fixed Task, or a resolver from the task name the server sends in its config
TaskSource = Task | Callable[[str], Task]
# (local-minus-global delta, node context, round config) -> the delta to upload
UpdateHook = Callable[[dict[str, np.ndarray], Context, ConfigRecord], dict[str, np.ndarray]]


def partition_id_of(context: Context) -> int:
    """The node's ``partition-id`` (simulation sets it; deployments pass ``--node-config``)."""
    value = context.node_config.get(keys.PARTITION_ID, -1)
    return int(value) if isinstance(value, (int, float)) else -1


def named_arrays(msg: Message) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in msg.content["arrays"].items()}


def round_config(msg: Message) -> ConfigRecord:
    return msg.content.config_records.get("config", ConfigRecord())


_CODEC = CodecSpec()  # the defaults of a key the server left out


def codec_from_config(config: ConfigRecord) -> CodecSpec:
    """The update compression the server asked for in this round's config."""
    try:
        return CodecSpec(
            quant_bits=int(config.get(keys.QUANT_BITS, _CODEC.quant_bits)),
            quant_chunk=int(config.get(keys.QUANT_CHUNK, _CODEC.quant_chunk)),
            stochastic=config.get(keys.QUANT_ROUNDING, "stochastic") != "nearest",
            topk=float(config.get(keys.TOPK, _CODEC.topk)),
            scheme=str(config.get(keys.QUANT_SCHEME, _CODEC.scheme)),
            eden_scale=str(config.get(keys.EDEN_SCALE, _CODEC.eden_scale)),
            rotate=str(config.get(keys.ROTATE, _CODEC.rotate)),
            rotate_block=_int(
                config.get(keys.ROTATE_BLOCK, _CODEC.rotate_block), keys.ROTATE_BLOCK
            ),
            rotate_seed=_int(config.get(keys.ROTATE_SEED, _CODEC.rotate_seed), keys.ROTATE_SEED),
            quant_fraction=float(config.get(keys.QUANT_FRACTION, _CODEC.quant_fraction)),
        )
    except CodecConfigError as err:
        raise TaskConfigError(f"server config: {err}") from None


def _int(value: object, key: str) -> int:
    if type(value) is not int:
        raise TaskConfigError(f"server config: {key} must be an int, got {value!r}")
    return value


def resolve_task(task: TaskSource, config: ConfigRecord) -> Task:
    if isinstance(task, Task):
        return task
    name = config.get(keys.TASK)
    if not isinstance(name, str):
        raise TaskConfigError("the server's config has no 'task' name for this client to run")
    return task(name)


def local_schedule(task: Task, config: ConfigRecord) -> LocalSchedule:
    """The Task's schedule, with any positive override the server sent in its config."""

    def pick(key: str, default: float) -> float:
        value = config.get(key, 0)
        return value if isinstance(value, (int, float)) and value > 0 else default

    return LocalSchedule(
        lr=float(pick(keys.LR, task.optimizer.lr)),
        epochs=int(pick(keys.LOCAL_EPOCHS, task.local_epochs)),
        batch_size=int(pick(keys.BATCH_SIZE, task.batch_size)),
        proximal_mu=float(config.get(keys.PROXIMAL_MU, 0.0) or 0.0),
    )


@dataclass(frozen=True)
class RoundPlan:
    """What the server asked of every client that received this round's message."""

    task: Task
    config: ConfigRecord
    server_round: int
    run_seed: int
    global_arrays: dict[str, np.ndarray]  # the model as the client received it (float32)
    masks: MaskSet | None
    frozen: tuple[str, ...]
    qat: bool
    schedule: LocalSchedule
    codec: CodecSpec
    error_feedback: bool
    header_ref: bytes | None = None  # the digest of the header the server expects, if any

    def seed_for(self, partition_id: int) -> int:
        return client_seed(self.run_seed, self.server_round, partition_id)

    def seeds_for(self, partition_ids: Sequence[int]) -> list[int]:
        """``[self.seed_for(pid) for pid in partition_ids]``, computed at once."""
        return client_seeds(self.run_seed, self.server_round, partition_ids)

    def reference(self, specs: Sequence[TensorSpec]) -> RoundHeaders | None:
        """The headers this client may reference instead of sending (:mod:`wire.header_ref`):
        None unless the server announced a digest and this client expects the same headers."""
        if self.header_ref is None:
            return None
        headers = RoundHeaders(tuple(specs), self.server_round, self.codec, self.masks)
        return headers if headers.digest == self.header_ref else None


def plan_round(task: TaskSource, msg: Message) -> RoundPlan:
    """Parse the server's train message (decoding a compressed download if there is one)."""
    config = round_config(msg)
    the_task = resolve_task(task, config)
    template = model_arrays(the_task.build_model(seed=0))
    shapes = {name: arr.shape for name, arr in template.items()}
    masks = MaskSet.decode(config[MASK_FIELD], expected=shapes) if MASK_FIELD in config else None
    records = msg.content.config_records
    if DOWNLOAD_RECORD_KEY in records:
        payload = records[DOWNLOAD_RECORD_KEY][PAYLOAD_FIELD]
        global_arrays = decode_update(
            payload, expected=tensor_specs(template), masks=masks
        ).as_dict()
    else:
        global_arrays = named_arrays(msg)
    extra = tuple(p for p in str(config.get(keys.FREEZE, "")).split(",") if p)
    return RoundPlan(
        task=the_task,
        config=config,
        server_round=int(config.get(keys.SERVER_ROUND, 0)),
        run_seed=int(config.get(keys.SEED, 0)),
        global_arrays=global_arrays,
        masks=masks,
        frozen=tuple(the_task.frozen) + extra,
        qat=bool(config.get(keys.QAT, False)),
        schedule=local_schedule(the_task, config),
        codec=codec_from_config(config),
        error_feedback=bool(config.get(keys.ERROR_FEEDBACK, False)),
        header_ref=_header_ref(config.get(keys.HEADER_REF)),
    )


def _header_ref(value: object) -> bytes | None:
    """The announced digest; anything else (a wrong type or length) is no announcement: the
    client then sends its full header, which the server checks as always."""
    return value if isinstance(value, bytes) and len(value) == REF_BYTES else None
