"""Secure aggregation's masked uploads (SecAgg+ stage 3) for a chunk of K clients at once.

On a device, :func:`client_sdk.upload.secure_reply` quantizes the update onto the round's
shared integer grid (:mod:`wire.secagg_vector`), adds a self mask and one signed pairwise mask
per live neighbour (:func:`client_sdk.secagg.mask_vector`) and packs m bits per value. Here the
same steps run over the chunk's [K, n] rows, with every payload, metric and state change
byte-for-byte the SDK's (``tests/simulations/batched/test_secure.py``):

- quantization in float64 on the engine's device, each client's rounding noise the numpy
  generator the SDK seeds draws (on CUDA computed on the device, :mod:`.pcg64`); under
  distributed DP (:mod:`wire.ddp_vector`) each row is encoded on the host by the SDK's own
  function with the generator the SDK would use (its rejection-sampled rounding and discrete
  Gaussian draw a data-dependent number of values), and only masking and packing are batched;
- masks: each pairwise mask is one ChaCha20 stream both ends of the pair use (one adds it, the
  other subtracts it). The pair's key is agreed once (:mod:`.agreements`: only when each end
  holds the other's true public key) and its stream expanded once, for the whole round when
  its clients' mask sums fit the budget (:func:`round_masks`), else for each chunk. On CUDA
  every stream is expanded on the device (:mod:`.chacha`); on a CPU ``cryptography``'s C is
  faster, one stream at a time. Masks are summed in int64 (uint32 on a CPU) and reduced modulo
  2^m, as the SDK's uint32 wrap-around is;
- packing on the device (:func:`.codec.pack_rows`).

Clients whose record or state fails the SDK's checks, and those whose update is not finite
(which the SDK refuses to mask), go through the SDK's own reply instead, so each gets exactly
the SDK's error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import Context, Message

from client_sdk.client_round import (
    MaskPeers,
    RoundPlan,
    mark_masked,
    mask_peers,
    masked_message,
    partition_id_of,
    secure_metrics,
)
from simulations.batched.agreements import AgreementCache
from simulations.batched.chacha import keystream_words
from simulations.batched.chunk_job import ChunkJob
from simulations.batched.codec import DEVICE_DRAWS, pack_rows
from simulations.batched.deltas import local_minus_global, trained_tensors
from simulations.batched.memory import encode_block
from simulations.batched.pcg64 import uniform_float64
from simulations.batched.training import TrainedChunk
from wire import UpdateRejected, keys
from wire.ddp_vector import DdpVectorSpec, VectorSpec, vector_spec_from_config
from wire.secagg import mask_stream
from wire.secagg_protocol import MASK_PURPOSE, SECAGG_RECORD_KEY
from wire.secagg_vector import SecAggVectorSpec

# Mask streams expanded together on CUDA (clients quantized and packed together:
# :func:`.memory.encode_block`).
CUDA_STREAMS = 256

# One mask stream and where it goes: (seed, [(row in the chunk, +1 or -1), ...])
Stream = tuple[bytes, list[tuple[int, int]]]


def kept_deltas(trained: TrainedChunk, plan: RoundPlan, device: torch.device) -> torch.Tensor:
    """[K, n] local - global on the kept coordinates, in the global model's dtype, in the order
    of :func:`wire.secagg_vector.flatten_kept` (numpy's promotion when dtypes differ)."""
    columns = []
    for name, _spec, reference, keep in trained_tensors(plan, device):
        delta = local_minus_global(trained.local[name], reference)
        flat = delta.reshape(delta.shape[0], -1)
        columns.append(flat if keep is None else flat[:, keep])
    return torch.cat(columns, dim=1)


def mask_streams(peers: dict[int, MaskPeers], agreements: AgreementCache) -> list[Stream]:
    """The self-mask streams and the pairwise ones (``peers``: row -> the client's mask
    inputs). A stream is a pure function of its seed, so rows that derive the same seed share
    one stream, each with its own sign: both ends of a pair whose keys match, found by
    ``agreements`` (a pair agreed once)."""
    streams: dict[bytes, list[tuple[int, int]]] = {}
    for row, mine in peers.items():
        streams.setdefault(mine.seed, []).append((row, 1))
        seeds = agreements.agree_each(mine.private, [pk for _, pk in mine.peers], MASK_PURPOSE)
        for (j, _), seed in zip(mine.peers, seeds, strict=True):
            streams.setdefault(seed, []).append((row, 1 if mine.me < j else -1))
    return list(streams.items())


def mask_sums(
    streams: list[Stream], rows: int, count: int, device: torch.device, *, on_device: bool
) -> torch.Tensor:
    """[rows, count]: each row's signed sum of its mask streams, correct modulo 2^32.

    ``on_device``: streams expanded by :mod:`.chacha` on ``device`` and summed in int64; else
    by ``cryptography`` one at a time and summed with uint32 wrap-around (half the memory)."""
    if not on_device:
        sums = np.zeros((rows, count), dtype=np.uint32)
        for seed, targets in streams:
            words = mask_stream(seed, count)
            for row, sign in targets:
                if sign > 0:
                    sums[row] += words
                else:
                    sums[row] -= words
        return torch.from_numpy(sums)
    sums = torch.zeros(rows, count, dtype=torch.int64, device=device)
    for start in range(0, len(streams), CUDA_STREAMS):
        part = streams[start : start + CUDA_STREAMS]
        words = keystream_words([seed for seed, _ in part], count, device)
        index = [(k, row, sign) for k, (_, targets) in enumerate(part) for row, sign in targets]
        source = torch.tensor([k for k, _, _ in index], device=device)
        target = torch.tensor([row for _, row, _ in index], device=device)
        signs = torch.tensor([sign for _, _, sign in index], device=device)
        sums.index_add_(0, target, words[source] * signs[:, None])
    return sums


@dataclass
class RoundMasks:
    """The mask sums of every client of one round's train messages, computed before the first
    chunk trains, so that a pair's stream is shared across chunks too (:func:`round_masks`)."""

    peers: dict[int, MaskPeers]  # node id -> its checked mask inputs
    rows: dict[int, int]  # node id -> its row of ``sums``
    sums: torch.Tensor  # [clients, n + 1], correct modulo 2^32


@dataclass
class SecureRound:
    """What the engine keeps of one secure round across its stages and chunks: the pairwise
    agreements (stage 2's share keys serve stage 4 again) and, while the round trains, the
    masks of all its clients."""

    agreements: AgreementCache = field(default_factory=AgreementCache)
    masks: RoundMasks | None = None


def round_masks(
    plan: RoundPlan,
    messages: list[Message],
    contexts: list[Context],
    device: torch.device,
    agreements: AgreementCache,
) -> RoundMasks | None:
    """The round's masks when its messages are secure and their sums fit the budget (1 GiB on
    a CPU, a tenth of the free GPU memory up to 2 GiB); None: each chunk masks its own."""
    if SECAGG_RECORD_KEY not in messages[0].content or plan.error_feedback or plan.codec.topk:
        return None
    record = messages[0].content[SECAGG_RECORD_KEY]
    kept = sum(
        spec.size if keep is None else int(keep.sum())
        for _, spec, _, keep in trained_tensors(plan, device)
    )
    try:
        count = vector_spec_from_config(record).vector_size(kept)
    except (KeyError, TypeError, ValueError):  # UpdateRejected is a ValueError
        return None
    cuda = device.type == "cuda"
    budget = min(2 << 30, torch.cuda.mem_get_info(device)[0] // 10) if cuda else 1 << 30
    if len(contexts) * count * (8 if cuda else 4) > budget:
        return None
    peers = _checked_peers(record, contexts, range(len(contexts)))
    ready, sums = _masks_for(peers, count, device, agreements)
    nodes = [contexts[row].node_id for row in ready]
    return RoundMasks(
        {node: peers[row] for node, row in zip(nodes, ready, strict=True)},
        {node: i for i, node in enumerate(nodes)},
        sums,
    )


def _checked_peers(record, contexts, rows) -> dict[int, MaskPeers]:
    """Row -> mask inputs of the clients in ``rows`` whose state passes the SDK's checks (the
    others get the SDK's own reply, hence its error)."""
    peers = {}
    for row in rows:
        try:
            peers[row] = mask_peers(record, contexts[row])
        except (UpdateRejected, KeyError, TypeError):
            pass
    return peers


def _masks_for(
    peers: dict[int, MaskPeers], count: int, device: torch.device, agreements: AgreementCache
) -> tuple[list[int], torch.Tensor]:
    """(the rows of ``peers`` in order, their mask sums in that order)."""
    ready = list(peers)
    index = {row: i for i, row in enumerate(ready)}
    streams = [
        (seed, [(index[row], sign) for row, sign in targets])
        for seed, targets in mask_streams(peers, agreements)
    ]
    return ready, mask_sums(streams, len(ready), count, device, on_device=device.type == "cuda")


def secure_replies(job: ChunkJob, secure: SecureRound) -> tuple[dict[int, Message], list[int]]:
    """Masked replies by row, and the rows left to the SDK's reply (failed checks, not finite).

    The masks are ``secure.masks`` when :func:`round_masks` computed them for the whole round,
    else the chunk's own, computed here."""
    plan, messages, contexts = job.plan, job.messages, job.contexts
    trained, device = job.trained, job.device
    masks_of_round = secure.masks
    everyone = list(range(len(messages)))
    record = messages[0].content[SECAGG_RECORD_KEY]
    if plan.error_feedback or plan.codec.topk or plan.codec.rotate != "none":
        return {}, everyone  # a shared rotation: the SDK's numpy rotation, client by client
    deltas = kept_deltas(trained, plan, device)
    try:
        spec = vector_spec_from_config(record)
        count = spec.vector_size(deltas.shape[1])  # [w * q, w], or [rotated DDP vector, 1]
    except (KeyError, TypeError, ValueError):  # the SDK's reply says what is wrong
        return {}, everyone
    finite = torch.isfinite(deltas).all(dim=1).tolist()  # the SDK refuses the others
    if masks_of_round is None:
        peers = _checked_peers(record, contexts, [r for r in everyone if finite[r]])
        ready, masks = _masks_for(peers, count, device, secure.agreements)
    else:
        known = masks_of_round.peers
        peers = {
            r: known[contexts[r].node_id]
            for r in everyone
            if finite[r] and contexts[r].node_id in known
        }
        ready = list(peers)
        rows = [masks_of_round.rows[contexts[r].node_id] for r in ready]
        masks = masks_of_round.sums[torch.tensor(rows, device=masks_of_round.sums.device)]
    by_sdk = [r for r in everyone if r not in peers]
    replies: dict[int, Message] = {}
    block = encode_block(device)
    for start in range(0, len(ready), block):
        rows = ready[start : start + block]
        vectors, clipped = _vectors(
            spec,
            plan,
            deltas[rows],
            [contexts[r] for r in rows],
            [trained.stats[r].num_examples for r in rows],
        )
        mask = masks[start : start + len(rows)].to(device=device, dtype=torch.int64)
        masked = (vectors + mask) & spec.modulus_mask
        packed = pack_rows(masked, spec.modulus_bits).cpu().numpy()
        for i, row in enumerate(rows):
            context = contexts[row]
            metrics = secure_metrics(context, trained.stats[row], clipped[i], deltas.shape[1])
            replies[row] = masked_message(
                messages[row], context, packed[i].tobytes(), count, metrics
            )
            mark_masked(context, peers[row])
    return replies, by_sdk


def _vectors(
    spec: VectorSpec,
    plan: RoundPlan,
    flat: torch.Tensor,
    contexts: list[Context],
    examples: list[int],
) -> tuple[torch.Tensor, list[int]]:
    """Each row's vector for the secure sum ([rows, count] int64) and its clipped count."""
    if isinstance(spec, SecAggVectorSpec):
        return _quantize(spec, plan, flat, contexts, examples)
    return _ddp_vectors(spec, plan, flat, contexts)


def _ddp_vectors(
    spec: DdpVectorSpec, plan: RoundPlan, flat: torch.Tensor, contexts: list[Context]
) -> tuple[torch.Tensor, list[int]]:
    """:meth:`DdpVectorSpec.quantize` row by row on the host, each with the generator the SDK
    draws from (:func:`client_sdk.upload.secure_reply`: a secret ``os.urandom`` seed, or the
    client's round seed when the round says ``dp-local-seeded``), so a row's rounding and noise
    are the SDK's own; its masks and packing are then batched with the others. Conditional
    rounding redraws a row until its norm fits, so the rows need not take the same number of
    draws: one generator per row keeps each client's draws its own."""
    if plan.config.get(keys.DP_LOCAL_SEEDED) is True:  # a simulator allows it (seeded_noise)
        seeds = plan.seeds_for([partition_id_of(c) for c in contexts])
    else:
        seeds = [int.from_bytes(os.urandom(32), "little") for _ in contexts]
    rows = flat.cpu().numpy()
    vectors = np.empty((len(contexts), spec.vector_size(rows.shape[1])), dtype=np.int64)
    clipped = []
    for vector, row, seed in zip(vectors, rows, seeds, strict=True):
        encoded, count = spec.quantize(row, 1, np.random.default_rng(seed))
        vector[:] = encoded
        clipped.append(count)
    return torch.from_numpy(vectors).to(flat.device), clipped


def _quantize(
    spec: SecAggVectorSpec,
    plan: RoundPlan,
    flat: torch.Tensor,
    contexts: list[Context],
    examples: list[int],
) -> tuple[torch.Tensor, list[int]]:
    """:meth:`SecAggVectorSpec.quantize` for each row: [rows, n + 1] int64 and clipped counts."""
    k, n = flat.shape
    clipped = (flat.abs() > spec.clip).sum(dim=1).tolist()
    seeds = plan.seeds_for([partition_id_of(c) for c in contexts])
    if flat.device.type in DEVICE_DRAWS:  # the SDK's numpy draws, computed on the device
        noise = uniform_float64(seeds, n, flat.device)
    else:
        drawn = np.empty((k, n), dtype=np.float64)
        for row, seed in zip(drawn, seeds, strict=True):
            np.random.default_rng(seed).random(out=row)
        noise = torch.from_numpy(drawn).to(flat.device)
    scaled = (flat.to(torch.float64).clamp(-spec.clip, spec.clip) + spec.clip) * (
        spec.levels / (2 * spec.clip)
    )
    low = torch.floor(scaled)
    q = low + (noise < (scaled - low))
    weights = torch.tensor([spec.weight_of(e) for e in examples], device=flat.device)
    vectors = torch.empty(k, n + 1, dtype=torch.int64, device=flat.device)
    vectors[:, :n] = q.to(torch.int64) * weights[:, None]
    vectors[:, n] = weights
    return vectors, clipped
