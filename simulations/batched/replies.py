"""Train replies of the batched engine, built from one chunk of K trained clients.

:func:`chunk_replies` takes the first path of :data:`REPLY_PATHS` that applies to the chunk
(and does not decline it), from the least to the most per-client work:

- ``pooled``: when the server's train config allows pooling (its strategy needs only the
  weighted mean, :mod:`wire.pooling`), the chunk's weighted mean is summed on the device and
  sent once; the other K-1 replies carry their metrics and the pool's id. This removes the
  per-client payload copy, the server's per-client decode and its per-client addition, which
  at 10,000 clients per round cost more than training on a GPU. Quantized updates pool the
  same way when ``pool_quantized`` (the engine's default on CUDA): the pool carries the
  weighted mean of what the server would decode from each client's payload (same noise, same
  residuals), and each member counts the bytes of the payload it would have sent. Declined
  (None) when the mean or an update is not finite;
- ``float32``: uncompressed updates, every payload cut from one [K, kept] matrix with one
  shared header (byte-for-byte what the SDK would send);
- ``quantized``: compressed updates (uniform quantization, EDEN/DRIVE, EF-signSGD, rotation,
  fractional bits; with or without error feedback) through the codec's chain of stage twins for
  the K clients at once on the device (:mod:`.encoder`), byte-for-byte the SDK's payloads
  without rotation;
- ``secure``: secure aggregation's masked uploads, quantized, masked and packed for the K
  clients at once (:mod:`.secure`), byte-for-byte the SDK's;
- ``sdk``: everything else (top-k, hooked updates such as simulated attacks, a rotation
  before uniform quantization) goes through the SDK's own encoder client by client
  (:func:`client_sdk.client_round.upload_reply`), exactly as on a device.

Replies are built with :data:`.flower_private.FAST_RECORDS`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from flwr.app import ConfigRecord, Error, Message
from flwr.common.constant import ErrorCode

from client_sdk.client_round import (
    RoundPlan,
    UpdateHook,
    reply_message,
    reply_metrics,
    upload_reply,
)
from simulations.batched.chunk_job import ChunkJob
from simulations.batched.codec import EncodedBlock
from simulations.batched.deltas import flat_deltas, pooled_delta, weighted_mean
from simulations.batched.encoder import decode_chunk, encode_chunk
from simulations.batched.encoder import handles as twins_handle
from simulations.batched.flower_private import FAST_RECORDS
from simulations.batched.secure import SecureRound, secure_replies
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


@dataclass(frozen=True)
class ReplyOptions:
    """How the engine may build a chunk's replies."""

    hook: UpdateHook | None = None  # changes each delta first: the SDK's encoder only
    pool: bool = True  # pool uncompressed updates when the server allows it
    on_device: bool = True  # quantized and masked updates encoded for the chunk at once
    pool_quantized: bool = False  # pool quantized updates too (:func:`pooled_replies`)


class ChunkReplies(NamedTuple):
    replies: list[Message]  # one per row of the chunk, in order
    pooled: int = 0  # replies sent inside a pool
    by_sdk: int = 0  # replies the SDK's encoder built one by one


@dataclass(frozen=True)
class ReplyRequest:
    """:func:`chunk_replies`'s arguments, as every path of :data:`REPLY_PATHS` takes them."""

    job: ChunkJob
    options: ReplyOptions
    secure: SecureRound | None  # what the engine keeps of a secure round; None: a fresh one

    @property
    def plan(self) -> RoundPlan:
        return self.job.plan

    @property
    def secure_round(self) -> bool:
        return SECAGG_RECORD_KEY in self.job.messages[0].content

    @property
    def pooling_allowed(self) -> bool:
        return self.options.pool and self.plan.config.get(POOLING_CONFIG_KEY) is True

    @property
    def vectorized(self) -> bool:
        """No hook, not secure, on the engine's own uniform codec (or none)."""
        codec = self.plan.codec
        return (
            self.options.hook is None
            and not self.secure_round
            and not codec.topk
            and codec.rotate == "none"
            and codec.scheme == "uniform"
        )

    @property
    def float32(self) -> bool:
        return self.plan.codec.quant_bits == 0 and not self.plan.error_feedback


