"""The engine's EDEN/DRIVE, EF-signSGD and rotation twins against the SDK's numpy encoder.

Without rotation the payloads and residuals are the SDK's byte for byte; with it the rotated
values agree to float32 rounding (numpy's and torch's BLAS add in their own orders), so the
payloads decode to the same update within a stated tolerance and almost every code agrees.
"""

import dataclasses

import numpy as np
import pytest
import torch
from flwr.app import MessageType, RecordDict

from client_sdk.tasks import get_task
from client_sdk.upload import stored_residual, upload_reply
from simulations.batched.chunk_job import ChunkJob
from simulations.batched.encoder import encode_chunk
from simulations.batched.replies import ReplyOptions, chunk_replies
from simulations.batched.rotation_rows import (
    eden_rows,
    eden_values,
    fwht_rows,
    rotate_rows,
    sign_rows,
    unrotate_rows,
)
from simulations.batched.training import stack_clients, train_clients
from tests.helpers.batched import CPU
from tests.helpers.batched import client_data as _clients
from tests.helpers.batched import round_plan as _plan
from tests.messages import message, node_context
from wire import PAYLOAD_FIELD, UPDATE_RECORD_KEY, TensorSpec, decode_update, keys
from wire.eden import eden_dequantize, eden_quantize, sign_quantize
from wire.format import read_header
from wire.header_ref import RoundHeaders
from wire.rotation import fwht, random_signs, rotate, unrotate

DEVICES = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES, ids=str)
@pytest.mark.parametrize("block", [2, 64, 1024, 1 << 13])
def test_torch_hadamard_and_rotation_match_numpy_to_float_rounding(block, device):
    rng = np.random.default_rng(block)
    rows = rng.normal(size=(3, 2 * block)).astype(np.float32)
    got = fwht_rows(torch.from_numpy(rows.reshape(-1, block)).to(device)).cpu().numpy()
    np.testing.assert_allclose(got, fwht(rows.reshape(-1, block)), atol=2e-5 * np.sqrt(block))
    count = 2 * block - 1  # padded to two blocks
    signs = torch.from_numpy(
        np.stack([random_signs(s, 4 * block).reshape(2, 2 * block) for s in (1, 2, 3)])
    )
    rotated = rotate_rows(torch.from_numpy(rows[:, :count]).to(device), signs.to(device), block)
    for k, seed in enumerate((1, 2, 3)):
        np.testing.assert_allclose(
            rotated[k].cpu().numpy(), rotate(rows[k, :count], seed, block), atol=1e-5
        )
    back = unrotate_rows(rotated, signs.to(device), block, count).cpu().numpy()
    np.testing.assert_allclose(back, rows[:, :count], atol=1e-5)
    np.testing.assert_allclose(
        unrotate(rotate(rows[0, :count], 1, block), 1, block, count), rows[0, :count], atol=1e-5
    )


@pytest.mark.parametrize("device", DEVICES, ids=str)
@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("scale", ["unbiased", "mse"])
def test_eden_and_sign_rows_are_the_wires_bit_for_bit(bits, scale, device):
    rng = np.random.default_rng(bits)
    rows = rng.normal(size=(4, 1000)).astype(np.float32)
    rows[1, :256] = 0.0  # an all-zero chunk: scale 0
    rows[2, 5] = 0.0  # a zero in a chunk: code of +, excluded from nothing
    codes, scales = eden_rows(torch.from_numpy(rows).to(device), bits, 256, scale)
    values = eden_values(codes, scales, bits, 256).cpu().numpy()
    sign_codes, sign_scales = sign_rows(torch.from_numpy(rows).to(device), 300)
    for k, row in enumerate(rows):
        ref_codes, ref_scales = eden_quantize(row, bits, 256, scale)
        np.testing.assert_array_equal(codes[k].cpu().numpy(), ref_codes)
        assert scales[k].cpu().numpy().tobytes() == ref_scales.tobytes()
        assert values[k].tobytes() == eden_dequantize(ref_codes, ref_scales, bits, 256).tobytes()
        ref_sign, ref_sign_scales = sign_quantize(row, 300)
        np.testing.assert_array_equal(sign_codes[k].cpu().numpy(), ref_sign)
        assert sign_scales[k].cpu().numpy().tobytes() == ref_sign_scales.tobytes()


