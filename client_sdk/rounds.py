"""One training round on a client, split in the parts every runtime shares.

:func:`plan_round` reads what the server sent (model, pruning mask, codec, schedule) and
:func:`upload_reply` turns a locally trained model into the compact reply. The SDK's ClientApp
trains one model between the two; Pollen's batched simulation engine trains K clients at once
between them, so both runtimes send byte-for-byte the same kind of reply. Other packages use
these through :mod:`client_sdk.client_round`, the seam's public API.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord

from client_sdk.feedback import encode_with_feedback, residual_norm
from client_sdk.records import FLOWER_RECORDS, RecordBuilder
from client_sdk.secagg import masked_reply
from client_sdk.seeding import client_seed, client_seeds
from client_sdk.task import Task, TaskConfigError
from client_sdk.training import LocalSchedule, TrainStats
from client_sdk.weights import model_arrays, tensor_specs
from wire import (
    DOWNLOAD_RECORD_KEY,
    MASK_FIELD,
    PAYLOAD_FIELD,
    UPDATE_RECORD_KEY,
    CodecConfigError,
    CodecSpec,
    MaskSet,
    decode_update,
    keys,
)
from wire.ddp_vector import DdpVectorSpec, vector_spec_from_config
from wire.dp import local_dp
from wire.rotation import block_for, rotate
from wire.secagg_protocol import SECAGG_RECORD_KEY
from wire.secagg_vector import flatten_kept

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

    def seed_for(self, partition_id: int) -> int:
        return client_seed(self.run_seed, self.server_round, partition_id)

    def seeds_for(self, partition_ids: Sequence[int]) -> list[int]:
        """``[self.seed_for(pid) for pid in partition_ids]``, computed at once."""
        return client_seeds(self.run_seed, self.server_round, partition_ids)


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
    )


def upload_reply(
    msg: Message,
    plan: RoundPlan,
    context: Context,
    local: dict[str, np.ndarray],
    stats: TrainStats,
    update_hook: UpdateHook | None = None,
    *,
    records: RecordBuilder = FLOWER_RECORDS,
) -> Message:
    """Encode ``local - global`` (trained parameters only) and wrap it in the reply Message
    (``records``: how its records are built, Flower's checked constructors by default)."""
    delta = {
        name: local[name] - g
        for name, g in plan.global_arrays.items()
        if not name.startswith(plan.frozen)
    }
    if update_hook is not None:
        delta = update_hook(delta, context, plan.config)
    if keys.DP_LOCAL_CLIP in plan.config:  # local DP: clipped and noised before it leaves
        delta = local_privacy(delta, plan, context)
    if SECAGG_RECORD_KEY in msg.content:
        return secure_reply(msg, plan, context, delta, stats)
    carried = residual_norm(context.state) if plan.error_feedback else 0.0
    payload = encode_with_feedback(
        delta,
        server_round=plan.server_round,
        codec=plan.codec,
        masks=plan.masks,
        rng=np.random.default_rng(plan.seed_for(partition_id_of(context))),
        state=context.state if plan.error_feedback else None,
    )
    return reply_message(msg, plan, context, payload, stats, carried, records=records)


def local_privacy(
    delta: dict[str, np.ndarray], plan: RoundPlan, context: Context
) -> dict[str, np.ndarray]:
    """The server's local-DP clip and noise applied here (:func:`wire.dp.local_dp`). The noise
    comes from ``os.urandom``: one the server could recompute would protect nothing from it;
    ``dp-local-seeded`` (reproducible experiments) draws it from the client's round seed."""
    clip = float(plan.config[keys.DP_LOCAL_CLIP])  # type: ignore[arg-type]
    stddev = float(plan.config.get(keys.DP_LOCAL_STDDEV, 0.0))  # type: ignore[arg-type]
    if plan.config.get(keys.DP_LOCAL_SEEDED, False):
        seed: int | list[int] = [plan.seed_for(partition_id_of(context)), 0x4C4450]
    else:
        seed = int.from_bytes(os.urandom(32), "little")
    return local_dp(delta, clip, stddev, np.random.default_rng(seed))


def reply_metrics(
    plan: RoundPlan,
    context: Context,
    stats: TrainStats,
    upload_bytes: int,
    carried: float = 0.0,
    residual: float | None = None,
    *,
    records: RecordBuilder = FLOWER_RECORDS,
) -> MetricRecord:
    """What the server weighs (``num-examples``) and logs for one client's train reply
    (``residual``: the stored residual's norm when the caller has it, else read from state)."""
    values: dict[str, int | float] = {
        "num-examples": int(stats.num_examples),
        "train-loss": float(stats.mean_loss),
        "train-steps": int(stats.steps),
        "partition-id": partition_id_of(context),
        "upload-bytes": int(upload_bytes),
    }
    if plan.error_feedback:
        values["residual-carried"] = float(carried)
        values["residual-norm"] = float(
            residual_norm(context.state) if residual is None else residual
        )
    return records.metric(values)


def reply_message(
    msg: Message,
    plan: RoundPlan,
    context: Context,
    payload: bytes,
    stats: TrainStats,
    carried: float = 0.0,
    residual: float | None = None,
    *,
    records: RecordBuilder = FLOWER_RECORDS,
) -> Message:
    """The train reply: the encoded update and the metrics the server weighs and logs."""
    metrics = reply_metrics(plan, context, stats, len(payload), carried, residual, records=records)
    update = records.config({PAYLOAD_FIELD: payload})
    return records.reply(msg, {UPDATE_RECORD_KEY: update, "metrics": metrics})


def secure_reply(
    msg: Message,
    plan: RoundPlan,
    context: Context,
    delta: dict[str, np.ndarray],
    stats: TrainStats,
) -> Message:
    """Secure aggregation's masked upload: m bits per kept coordinate (+ the weight), no header.

    The server only learns the sum, so the reply carries no ``num-examples``: the weight is
    inside the masked vector (:mod:`wire.secagg_vector`). Under distributed DP
    (:mod:`wire.ddp_vector`) the vector is the clipped, rotated, rounded and noised update and
    its rounding and noise come from ``os.urandom`` (noise the server could recompute would
    protect nothing), or from the client's round seed when the round config says
    ``dp-local-seeded`` (reproducible experiments only).
    """
    if plan.error_feedback or plan.codec.topk:
        raise TaskConfigError(
            "secure aggregation sums one shared grid of integers: it cannot be combined with "
            "top-k sparsification or error feedback"
        )
    spec = vector_spec_from_config(msg.content[SECAGG_RECORD_KEY])
    flat = flatten_kept(delta, list(delta), plan.masks)
    if plan.codec.rotate == "client":
        raise TaskConfigError("secure aggregation sums the uploads: rotate must be shared")
    seed: int | list[int] = plan.seed_for(partition_id_of(context))
    if isinstance(spec, DdpVectorSpec):
        if plan.codec.rotate != "none":
            raise TaskConfigError(
                "distributed DP rotates by itself: the codec's rotate must be none"
            )
        if not plan.config.get(keys.DP_LOCAL_SEEDED, False):
            seed = int.from_bytes(os.urandom(32), "little")
    elif plan.codec.rotate == "shared":  # clip and quantize the rotated vector (the sum unrotates)
        block = block_for(flat.size, plan.codec.rotate_block)
        flat = rotate(flat, plan.codec.rotate_seed, block)
    rng = np.random.default_rng(seed)
    vector, clipped = spec.quantize(flat, spec.weight_of(stats.num_examples), rng)
    return masked_reply(msg, context, vector, secure_metrics(context, stats, clipped, flat.size))


def secure_metrics(context: Context, stats: TrainStats, clipped: int, size: int) -> MetricRecord:
    """A masked upload's metrics: no ``num-examples`` (the weight is inside the masked vector)."""
    return MetricRecord(
        {
            "train-loss": stats.mean_loss,
            "partition-id": partition_id_of(context),
            "clipped-fraction": clipped / max(size, 1),
        }
    )
