"""Masked uploads for a chunk at once against the SDK's, client by client: the same bytes."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
from flwr.app import MessageType, RecordDict

from client_sdk.secagg import STATE_KEY
from client_sdk.tasks import get_task
from client_sdk.upload import upload_reply
from simulations.batched import secure
from simulations.batched.agreements import AgreementCache
from simulations.batched.chacha import keystream_words
from simulations.batched.chunk_job import ChunkJob
from simulations.batched.replies import ReplyOptions, chunk_replies
from simulations.batched.training import TrainedChunk, stack_clients, train_clients
from strategies.secagg import SecAggSession, SecAggSettings
from strategies.stats import RoundStats
from tests.helpers.batched import CPU
from tests.helpers.batched import client_data as _clients
from tests.helpers.batched import round_plan as _plan
from tests.messages import message, node_context
from tests.strategies.secagg_grid import SecAggGrid
from wire import UPDATE_RECORD_KEY, keys
from wire.ddp_vector import DdpVectorSpec
from wire.secagg import mask_stream, new_private_key, public_key
from wire.secagg_protocol import SECAGG_RECORD_KEY, chunks
from wire.secagg_vector import flatten_kept, kept_count

DEVICES = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
K = 6


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_keystream_words_are_cryptographys_chacha20(device):
    seeds = [bytes(32), b"\x01" * 32] + [bytes(range(i, i + 32)) for i in range(3)]
    for count in (1, 15, 16, 17, 1000):
        words = keystream_words(seeds, count, device).cpu().numpy()
        for seed, row in zip(seeds, words, strict=True):
            assert np.array_equal(row, mask_stream(seed, count).astype(np.int64))
    with pytest.raises(ValueError, match="32 bytes"):
        keystream_words([bytes(16)], 4, device)


def _ddp_spec(length):
    """A distributed-DP round's vector for ``length`` kept values (16 bits, small noise)."""
    return lambda clients: DdpVectorSpec(
        bits=16,
        clip=0.5,
        scale=200.0,
        local_variance=2.0,
        seed=9,
        block=1 << 10,
        length=length,
        clients=clients,
    )


def _secure_round(prune=False, float64=False, degree=4, ddp=False):
    """K nodes through stages 1-2 of the real protocol, a trained chunk and its train messages
    (``ddp``: a distributed-DP round whose noise is drawn from the clients' round seeds)."""
    contexts = [node_context(i, K, node_id=100 + 7 * i) for i in range(K)]
    grid = SecAggGrid({c.node_id: None for c in contexts})
    grid.contexts = {c.node_id: c for c in contexts}
    settings = SecAggSettings(degree=degree, bits=8, clip=0.05)
    session = SecAggSession(settings, 1, grid, RoundStats(server_round=1))
    task = get_task("digits")
    plan = _plan(task, {keys.DP_LOCAL_SEEDED: True} if ddp else {}, prune=prune)
    if ddp:
        shapes = {name: a.shape for name, a in plan.global_arrays.items()}
        session.spec_for = _ddp_spec(kept_count(shapes, plan.masks))
    record = session.setup(grid.get_node_ids(), np.random.default_rng(0))
    if float64:  # FedAdam's server sends float64 arrays: numpy promotes the delta
        plan = dataclasses.replace(
            plan, global_arrays={k: v.astype(np.float64) for k, v in plan.global_arrays.items()}
        )
    chunk = train_clients(plan, stack_clients(_clients(task, k=K), CPU), list(range(K)), CPU)
    content = RecordDict({SECAGG_RECORD_KEY: record})
    messages = [
        message(content, src=0, dst=c.node_id, message_type=MessageType.TRAIN) for c in contexts
    ]
    return plan, chunk, messages, contexts, session


