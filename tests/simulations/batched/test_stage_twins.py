"""Every registered stage twin of the batched engine against the wire's reference stage.

One parametrized test runs each twin on K seeded random rows (odd sizes: 1, 7, 333, 1537
values, partial chunks, a zero row and a masked tensor) and the wire stage on each row alone:
header params and body sections must be equal byte for byte, and the twin's ``decoded`` rows
must be what the wire stage decodes from its own sections, bit for bit. One stated exception:
``rotate`` runs its Hadamard products through torch's BLAS, which adds in another order than
numpy's, so its rotated rows and their inverse agree to float32 rounding only (atol 1e-5 on
unit-normal values: a 2-pass rotation of blocks up to 1024 adds ~1e-7 relative per pass);
its params (seeds, block) are still equal exactly. On a CUDA device (when there is one) the
same holds, with stochastic-rounding noise drawn by the device's PCG64 port.
"""

import numpy as np
import pytest
import torch

from simulations.batched.stage_twins import TWINS, TwinContext, run_twins
from wire.codec import CodecSpec
from wire.kept import TensorSpec, segment_lengths
from wire.mask import MaskSet
from wire.registry import STAGES, encode_chain
from wire.rotation import ROTATE, padded_length
from wire.stage_api import DecodeContext, EncodeContext

CPU = torch.device("cpu")
DEVICES = [CPU] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
K = 3
SIZES = [1, 7, 333, 1537]
# codecs that run each stage (the stage under test is the one named)
CODECS = {
    "select": [CodecSpec()],
    "rotate": [
        CodecSpec(rotate="client", rotate_block=64),
        CodecSpec(rotate="shared", rotate_seed=11, rotate_block=1024),
    ],
    "quantize": [
        CodecSpec(quant_bits=4, quant_chunk=100),
        CodecSpec(quant_bits=8, quant_chunk=1024, stochastic=False),
        CodecSpec(quant_bits=1, quant_chunk=7),
        CodecSpec(quant_bits=2, quant_chunk=333),
    ],
    "float32": [CodecSpec()],
    "eden": [
        CodecSpec(quant_bits=b, scheme="eden", quant_chunk=c, eden_scale=s)
        for b, c, s in [(1, 100, "unbiased"), (2, 1024, "mse"), (4, 7, "unbiased")]
    ],
    "sign": [CodecSpec(quant_bits=1, scheme="sign", quant_chunk=100)],
    "subsample": [  # rows stand for rotated values: see _rotated_case
        CodecSpec(quant_bits=1, scheme="eden", rotate="client", rotate_block=64, quant_fraction=f)
        for f in (0.25, 0.5)
    ]
    + [
        CodecSpec(
            quant_bits=2,
            scheme="eden",
            rotate="client",
            rotate_block=64,
            quant_fraction=0.1,
            eden_scale="mse",
        )
    ],
}
EXACT_VALUES = {"select", "quantize", "float32", "eden", "sign", "subsample"}  # rotate: docstring


def _rows(n: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(K, n)).astype(np.float32)
    rows[1] = 0.0  # an all-zero client: scale 0, range 0
    return rows


def _rotated_case(codec: CodecSpec, n: int, seeds: list[int]):
    """``subsample`` follows a rotation: each row's rotate params (its seed drawn as the SDK
    draws it) and a padded length, so rows of that many values stand for rotated ones."""
    rotations = [
        ROTATE.header_params(codec, n, EncodeContext([], None, [], rng=np.random.default_rng(s)))
        for s in seeds
    ]
    return rotations, padded_length(n, rotations[0]["block"])


