"""Step 3 of a client round: encode ``local - global`` and wrap it in the reply Message.

:func:`upload_reply` takes the plan (:mod:`client_sdk.rounds`) and a trained model and sends
one of: the compact update (:func:`encode_with_feedback` -> :func:`wire.encode_update`), local
DP's clipped and noised update, or secure aggregation's masked vector (:func:`secure_reply`).

Error feedback (Seide et al., "1-bit SGD", Interspeech 2014; Karimireddy et al., "Error
Feedback Fixes SignSGD", ICML 2019; Stich et al. 2018 for top-k): the client keeps
e <- (delta + e) - decode(encode(delta + e)) in its node state between rounds, so the bias of
quantization or sparsification does not accumulate. Residuals at coordinates the current mask
prunes are dropped. The residual is kept as one flat float32 Array plus its layout (names,
shapes): Flower's ``Array`` serializes each array with ``np.save`` and parses it back with
``np.load``, a fixed cost per array each way that one flat Array pays once per client and
round, not once per tensor (benchmarks/README.md).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from client_sdk.records import FLOWER_RECORDS, RecordBuilder
from client_sdk.rounds import RoundPlan, UpdateHook, partition_id_of
from client_sdk.secagg import masked_reply
from client_sdk.task import TaskConfigError
from client_sdk.training import TrainStats
from wire import (
    PAYLOAD_FIELD,
    UPDATE_RECORD_KEY,
    CodecSpec,
    MaskSet,
    TensorSpec,
    decode_update,
    encode_update,
    keys,
)
from wire.ddp_vector import DdpVectorSpec, vector_spec_from_config
from wire.dp import local_dp
from wire.header_ref import RoundHeaders
from wire.rotation import block_for, rotate
from wire.secagg_protocol import SECAGG_RECORD_KEY
from wire.secagg_vector import flatten_kept

RESIDUAL_KEY = "pollen.error-feedback"  # ArrayRecord {"values": flat float32}
LAYOUT_KEY = "pollen.error-feedback.layout"  # ConfigRecord {"names": [...], "shapes": ["8x8"]}


def _flat_residual(state: RecordDict) -> np.ndarray | None:
    record = state.get(RESIDUAL_KEY)
    if not isinstance(record, ArrayRecord) or "values" not in record:
        return None
    return record["values"].numpy()


def flat_norm(flat: np.ndarray | None) -> float:
    """L2 norm of a flat residual (float64 sum of squares), 0 when there is none."""
    return 0.0 if flat is None else float(np.sqrt(np.square(flat, dtype=np.float64).sum()))


def residual_norm(state: RecordDict) -> float:
    return flat_norm(_flat_residual(state))


def load_residual(state: RecordDict) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """The flat residual kept in ``state`` (None without one) and its tensors by name."""
    flat, layout = _flat_residual(state), state.get(LAYOUT_KEY)
    if flat is None or not isinstance(layout, ConfigRecord):
        return flat, {}
    names = list(layout["names"])  # type: ignore[arg-type]
    shapes = [tuple(int(d) for d in s.split("x") if d) for s in layout["shapes"]]  # type: ignore[union-attr]
    sizes = [math.prod(shape) for shape in shapes]
    if sum(sizes) != flat.size:
        return flat, {}
    parts = np.split(flat, np.cumsum(sizes)[:-1])
    return flat, {n: p.reshape(shape) for n, p, shape in zip(names, parts, shapes, strict=True)}


def stored_residual(state: RecordDict) -> dict[str, np.ndarray]:
    """The residual kept in ``state``, per tensor (empty when there is none)."""
    return load_residual(state)[1]


def store_residual(state: RecordDict, residual: Mapping[str, np.ndarray]) -> None:
    values = [np.asarray(v, np.float32).ravel() for v in residual.values()]
    flat = np.concatenate(values) if values else np.zeros(0, np.float32)
    store_flat_residual(state, flat, list(residual), [np.shape(v) for v in residual.values()])


def store_flat_residual(
    state: RecordDict, flat: np.ndarray, names: list[str], shapes: list[tuple[int, ...]]
) -> None:
    """Keep ``flat`` (the tensors ``names`` of ``shapes``, raveled in that order) in ``state``."""
    state[RESIDUAL_KEY] = ArrayRecord({"values": Array(np.asarray(flat, np.float32))})
    state[LAYOUT_KEY] = ConfigRecord(
        {"names": list(names), "shapes": ["x".join(str(d) for d in shape) for shape in shapes]}
    )


def encode_with_feedback(
    delta: Mapping[str, np.ndarray],
    *,
    server_round: int,
    codec: CodecSpec,
    masks: MaskSet | None,
    rng: np.random.Generator,
    state: RecordDict | None,
    node_id: int | None = None,
    reference: Callable[[list[TensorSpec]], RoundHeaders | None] | None = None,
) -> bytes:
    """Encode ``delta`` (+ the stored residual when ``state`` is given) and update the residual.
    ``node_id`` derives a per-client rotation's seed; ``reference`` gives the headers the
    server announced for these tensors (:meth:`RoundPlan.reference`), sent as their digest."""
    target = dict(delta)
    if state is not None:
        stored = stored_residual(state)
        for name, value in target.items():
            if name in stored and stored[name].shape == value.shape:
                target[name] = value + stored[name]
    if masks is not None:
        target = masks.apply(target)
    specs = [TensorSpec(name, tuple(np.shape(value))) for name, value in target.items()]
    headers = None if reference is None else reference(specs)
    payload = encode_update(
        target,
        server_round=server_round,
        codec=codec,
        masks=masks,
        rng=rng,
        node_id=node_id,
        reference=headers,
    )
    if state is not None:
        sent = decode_update(payload, masks=masks, headers=headers, node_id=node_id).as_dict()
        store_residual(state, {name: target[name] - sent[name] for name in target})
    return payload


def upload_reply(
    msg: Message,
    plan: RoundPlan,
    context: Context,
    local: dict[str, np.ndarray],
    stats: TrainStats,
    update_hook: UpdateHook | None = None,
    *,
    records: RecordBuilder = FLOWER_RECORDS,
    allow_seeded_noise: bool = False,
) -> Message:
    """Encode ``local - global`` (trained parameters only) and wrap it in the reply Message
    (``records``: how its records are built, Flower's checked constructors by default;
    ``allow_seeded_noise``: see :func:`seeded_noise`)."""
    delta = {
        name: local[name] - g
        for name, g in plan.global_arrays.items()
        if not name.startswith(plan.frozen)
    }
    if update_hook is not None:
        delta = update_hook(delta, context, plan.config)
    if keys.DP_LOCAL_CLIP in plan.config:  # local DP: clipped and noised before it leaves
        delta = local_privacy(delta, plan, context, seeded_noise(plan, allow_seeded_noise))
    if SECAGG_RECORD_KEY in msg.content:
        return secure_reply(
            msg, plan, context, delta, stats, seeded=seeded_noise(plan, allow_seeded_noise)
        )
    carried = residual_norm(context.state) if plan.error_feedback else 0.0
    payload = encode_with_feedback(
        delta,
        server_round=plan.server_round,
        codec=plan.codec,
        masks=plan.masks,
        rng=np.random.default_rng(plan.seed_for(partition_id_of(context))),
        state=context.state if plan.error_feedback else None,
        node_id=context.node_id,
        reference=plan.reference,
    )
    return reply_message(msg, plan, context, payload, stats, carried, records=records)


def seeded_noise(plan: RoundPlan, allowed: bool) -> bool:
    """Whether this client draws its DP noise from its round seed: only when the server asks
    (``dp-local-seeded`` exactly True) AND the app that runs the client allows it (a simulator,
    for reproducible experiments). A device's app never does: noise the server could recompute
    protects nothing from it, so a server cannot switch a device's noise to a seed it knows."""
    return allowed and plan.config.get(keys.DP_LOCAL_SEEDED) is True


def local_privacy(
    delta: dict[str, np.ndarray], plan: RoundPlan, context: Context, seeded: bool = False
) -> dict[str, np.ndarray]:
    """The server's local-DP clip and noise applied here (:func:`wire.dp.local_dp`). The noise
    comes from ``os.urandom`` unless ``seeded`` (:func:`seeded_noise`): then from the client's
    round seed."""
    clip = float(plan.config[keys.DP_LOCAL_CLIP])  # type: ignore[arg-type]
    stddev = float(plan.config.get(keys.DP_LOCAL_STDDEV, 0.0))  # type: ignore[arg-type]
    if seeded:
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
    *,
    seeded: bool = False,
) -> Message:
    """Secure aggregation's masked upload: m bits per kept coordinate (+ the weight), no header.

    The server only learns the sum, so the reply carries no ``num-examples``: the weight is
    inside the masked vector (:mod:`wire.secagg_vector`). Under distributed DP
    (:mod:`wire.ddp_vector`) the vector is the clipped, rotated, rounded and noised update and
    its rounding and noise come from ``os.urandom`` (noise the server could recompute would
    protect nothing), or from the client's round seed when ``seeded`` (:func:`seeded_noise`).
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
        if not seeded:
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