def _compare(plan, chunk, messages, contexts, device, whole_round=False):
    """The engine's replies and states equal the SDK's; returns how many the SDK built.

    ``whole_round``: the round's masks are computed first (pairs shared across chunks) and the
    replies come from two chunks of K / 2 clients."""
    theirs = copy.deepcopy(contexts)
    chunk = dataclasses.replace(chunk, local={k: v.to(device) for k, v in chunk.local.items()})
    state = secure.SecureRound()
    if whole_round:
        state.masks = secure.round_masks(plan, messages, contexts, device, state.agreements)
        assert state.masks is not None
    replies, by_sdk = [], 0
    for part in [slice(0, K // 2), slice(K // 2, K)] if whole_round else [slice(0, K)]:
        local = {name: tensor[part] for name, tensor in chunk.local.items()}
        job = ChunkJob(
            plan, messages[part], contexts[part], TrainedChunk(local, chunk.stats[part]), device
        )
        replied, pooled, sdk = chunk_replies(job, ReplyOptions(pool=True), state)
        assert pooled == 0
        replies += replied
        by_sdk += sdk
    for msg, ours, context, local, stats in zip(
        messages, replies, theirs, chunk.host_models(plan.global_arrays), chunk.stats, strict=True
    ):
        try:
            ref = upload_reply(msg, plan, context, local, stats, allow_seeded_noise=True)
        except Exception as err:
            assert ours.has_error() and str(err) in ours.error.reason
            continue
        assert not ours.has_error()
        assert ours.content.keys() == ref.content.keys()
        for key in ref.content:
            assert dict(ours.content[key]) == dict(ref.content[key]), key
    for ours, ref in zip(contexts, theirs, strict=True):
        assert dict(ours.state.get(STATE_KEY, {})) == dict(ref.state.get(STATE_KEY, {}))
    return by_sdk


@pytest.mark.parametrize("device", DEVICES, ids=str)
@pytest.mark.parametrize(
    "case", ["plain", "pruned", "float64 global", "round masks", "ddp", "ddp pruned round masks"]
)
def test_masked_uploads_are_the_sdks(case, device):
    plan, chunk, messages, contexts, _ = _secure_round(
        prune="pruned" in case, float64=case == "float64 global", ddp="ddp" in case
    )
    assert _compare(plan, chunk, messages, contexts, device, "round masks" in case) == 0


def test_ddp_uploads_unmask_to_the_clipped_mean_and_draw_secret_noise_unless_seeded():
    """A distributed-DP chunk: the server's unmasked mean is the clients' clipped mean plus
    unbiased error of the noise's and rounding's size; without ``dp-local-seeded`` two
    encodings of one chunk differ (secret noise)."""
    plan, chunk, messages, contexts, session = _secure_round(ddp=True)
    secret = dataclasses.replace(plan, config={})
    first, second = (
        chunk_replies(
            ChunkJob(secret, messages, copy.deepcopy(contexts), chunk, CPU),
            ReplyOptions(pool=True),
            secure.SecureRound(),
        )[0]
        for _ in range(2)
    )
    assert [dict(a.content[UPDATE_RECORD_KEY]) for a in first] != [
        dict(b.content[UPDATE_RECORD_KEY]) for b in second
    ]
    job = ChunkJob(plan, messages, contexts, chunk, CPU)
    replies, _, by_sdk = chunk_replies(job, ReplyOptions(pool=True), secure.SecureRound())
    assert by_sdk == 0
    for reply, msg in zip(replies, messages, strict=True):  # as the Grid stamps replies
        reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
    spec = session.spec
    mean, count = spec.weighted_mean(session.aggregate(replies, spec.vector_size(spec.length)))
    assert count == K
    deltas = secure.kept_deltas(chunk, plan, CPU).numpy().astype(np.float64)
    clipped = deltas * np.minimum(1.0, spec.clip / np.linalg.norm(deltas, axis=1))[:, None]
    error = mean - clipped.mean(axis=0)
    # each client adds variance local_variance (noise) + at most 1/4 (rounding), integer units
    low, high = (np.sqrt(K * (spec.local_variance + r)) / (spec.scale * K) for r in (0, 0.25))
    assert 0.9 * low < error.std() < 1.1 * high
    assert abs(error.mean()) < 4 * high / np.sqrt(error.size)  # unbiased


@pytest.mark.parametrize("device", DEVICES, ids=str)
@pytest.mark.parametrize("whole_round", [False, True], ids=["chunk masks", "round masks"])
def test_a_bad_state_a_nan_and_a_key_the_peer_does_not_hold_match_the_sdk(whole_round, device):
    plan, chunk, messages, contexts, _ = _secure_round(degree=5)
    # node 0 was handed a wrong mask key for its first neighbour: that pair is not shared, and
    # each end masks with the key it holds (the sum will not unmask, exactly as on devices)
    state = contexts[0].state[STATE_KEY]
    keys = chunks(bytes(state["pk-s"]), 32, len(bytes(state["pk-s"])) // 32, "pk-s")
    state["pk-s"] = public_key(new_private_key()) + b"".join(keys[1:])
    del contexts[1].state[STATE_KEY]  # node 1 lost its state: the SDK's stage-order error
    chunk.local["2.weight"][2, 0, 0] = float("nan")  # refused by the SDK: not masked
    chunk.local["2.weight"][3, 0, 0] = float("inf")
    assert _compare(plan, chunk, messages, contexts, device, whole_round) == 3


def test_shared_pairs_halve_the_streams_and_the_torch_path_sums_like_numpys():
    _, _, messages, contexts, _ = _secure_round(degree=5)
    record = messages[0].content[SECAGG_RECORD_KEY]
    peers = {row: secure.mask_peers(record, c) for row, c in enumerate(contexts)}
    agreements = AgreementCache()
    streams = secure.mask_streams(peers, agreements)
    pairs = sum(len(p.peers) for p in peers.values()) // 2
    assert len(streams) == K + pairs  # one per client, one per pair
    assert sum(len(targets) for _, targets in streams) == K + 2 * pairs
    assert agreements.computed == pairs and agreements.found == pairs
    numpy_sums = secure.mask_sums(streams, K, 333, CPU, on_device=False).numpy()
    torch_sums = secure.mask_sums(streams, K, 333, CPU, on_device=True).numpy()
    assert np.array_equal(numpy_sums.astype(np.int64) & 0xFFFFFFFF, torch_sums & 0xFFFFFFFF)
    # the pairwise masks cancel: the chunk's total is the sum of the self masks
    selfs = sum(mask_stream(p.seed, 333).astype(np.int64) for p in peers.values())
    assert np.array_equal(numpy_sums.sum(axis=0, dtype=np.uint32), selfs.astype(np.uint32))


def test_a_nan_client_is_dropped_and_the_server_unmasks_the_others_sum():
    plan, chunk, messages, contexts, session = _secure_round(degree=5)
    chunk.local["0.bias"][4, 3] = float("nan")
    plain = []
    models = chunk.host_models(plan.global_arrays)
    for k, (local, stats) in enumerate(zip(models, chunk.stats, strict=True)):
        if k != 4:  # the vector each survivor masked, as the SDK quantizes it
            delta = {n: local[n] - g for n, g in plan.global_arrays.items()}
            flat = flatten_kept(delta, list(delta), plan.masks)
            rng = np.random.default_rng(plan.seed_for(k))
            plain.append(
                session.spec.quantize(flat, session.spec.weight_of(stats.num_examples), rng)[0]
            )
    job = ChunkJob(plan, messages, contexts, chunk, CPU)
    replies, _, by_sdk = chunk_replies(job, ReplyOptions(pool=False))
    assert by_sdk == 1 and "non-finite" in replies[4].error.reason
    for reply, msg in zip(replies, messages, strict=True):  # as the Grid stamps replies
        reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
    total = session.aggregate(replies, len(plain[0]))
    assert np.array_equal(total, np.sum(plain, axis=0, dtype=np.uint64).astype(np.uint32))
    assert session.stats.accepted == K - 1
    assert [(f.node_id, f.reason) for f in session.stats.failures] == [
        (contexts[4].node_id, "client-error")
    ]


def test_secure_uploads_with_device_draws_are_the_sdks(monkeypatch):
    monkeypatch.setattr("simulations.batched.codec.DEVICE_DRAWS", {"cpu", "cuda"})
    monkeypatch.setattr("simulations.batched.secure.DEVICE_DRAWS", {"cpu", "cuda"})
    test_masked_uploads_are_the_sdks("plain", CPU)