def _select_case(n: int, seed: int):
    """Two tensors whose kept values number about ``n``: [K, 2, m] under a mask, [K, r] whole."""
    rng = np.random.default_rng(seed)
    m = max(1, n // 2)
    specs = [TensorSpec("w", (2, m)), TensorSpec("b", (n - n // 2 + 1,))]
    mask = rng.random((2, m)) < 0.6
    masks = MaskSet({"w": mask})
    tensors = [rng.normal(size=(K, *s.shape)).astype(np.float32) for s in specs]
    return specs, masks, tensors


@pytest.mark.parametrize("device", DEVICES, ids=str)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("stage", sorted(TWINS))
def test_each_twin_writes_the_wire_stages_bytes(stage, n, device):
    assert stage in CODECS, f"twin {stage!r} has no test case here"
    for case, codec in enumerate(CODECS[stage]):
        seed = 1000 * case + n
        seeds = [seed + k for k in range(K)]  # each row's codec generator seed
        if stage == "select":
            specs, masks, tensors = _select_case(n, seed)
        else:
            specs, masks, tensors = [TensorSpec("x", (n,))], None, None
        lengths = segment_lengths(specs, masks)
        rotations = []
        if stage == "subsample":
            rotations, n = _rotated_case(codec, n, seeds)
        rows = None if tensors is not None else _rows(n, seed)
        ctx = TwinContext(
            specs,
            masks,
            lengths,
            device,
            seeds=seeds,
            tensors=[] if tensors is None else [torch.from_numpy(t).to(device) for t in tensors],
            previous=[("rotate", rotations)] if rotations else [],
        )
        values = None if rows is None else torch.from_numpy(rows).to(device)
        twin = TWINS[stage].encode(values, codec, ctx)
        back = twin.decoded(twin.values).cpu().numpy()  # the next stage sent its input back
        for k in range(K):
            wctx = EncodeContext(
                specs,
                masks,
                lengths,
                tensors=[] if tensors is None else [t[k] for t in tensors],
                rng=np.random.default_rng(seeds[k]),
                previous=[("rotate", rotations[k])] if rotations else [],
            )
            ref = STAGES[stage].encode(None if rows is None else rows[k], codec, wctx)
            assert twin.params[k] == ref.params, (stage, codec)
            assert [name for name, _ in twin.sections] == [name for name, _ in ref.sections]
            for (_, got), (_, want) in zip(twin.sections, ref.sections, strict=True):
                assert got[k].cpu().numpy().tobytes() == bytes(want), (stage, codec, k)
            dctx = DecodeContext(
                specs, masks, lengths, previous=(("rotate", rotations[k]),) if rotations else ()
            )
            count = sum(lengths) if stage == "select" else n
            out, layout = STAGES[stage].layout(ref.params, count, dctx)
            sections = {name: memoryview(bytes(buf)) for name, buf in ref.sections}
            assert [(s, len(sections[s])) for s, _ in layout] == layout
            if ref.values is None:  # a values stage: the server's decode of the wire's bytes
                want = STAGES[stage].decode(ref.params, sections, None, count, dctx)
                assert back[k].tobytes() == want.tobytes(), (stage, codec, k)
            elif stage == "subsample":  # decodes the sent values back into place
                assert twin.values[k].cpu().numpy().tobytes() == ref.values.tobytes()
                want = STAGES[stage].decode(ref.params, sections, ref.values, count, dctx)
                assert back[k].tobytes() == want.tobytes(), (stage, codec, k)
            elif stage in EXACT_VALUES:
                assert twin.values[k].cpu().numpy().tobytes() == ref.values.tobytes()
                assert back[k].tobytes() == ref.values.tobytes()
            else:
                assert out == ref.values.size
                np.testing.assert_allclose(twin.values[k].cpu().numpy(), ref.values, atol=1e-5)
                np.testing.assert_allclose(back[k], rows[k], atol=1e-5)


def test_every_wire_stage_but_topk_has_a_twin():
    """``topk`` stays with the SDK's encoder (its positions coding is per client)."""
    assert set(TWINS) == set(STAGES) - {"topk"}


@pytest.mark.parametrize(
    "codec",
    [
        CodecSpec(quant_bits=2, scheme="eden", rotate="client", rotate_block=64),
        CodecSpec(quant_bits=1, scheme="sign", quant_chunk=50),
        CodecSpec(quant_bits=4, quant_chunk=100),
        CodecSpec(
            quant_bits=1, scheme="eden", rotate="client", rotate_block=64, quant_fraction=0.3
        ),
    ],
    ids=["rotate+eden", "sign", "quantize", "rotate+subsample+eden"],
)
def test_a_chain_of_twins_has_the_wire_chains_stages_and_sections(codec):
    specs, masks, tensors = _select_case(301, 5)
    lengths = segment_lengths(specs, masks)
    ctx = TwinContext(
        specs, masks, lengths, CPU, seeds=[7, 8, 9], tensors=[torch.from_numpy(t) for t in tensors]
    )
    run = run_twins(codec, None, ctx, from_select=True)
    assert [name for name, _ in ctx.previous] == [s.name for s in encode_chain(codec)]
    assert run.decoded().shape == (K, sum(lengths))
    if codec.rotate == "none":
        assert run.rotation_seeds is None
    else:
        assert len(set(run.rotation_seeds)) == K
