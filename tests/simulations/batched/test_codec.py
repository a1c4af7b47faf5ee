"""The engine's device codec against the SDK's encoder: byte-for-byte payloads and residuals."""

import dataclasses

import numpy as np
import pytest
import torch
from flwr.app import MessageType, RecordDict

from client_sdk.tasks import get_task
from client_sdk.upload import stored_residual, upload_reply
from simulations.batched import codec, memory
from simulations.batched.chunk_job import ChunkJob
from simulations.batched.codec import dequantize_rows, pack_rows, quantize_rows
from simulations.batched.encoder import encode_chunk
from simulations.batched.replies import quantized_replies
from simulations.batched.training import stack_clients, train_clients
from tests.helpers.batched import CPU
from tests.helpers.batched import client_data as _clients
from tests.helpers.batched import round_plan as _plan
from tests.messages import message, node_context
from wire import PAYLOAD_FIELD, UPDATE_RECORD_KEY
from wire.bitpack import pack_uint
from wire.quantize import Quantized, dequantize, quantize

# on a GPU machine the same byte-for-byte checks run on CUDA too (benchmarks/gpu_check.sh)
DEVICES = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def _rows(k=4, n=1000, seed=0):
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(k, n)).astype(np.float32)
    rows[0, :300] = 0.25  # a constant chunk: zero span
    rows[1, :40] = np.float32(1e-40) * np.arange(40)  # a subnormal span
    rows[2, -7:] = -3.0
    return rows