@dataclass(frozen=True)
class ReplyPath:
    name: str
    applies: Callable[[ReplyRequest], bool]
    build: Callable[[ReplyRequest], ChunkReplies | None]  # None: declined, try the next path


def chunk_replies(
    job: ChunkJob, options: ReplyOptions, secure: SecureRound | None = None
) -> ChunkReplies:
    """The chunk's replies, the cheapest way the round allows (:data:`REPLY_PATHS`)."""
    request = ReplyRequest(job, options, secure)
    for path in REPLY_PATHS:
        if path.applies(request) and (built := path.build(request)) is not None:
            return built
    raise AssertionError("the last reply path applies to every chunk")  # pragma: no cover


def each_reply(job: ChunkJob, hook: UpdateHook | None = None) -> list[Message]:
    """Compressed or hooked updates: the SDK's own encoder, client by client."""
    replies = []
    models = job.trained.host_models(job.plan.global_arrays)
    rows = zip(job.messages, job.contexts, models, job.stats, strict=True)
    for msg, context, local, stats in rows:
        try:
            replies.append(
                upload_reply(
                    msg,
                    job.plan,
                    context,
                    local,
                    stats,
                    hook,
                    records=FAST_RECORDS,
                    allow_seeded_noise=True,  # a simulator: the server's dp-seeded-noise holds
                )
            )
        except Exception as err:
            replies.append(error_reply(msg, err))
    return replies


def quantized_replies(
    job: ChunkJob,
    encoder: Callable[..., Iterator[tuple[slice, EncodedBlock | None]]] = encode_chunk,
) -> ChunkReplies:
    """Compressed updates of the chunk from the device's stage twins (``encoder``:
    :func:`.encoder.encode_chunk`); the SDK's encoder takes a block holding an update that is
    not finite."""
    replies: list[Message] = []
    by_sdk = 0
    for rows, encoded in encoder(job.plan, job.contexts, job.trained, job.device):
        if encoded is None:
            part = job.rows(rows)
            replies += each_reply(part)
            by_sdk += len(part)
            continue
        payloads, carried, kept = encoded
        replies += [
            reply_message(
                msg,
                job.plan,
                context,
                payload,
                stats,
                carried_norm,
                kept_norm,
                records=FAST_RECORDS,
            )
            for msg, context, payload, stats, carried_norm, kept_norm in zip(
                job.messages[rows],
                job.contexts[rows],
                payloads,
                job.stats[rows],
                carried,
                kept,
                strict=True,
            )
        ]
    return ChunkReplies(replies, 0, by_sdk)


def vectorized_replies(job: ChunkJob) -> list[Message]:
    """Uncompressed updates: every payload from one [K, kept] matrix and one shared header."""
    plan = job.plan
    rows, specs = flat_deltas(job.trained, plan, job.device)
    payloads = encode_float32_rows(
        rows,
        specs,
        server_round=plan.server_round,
        masks=plan.masks,
        reference=plan.reference(specs),
    )
    return [
        reply_message(msg, plan, context, payload, stats, records=FAST_RECORDS)
        for msg, context, payload, stats in zip(
            job.messages, job.contexts, payloads, job.stats, strict=True
        )
    ]


def pooled_replies(job: ChunkJob) -> list[Message] | None:
    """One pool: the first reply carries the chunk's weighted mean, the rest their metrics.

    Quantized updates: the mean of what the server would decode from each client's payload
    (:func:`.encoder.decode_chunk`: the same quantization, noise and residuals as the payloads,
    without their bytes), and every member counts the payload it would have sent. None, with
    nothing stored, when the mean or an update is not finite: the caller sends per-client
    payloads instead, so the server rejects exactly the clients whose updates are bad.
    """
    plan, trained = job.plan, job.trained
    if plan.codec.quant_bits == 0 and not plan.error_feedback:
        mean, specs, total = pooled_delta(trained, plan, job.device)
        if not np.isfinite(mean).all():
            return None
        return _pool(job, mean, specs, total)
    decoded = decode_chunk(plan, job.contexts, trained, job.device)
    if decoded is None:
        return None
    sent, specs, member_bytes, carried, kept = decoded
    counts = [s.num_examples for s in trained.stats]
    weights = torch.tensor(counts, dtype=torch.float32, device=sent.device)
    mean = weighted_mean(lambda part: sent[part], len(counts), sent.shape[1], weights)
    total = float(sum(counts))
    return _pool(job, mean.cpu().numpy(), specs, total, member_bytes, carried, kept)