def _engine_vs_sdk(config, prune=False, rounds=2):
    task = get_task("digits")
    return _engine_vs_sdk_plan(_plan(task, {"quant-chunk": 256, **config}, prune=prune), rounds)


def _engine_vs_sdk_plan(plan, rounds=2):
    task = plan.task
    chunk = train_clients(plan, stack_clients(_clients(task, k=4), CPU), [1, 2, 3, 4], CPU)
    sdk_contexts = [node_context(i, 4, node_id=20 + i) for i in range(4)]
    engine_contexts = [node_context(i, 4, node_id=20 + i) for i in range(4)]
    request = message(RecordDict(), src=0, dst=5, message_type=MessageType.TRAIN)
    out = []
    for _ in range(rounds):
        locals_ = chunk.host_models(plan.global_arrays)
        sdk = [
            upload_reply(request, plan, c, local, stats).content[UPDATE_RECORD_KEY][PAYLOAD_FIELD]
            for c, local, stats in zip(sdk_contexts, locals_, chunk.stats, strict=True)
        ]
        blocks = [b for _, b in encode_chunk(plan, engine_contexts, chunk, CPU)]
        assert None not in blocks
        out.append((sdk, [p for b in blocks for p in b[0]]))
    return plan, out, sdk_contexts, engine_contexts


@pytest.mark.parametrize(
    "config",
    [
        {"quant-scheme": "sign", "quant-bits": 1, "error-feedback": True},
        {"quant-scheme": "eden", "quant-bits": 2, "error-feedback": True, "eden-scale": "mse"},
        {"quant-scheme": "eden", "quant-bits": 4},
    ],
    ids=["ef-signsgd", "eden-2-mse-ef", "eden-4"],
)
def test_unrotated_device_payloads_and_residuals_are_the_sdks(config):
    plan, rounds, sdk_contexts, engine_contexts = _engine_vs_sdk(config, prune=True)
    for sdk, engine in rounds:
        assert engine == sdk
    for ours, theirs in zip(engine_contexts, sdk_contexts, strict=True):
        mine, ref = stored_residual(ours.state), stored_residual(theirs.state)
        assert list(mine) == list(ref)
        assert all(mine[n].tobytes() == ref[n].tobytes() for n in ref)


@pytest.mark.parametrize(
    "rotation,bits,fraction",
    [("client", 1, 1.0), ("client", 4, 1.0), ("shared", 1, 1.0), ("shared", 4, 1.0)]
    + [("client", 1, 0.25)],  # EDEN's fractional bits (wire.subsample)
)
def test_rotated_device_payloads_decode_as_the_sdks_within_float_error(rotation, bits, fraction):
    config = {
        "quant-scheme": "eden",
        "quant-bits": bits,
        "rotate": rotation,
        "rotate-block": 512,
        "rotate-seed": 77,
        "error-feedback": True,
        "quant-fraction": fraction,
    }
    plan, rounds, sdk_contexts, engine_contexts = _engine_vs_sdk(config, prune=True)
    agree, total = 0, 0
    for sdk, engine in rounds:
        for theirs, ours in zip(sdk, engine, strict=True):
            h_sdk, h_engine = read_header(theirs), read_header(ours)
            assert h_sdk == h_engine  # same stages, seeds, blocks and section sizes
            seed = h_sdk["stages"][1]["params"]["seed"]
            assert (seed == 77) == (rotation == "shared")
            a = np.concatenate([t.ravel() for t in decode_update(theirs, masks=plan.masks).tensors])
            b = np.concatenate([t.ravel() for t in decode_update(ours, masks=plan.masks).tensors])
            scale = np.abs(a).max()
            np.testing.assert_allclose(b, a, atol=2e-3 * scale)  # a flipped code moves one value
            agree += int(np.sum(np.isclose(a, b, rtol=1e-4, atol=1e-6 * scale)))
            total += a.size
    assert agree >= 0.995 * total
    for ours, theirs in zip(engine_contexts, sdk_contexts, strict=True):
        mine, ref = stored_residual(ours.state), stored_residual(theirs.state)
        assert all(np.allclose(mine[n], ref[n], atol=5e-3 * np.abs(ref[n]).max()) for n in ref)


