"""Train replies of the batched engine, built from one chunk of K trained clients.

Five ways, from the most to the least per-client work:

- :func:`each_reply`: top-k or hooked (simulated attacks) updates go through the SDK's
  own encoder client by client (:func:`client_sdk.rounds.upload_reply`), exactly as on a device;
- :func:`simulations.batched.secure.secure_replies`: secure aggregation's masked uploads,
  quantized, masked and packed for the K clients at once, byte-for-byte the SDK's;
- :func:`quantized_replies`: quantized updates (with or without error feedback) are quantized
  and bit-packed for the K clients at once on the device (:mod:`.codec`), byte-for-byte the
  SDK's payloads; EDEN/DRIVE and EF-signSGD updates, rotated or not, likewise (:mod:`.rotated`;
  never pooled; a rotation before uniform quantization or float32 goes to the SDK's encoder);
- :func:`vectorized_replies`: uncompressed updates, every payload cut from one [K, kept]
  matrix with one shared header (byte-for-byte what the SDK would send);
- :func:`pooled_replies`: when the server's train config allows pooling (its strategy needs
  only the weighted mean, :mod:`wire.pooling`), the chunk's weighted mean is summed on the
  device and sent once; the other K-1 replies carry their metrics and the pool's id. This
  removes the per-client payload copy, the server's per-client decode and its per-client
  addition, which at 10,000 clients per round cost more than training on a GPU. Quantized
  updates pool the same way when ``pool_quantized`` (the engine's default on CUDA): the pool
  carries the weighted mean of what the server would decode from each client's payload (same
  noise, same residuals), and each member counts the bytes of the payload it would have sent.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Error, Message
from flwr.common.constant import ErrorCode

from client_sdk.records import reply
from client_sdk.rounds import RoundPlan, UpdateHook, reply_message, reply_metrics, upload_reply
from simulations.batched.codec import EncodedBlock, decode_chunk, encode_chunk
from simulations.batched.rotated import encode_rotated_chunk
from simulations.batched.rotated import handles as handles_rotated
from simulations.batched.secure import SecureRound, secure_replies
from simulations.batched.training import TrainedChunk, flat_deltas, pooled_delta, weighted_mean
from wire import (
    PAYLOAD_FIELD,
    POOL_ID_FIELD,
    POOL_MEMBER_BYTES_FIELD,
    POOL_SIZE_FIELD,
    POOL_WEIGHT_FIELD,
    POOLING_CONFIG_KEY,
    UPDATE_RECORD_KEY,
    TensorSpec,
    encode_float32_rows,
)
from wire.secagg_protocol import SECAGG_RECORD_KEY


def error_reply(msg: Message, err: BaseException) -> Message:
    reason = f"{type(err).__name__}: {err}"
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


def chunk_replies(
    plan: RoundPlan,
    messages: list[Message],
    contexts: list[Context],
    trained: TrainedChunk,
    device: torch.device,
    hook: UpdateHook | None,
    *,
    pool: bool,
    on_device: bool,
    secure: SecureRound | None = None,
    pool_quantized: bool = False,
) -> tuple[list[Message], int, int]:
    """The chunk's replies, the cheapest way the round allows: (replies, how many travel in a
    pool, how many the SDK's encoder built one by one). ``secure``: what the engine keeps of
    the secure round (agreements, the round's masks); None: a fresh one for this chunk.
    ``pool_quantized``: pool quantized updates too (:func:`pooled_replies`)."""
    plain = SECAGG_RECORD_KEY not in messages[0].content
    if hook is None and plain and on_device and handles_rotated(plan):  # eden, sign
        replies, by_sdk = quantized_replies(
            plan, messages, contexts, trained, device, encode_rotated_chunk
        )
        return replies, 0, by_sdk
    rotates = plan.codec.rotate != "none" or plan.codec.scheme != "uniform"  # the SDK's then
    if hook is None and not plan.codec.topk and plain and not rotates:
        if plan.codec.quant_bits == 0 and not plan.error_feedback:  # float32: the plain delta
            if pool and plan.config.get(POOLING_CONFIG_KEY) is True:
                pooled = pooled_replies(plan, messages, contexts, trained, device)
                if pooled is not None:
                    return pooled, len(pooled), 0
            # no pooling, or a pool whose mean is not finite: each client's own payload
            return vectorized_replies(plan, messages, contexts, trained, device), 0, 0
        if on_device:
            if pool and pool_quantized and plan.config.get(POOLING_CONFIG_KEY) is True:
                pooled = pooled_replies(plan, messages, contexts, trained, device)
                if pooled is not None:
                    return pooled, len(pooled), 0
            replies, by_sdk = quantized_replies(plan, messages, contexts, trained, device)
            return replies, 0, by_sdk
    if hook is None and on_device and SECAGG_RECORD_KEY in messages[0].content:
        secure = SecureRound() if secure is None else secure
        masked, left = secure_replies(plan, messages, contexts, trained, device, secure)
        if left:
            rows = torch.tensor(left, device=device)
            part = TrainedChunk(
                {name: tensor[rows] for name, tensor in trained.local.items()},
                [trained.stats[r] for r in left],
            )
            picked = [messages[r] for r in left], [contexts[r] for r in left]
            masked.update(zip(left, each_reply(plan, *picked, part, None), strict=True))
        return [masked[row] for row in range(len(messages))], 0, len(left)
    replies = each_reply(plan, messages, contexts, trained, hook)
    return replies, 0, len(replies)


def each_reply(
    plan: RoundPlan,
    messages: list[Message],
    contexts: list[Context],
    trained: TrainedChunk,
    hook: UpdateHook | None,
) -> list[Message]:
    """Compressed or hooked updates: the SDK's own encoder, client by client."""
    replies = []
    models = trained.host_models(plan.global_arrays)
    for msg, context, local, stats in zip(messages, contexts, models, trained.stats, strict=True):
        try:
            replies.append(upload_reply(msg, plan, context, local, stats, hook))
        except Exception as err:
            replies.append(error_reply(msg, err))
    return replies


def quantized_replies(
    plan: RoundPlan,
    messages: list[Message],
    contexts: list[Context],
    trained: TrainedChunk,
    device: torch.device,
    encoder: Callable[..., Iterator[tuple[slice, EncodedBlock | None]]] = encode_chunk,
) -> tuple[list[Message], int]:
    """Quantized updates of the chunk from the device codec (``encoder``: uniform
    quantization, or :func:`.rotated.encode_rotated_chunk`), and how many clients the SDK's
    encoder took instead (a block of the codec holding an update that is not finite)."""
    replies: list[Message] = []
    by_sdk = 0
    for rows, encoded in encoder(plan, contexts, trained, device):
        if encoded is None:
            part = TrainedChunk(
                {name: tensor[rows] for name, tensor in trained.local.items()},
                trained.stats[rows],
            )
            replies += each_reply(plan, messages[rows], contexts[rows], part, None)
            by_sdk += len(part.stats)
            continue
        payloads, carried, kept = encoded
        replies += [
            reply_message(msg, plan, context, payload, stats, carried_norm, kept_norm)
            for msg, context, payload, stats, carried_norm, kept_norm in zip(
                messages[rows],
                contexts[rows],
                payloads,
                trained.stats[rows],
                carried,
                kept,
                strict=True,
            )
        ]
    return replies, by_sdk


def vectorized_replies(
    plan: RoundPlan,
    messages: list[Message],
    contexts: list[Context],
    trained: TrainedChunk,
    device: torch.device,
) -> list[Message]:
    """Uncompressed updates: every payload from one [K, kept] matrix and one shared header."""
    rows, specs = flat_deltas(trained, plan, device)
    payloads = encode_float32_rows(rows, specs, server_round=plan.server_round, masks=plan.masks)
    return [
        reply_message(msg, plan, context, payload, stats)
        for msg, context, payload, stats in zip(
            messages, contexts, payloads, trained.stats, strict=True
        )
    ]


def pooled_replies(
    plan: RoundPlan,
    messages: list[Message],
    contexts: list[Context],
    trained: TrainedChunk,
    device: torch.device,
) -> list[Message] | None:
    """One pool: the first reply carries the chunk's weighted mean, the rest their metrics.

    Quantized updates: the mean of what the server would decode from each client's payload
    (:func:`.codec.decode_chunk`: the same quantization, noise and residuals as the payloads,
    without their bytes), and every member counts the payload it would have sent. None, with
    nothing stored, when the mean or an update is not finite: the caller sends per-client
    payloads instead, so the server rejects exactly the clients whose updates are bad.
    """
    if plan.codec.quant_bits == 0 and not plan.error_feedback:
        mean, specs, total = pooled_delta(trained, plan, device)
        if not np.isfinite(mean).all():
            return None
        return _pool(plan, messages, contexts, trained, mean, specs, total)
    decoded = decode_chunk(plan, contexts, trained, device)
    if decoded is None:
        return None
    sent, specs, member_bytes, carried, kept = decoded
    counts = [s.num_examples for s in trained.stats]
    weights = torch.tensor(counts, dtype=torch.float32, device=sent.device)
    mean = weighted_mean(lambda part: sent[part], len(counts), sent.shape[1], weights)
    total = float(sum(counts))
    pooled = (mean.cpu().numpy(), specs, total, member_bytes, carried, kept)
    return _pool(plan, messages, contexts, trained, *pooled)


def _pool(
    plan: RoundPlan,
    messages: list[Message],
    contexts: list[Context],
    trained: TrainedChunk,
    mean: np.ndarray,
    specs: list[TensorSpec],
    total: float,
    member_bytes: int = 0,
    carried: list[float] | None = None,
    kept: list[float | None] | None = None,
) -> list[Message]:
    """The pool's replies: the float32 ``mean`` on the first, the metrics on every one.
    ``member_bytes``: what each member's own payload weighs (0: the carrier's float32 size)."""
    payload = encode_float32_rows(
        mean[None], specs, server_round=plan.server_round, masks=plan.masks
    )[0]
    pool_id = uuid.uuid4().hex
    fields = {
        PAYLOAD_FIELD: payload,
        POOL_ID_FIELD: pool_id,
        POOL_SIZE_FIELD: len(messages),
        POOL_WEIGHT_FIELD: total,
    }
    if member_bytes:
        fields[POOL_MEMBER_BYTES_FIELD] = member_bytes
    carrier, member = ConfigRecord(fields), ConfigRecord({POOL_ID_FIELD: pool_id})
    carried = carried or [0.0] * len(messages)
    kept = kept or [None] * len(messages)
    uploaded = member_bytes or len(payload)  # upload-bytes: the client's own payload's size
    replies = []
    rows = zip(messages, contexts, trained.stats, carried, kept, strict=True)
    for k, (msg, context, stats, carried_norm, kept_norm) in enumerate(rows):
        metrics = reply_metrics(plan, context, stats, uploaded, carried_norm, kept_norm)
        replies.append(
            reply(msg, {UPDATE_RECORD_KEY: carrier if k == 0 else member, "metrics": metrics})
        )
    return replies