def _pool(
    job: ChunkJob,
    mean: np.ndarray,
    specs: list[TensorSpec],
    total: float,
    member_bytes: int = 0,
    carried: list[float] | None = None,
    kept: list[float | None] | None = None,
) -> list[Message]:
    """The pool's replies: the float32 ``mean`` on the first, the metrics on every one.
    ``member_bytes``: what each member's own payload weighs (0: the carrier's float32 size)."""
    plan = job.plan
    payload = encode_float32_rows(
        mean[None],
        specs,
        server_round=plan.server_round,
        masks=plan.masks,
        reference=plan.reference(specs),  # a float32 round's header travels as its digest
    )[0]
    pool_id = uuid.uuid4().hex
    fields = {
        PAYLOAD_FIELD: payload,
        POOL_ID_FIELD: pool_id,
        POOL_SIZE_FIELD: len(job),
        POOL_WEIGHT_FIELD: total,
    }
    if member_bytes:
        fields[POOL_MEMBER_BYTES_FIELD] = member_bytes
    carrier, member = ConfigRecord(fields), ConfigRecord({POOL_ID_FIELD: pool_id})
    carried = carried or [0.0] * len(job)
    kept = kept or [None] * len(job)
    uploaded = member_bytes or len(payload)  # upload-bytes: the client's own payload's size
    replies = []
    rows = zip(job.messages, job.contexts, job.stats, carried, kept, strict=True)
    for k, (msg, context, stats, carried_norm, kept_norm) in enumerate(rows):
        metrics = reply_metrics(
            plan, context, stats, uploaded, carried_norm, kept_norm, records=FAST_RECORDS
        )
        update = carrier if k == 0 else member
        replies.append(FAST_RECORDS.reply(msg, {UPDATE_RECORD_KEY: update, "metrics": metrics}))
    return replies


def _pooled(request: ReplyRequest) -> ChunkReplies | None:
    replies = pooled_replies(request.job)
    return None if replies is None else ChunkReplies(replies, len(replies), 0)


def _secure(request: ReplyRequest) -> ChunkReplies:
    job = request.job
    secure = SecureRound() if request.secure is None else request.secure
    masked, left = secure_replies(job, secure)
    if left:
        masked.update(zip(left, each_reply(job.rows(left)), strict=True))
    return ChunkReplies([masked[row] for row in range(len(job))], 0, len(left))


def _by_sdk(request: ReplyRequest) -> ChunkReplies:
    replies = each_reply(request.job, request.options.hook)
    return ChunkReplies(replies, 0, len(replies))


def _plain_on_device(r: ReplyRequest) -> bool:
    return r.options.hook is None and not r.secure_round and r.options.on_device


# In order: the first path that applies and does not decline builds the chunk's replies.
REPLY_PATHS: tuple[ReplyPath, ...] = (
    ReplyPath("pooled", lambda r: r.vectorized and r.float32 and r.pooling_allowed, _pooled),
    ReplyPath(
        "float32",
        lambda r: r.vectorized and r.float32,
        lambda r: ChunkReplies(vectorized_replies(r.job)),
    ),
    ReplyPath(
        "pooled-quantized",
        lambda r: (
            r.vectorized and r.options.on_device and r.options.pool_quantized and r.pooling_allowed
        ),
        _pooled,
    ),
    ReplyPath(
        "quantized",
        lambda r: _plain_on_device(r) and twins_handle(r.plan),
        lambda r: quantized_replies(r.job),
    ),
    ReplyPath(
        "secure",
        lambda r: r.options.hook is None and r.options.on_device and r.secure_round,
        _secure,
    ),
    ReplyPath("sdk", lambda r: True, _by_sdk),
)