def test_chunk_replies_routes_each_codec_to_its_encoder():
    """eden/sign: the device twin (no SDK clients); rotation + uniform or float32: the SDK's."""
    task = get_task("digits")
    cases = [
        ({"quant-scheme": "eden", "quant-bits": 1, "rotate": "client"}, 0, "eden"),
        ({"quant-scheme": "sign", "quant-bits": 1}, 0, "sign"),
        ({"quant-bits": 4, "rotate": "client"}, 4, "quantize"),
        ({"rotate": "client"}, 4, "float32"),
    ]
    for config, want_sdk, last_stage in cases:
        plan = _plan(task, config)
        chunk = train_clients(plan, stack_clients(_clients(task, k=4), CPU), [1, 2, 3, 4], CPU)
        contexts = [node_context(i, 4) for i in range(4)]
        requests = [message(RecordDict(), src=0, dst=5, message_type=MessageType.TRAIN)] * 4
        plan = dataclasses.replace(plan, config=plan.config)
        job = ChunkJob(plan, requests, contexts, chunk, CPU)
        replies, pooled, by_sdk = chunk_replies(job, ReplyOptions(pool=True))
        assert (pooled, by_sdk) == (0, want_sdk), config
        header = read_header(replies[0].content[UPDATE_RECORD_KEY][PAYLOAD_FIELD])
        assert header["stages"][-1]["name"] == last_stage


@pytest.mark.parametrize("rotation", ["client", "shared"])
def test_device_and_sdk_payloads_reference_the_announced_header_alike(rotation):
    """With the round's header announced (v3), both encoders send the 4-byte reference and the
    same body layout; each decodes, with the server's expected header for its node, as the
    full-header payloads do (within the rotation's float error)."""
    config = {
        "quant-scheme": "eden",
        "quant-bits": 1,
        "rotate": rotation,
        "rotate-block": 512,
        "rotate-seed": 77,
        "quant-fraction": 0.5 if rotation == "client" else 1.0,  # a subset needs its own seed
    }
    task = get_task("digits")
    plain = _plan(task, {"quant-chunk": 256, **config}, prune=True)
    specs = [TensorSpec(n, a.shape) for n, a in plain.global_arrays.items()]
    headers = RoundHeaders(tuple(specs), plain.server_round, plain.codec, plain.masks)
    announced = _plan(
        task, {"quant-chunk": 256, **config, keys.HEADER_REF: headers.digest}, prune=True
    )
    assert announced.header_ref == headers.digest and plain.header_ref is None
    _, [(sdk, engine)], _, _ = _engine_vs_sdk_plan(announced, rounds=1)
    _, [(sdk_full, _)], _, _ = _engine_vs_sdk_plan(plain, rounds=1)
    for k, (theirs, ours, full) in enumerate(zip(sdk, engine, sdk_full, strict=True)):
        node = 20 + k  # its reference: its own header's digest (the announced one if shared)
        reference = headers.reference_for(node)
        assert (reference == headers.digest) == (rotation == "shared")
        assert theirs[:14] == ours[:14] == b"PLNW\x03\x00\x04\x00\x00\x00" + reference
        assert len(theirs) == len(ours) == len(full) - read_header_bytes(full) + 14
        seed = headers.rotation_seed(node)
        got = [
            decode_update(p, masks=plain.masks, headers=headers, node_id=node, rotation_seed=seed)
            for p in (theirs, ours)
        ]
        want = decode_update(full, masks=plain.masks, rotation_seed=seed)
        assert all(
            a.tobytes() == b.tobytes() for a, b in zip(got[0].tensors, want.tensors, strict=True)
        )
        a, b = (np.concatenate([t.ravel() for t in d.tensors]) for d in got)
        np.testing.assert_allclose(b, a, atol=2e-3 * np.abs(a).max())


def read_header_bytes(payload):
    return 10 + int.from_bytes(payload[6:10], "little")