@pytest.mark.parametrize("device", DEVICES, ids=str)
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("stochastic", [True, False])
def test_rows_quantize_pack_and_dequantize_as_the_wire_does(bits, stochastic, device):
    rows, chunk = _rows(), 128
    levels = (1 << bits) - 1  # row 3, first chunk: positions exactly halfway between codes
    rows[3, :chunk] = np.arange(chunk) % levels + 0.5
    rows[3, :2] = 0.0, levels
    chunks = -(-rows.shape[1] // chunk)
    seeds = [11, 12, 13, 14]
    noise = (
        np.stack([np.random.default_rng(s).random((chunks, chunk), np.float32) for s in seeds])
        if stochastic
        else None
    )
    codes, lo, hi = quantize_rows(
        torch.from_numpy(rows).to(device),
        bits,
        chunk,
        None if noise is None else torch.from_numpy(noise).to(device),
    )
    packed = pack_rows(codes, bits).cpu().numpy()
    values = dequantize_rows(codes, lo, hi, bits, chunk).cpu().numpy()
    codes, lo, hi = codes.cpu(), lo.cpu(), hi.cpu()
    for k, row in enumerate(rows):
        rng = np.random.default_rng(seeds[k]) if stochastic else None
        q = quantize(row, bits, chunk, rng)
        np.testing.assert_array_equal(codes[k].numpy(), q.codes)
        assert (
            lo[k].numpy().tobytes() == q.lo.tobytes() and hi[k].numpy().tobytes() == q.hi.tobytes()
        )
        assert packed[k].tobytes() == pack_uint(q.codes, bits)
        assert (
            values[k].tobytes() == dequantize(Quantized(q.codes, q.lo, q.hi), bits, chunk).tobytes()
        )


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_rows_pack_like_pack_uint_at_every_width(device):
    rng = np.random.default_rng(1)
    for bits in range(1, 33):
        for n in (1, 7, 8, 9, 1001):
            values = rng.integers(0, 1 << bits, size=(3, n), dtype=np.int64)
            packed = pack_rows(torch.from_numpy(values).to(device), bits).cpu().numpy()
            for row, got in zip(values, packed, strict=True):
                assert got.tobytes() == pack_uint(row.astype(np.uint32), bits), (bits, n)


def _sdk_and_engine(plan, chunk, contexts_sdk, contexts_engine, device):
    locals_ = chunk.host_models(plan.global_arrays)
    request = message(RecordDict(), src=0, dst=5, message_type=MessageType.TRAIN)
    sdk = [
        upload_reply(request, plan, c, local, stats).content
        for c, local, stats in zip(contexts_sdk, locals_, chunk.stats, strict=True)
    ]
    blocks = [encoded for _, encoded in encode_chunk(plan, contexts_engine, chunk, device)]
    assert None not in blocks
    return sdk, tuple([v for b in blocks for v in b[part]] for part in range(3))


CODECS = {
    "8-bit stochastic": {"quant-bits": 8},
    "4-bit nearest, pruned": {"quant-bits": 4, "quant-rounding": "nearest", "prune": True},
    "2-bit stochastic + EF, pruned": {"quant-bits": 2, "error-feedback": True, "prune": True},
    "1-bit + EF, float64 global": {"quant-bits": 1, "error-feedback": True, "float64": True},
}


@pytest.mark.parametrize("device", DEVICES, ids=str)
@pytest.mark.parametrize("case", CODECS)
def test_device_payloads_and_residuals_are_the_sdks_over_two_rounds(case, device):
    config = dict(CODECS[case])
    prune, float64 = config.pop("prune", False), config.pop("float64", False)
    task = get_task("digits")
    plan = _plan(task, {"quant-chunk": 256, **config}, prune=prune)
    if float64:  # FedAdam's server sends float64 arrays: numpy promotes the delta
        plan = dataclasses.replace(
            plan, global_arrays={k: v.astype(np.float64) for k, v in plan.global_arrays.items()}
        )
    chunk = train_clients(plan, stack_clients(_clients(task, k=4), CPU), [1, 2, 3, 4], CPU)
    chunk = dataclasses.replace(chunk, local={k: v.to(device) for k, v in chunk.local.items()})
    sdk_contexts = [node_context(i, 4, node_id=20 + i) for i in range(4)]
    engine_contexts = [node_context(i, 4, node_id=20 + i) for i in range(4)]
    for _ in range(2):  # the second round adds the residual the first one kept
        sdk, (payloads, carried, kept) = _sdk_and_engine(
            plan, chunk, sdk_contexts, engine_contexts, device
        )
        assert payloads == [r[UPDATE_RECORD_KEY][PAYLOAD_FIELD] for r in sdk]
        if plan.error_feedback:  # the residual norms the replies report, to the bit
            assert carried == [r["metrics"]["residual-carried"] for r in sdk]
            assert kept == [r["metrics"]["residual-norm"] for r in sdk]
        for ours, theirs in zip(engine_contexts, sdk_contexts, strict=True):
            mine, ref = stored_residual(ours.state), stored_residual(theirs.state)
            assert list(mine) == list(ref)
            assert all(mine[n].tobytes() == ref[n].tobytes() for n in ref)
    if plan.error_feedback:
        assert all(c > 0 for c in carried)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # numpy on the injected inf
def test_a_block_with_a_non_finite_update_is_left_to_the_sdk_encoder(monkeypatch):
    """Blocks of 2: the second holds an inf; its clients go through the SDK's encoder, once."""
    monkeypatch.setitem(memory.ENCODE_BLOCK, "cpu", 2)
    task = get_task("digits")
    plan = _plan(task, {"quant-bits": 4, "error-feedback": True})
    chunk = train_clients(plan, stack_clients(_clients(task, k=4), CPU), [1, 2, 3, 4], CPU)
    chunk.local[next(iter(chunk.local))][3].view(-1)[5] = float("inf")
    engine_contexts = [node_context(i, 4) for i in range(4)]
    sdk_contexts = [node_context(i, 4) for i in range(4)]
    requests = [message(RecordDict(), src=0, dst=5, message_type=MessageType.TRAIN)] * 4
    replies, _, by_sdk = quantized_replies(ChunkJob(plan, requests, engine_contexts, chunk, CPU))
    locals_ = chunk.host_models(plan.global_arrays)
    sdk = [  # client 3's own encoder fails on the inf (error feedback decodes what it sends)
        upload_reply(requests[0], plan, c, local, stats).content
        for c, local, stats in zip(sdk_contexts[:3], locals_, chunk.stats, strict=False)
    ]
    assert by_sdk == 2 and len(replies) == 4 and replies[3].has_error()
    assert "non-finite" in replies[3].error.reason or "bad-scale" in replies[3].error.reason
    for reply, ref, ours, theirs in zip(replies, sdk, engine_contexts, sdk_contexts, strict=False):
        payload = reply.content[UPDATE_RECORD_KEY][PAYLOAD_FIELD]
        assert payload == ref[UPDATE_RECORD_KEY][PAYLOAD_FIELD]
        mine, expected = stored_residual(ours.state), stored_residual(theirs.state)
        assert all(mine[n].tobytes() == expected[n].tobytes() for n in expected)


@pytest.mark.parametrize("case", ["8-bit stochastic", "2-bit stochastic + EF, pruned"])
def test_the_device_codec_with_device_draws_sends_the_sdks_bytes(case, monkeypatch):
    """The engine computes the noise on the device on CUDA only; forced here on the CPU."""
    monkeypatch.setattr(codec, "DEVICE_DRAWS", {"cpu", "cuda"})
    test_device_payloads_and_residuals_are_the_sdks_over_two_rounds(case, CPU)
