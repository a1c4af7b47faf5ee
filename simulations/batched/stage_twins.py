"""Vectorized twins of the wire's codec stages: K clients' rows at once on the engine's device.

Each twin is registered under the name of the :mod:`wire.registry` stage it mirrors (the habit
of Opacus' ``register_grad_sampler``) and has one interface: ``encode(values, codec, ctx)``
takes [K, n] float32 rows (``select``'s twin: the tensors in ``ctx``) and returns
:class:`TwinEncoded`: the rows for the next stage, each row's header params (computed by the
wire stage's own ``header_params``, so they are written once), the body sections as [K, bytes]
uint8 tensors, and ``decoded``: what the server decodes from them, given the next stage's
decoded rows (error feedback stores ``target - decoded``). :func:`run_twins` runs a CodecSpec's
chain; :func:`wire.rows.encode_rows` turns the sections into payloads.

``topk`` has no twin: its positions coding stays with the SDK's encoder. The twins are the
wire's byte for byte except ``rotate`` (float32 rounding of BLAS sums:
``tests/simulations/batched/test_stage_twins.py`` states the tolerance). Stochastic rounding and
per-client rotation seeds start each row's codec generator (``ctx.seeds``) afresh, as the SDK
does when no other stage draws from it first; a rotation before uniform quantization (both draw)
stays with the SDK's encoder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np
import torch

from simulations.batched.codec import dequantize_rows, noise_rows, pack_rows, quantize_rows
from simulations.batched.rotation_rows import (
    eden_rows,
    eden_values,
    rotate_rows,
    sign_rows,
    sign_values,
    signs_rows,
    unrotate_rows,
)
from wire.codec import CodecSpec
from wire.eden import EDEN, SIGN
from wire.header_ref import rotation_seed_for
from wire.kept import TensorSpec
from wire.mask import MaskSet
from wire.registry import STAGES, encode_chain
from wire.rotation import MAX_SEED, ROTATE, padded_length
from wire.stage_api import EncodeContext, Params
from wire.stages import FLOAT32, QUANTIZE, SELECT_STAGE
from wire.subsample import SUBSAMPLE_STAGE, inverse_fraction, positions, subset_seed


class TwinEncoded(NamedTuple):
    values: torch.Tensor | None  # [K, m] rows for the next stage; None after a values stage
    params: list[Params]  # each row's header params
    sections: list[tuple[str, torch.Tensor]]  # [K, bytes] uint8 per body section
    decoded: Callable[[torch.Tensor | None], torch.Tensor]  # the server's [K, n] float32


@dataclass
class TwinContext:
    """What a twin may read: tensor specs, mask, kept counts, the device, each row's codec
    generator seed (None: no stage draws), ``select``'s input tensors ([K, *shape] each), each
    row's node id and the stages that ran before (name, each row's params)."""

    specs: Sequence[TensorSpec]
    masks: MaskSet | None
    lengths: Sequence[int]
    device: torch.device
    seeds: Sequence[int] | None = None
    tensors: Sequence[torch.Tensor] = ()
    node_ids: Sequence[int] | None = None  # each row's node: a per-client rotation's seed
    previous: list[tuple[str, list[Params]]] = field(default_factory=list)

    def wire_context(self, row: int = 0, rotation_seed: int | None = None) -> EncodeContext:
        """The wire's context for row ``row`` (for its stages' ``header_params``)."""
        previous = [(name, params[row]) for name, params in self.previous]
        return EncodeContext(
            self.specs, self.masks, self.lengths, rotation_seed=rotation_seed, previous=previous
        )

    def same_params(self, params: Params, rows: int) -> list[Params]:
        return [params] * rows


class StageTwin(Protocol):
    name: str

    def encode(self, values: torch.Tensor, codec: CodecSpec, ctx: TwinContext) -> TwinEncoded: ...


TWINS: dict[str, StageTwin] = {}


def register_twin(twin: StageTwin) -> StageTwin:
    """Register ``twin`` for the wire stage of the same name (which must exist)."""
    if twin.name not in STAGES:
        raise ValueError(f"no wire stage named {twin.name!r} to twin")
    TWINS[twin.name] = twin
    return twin


def _bytes(rows: torch.Tensor) -> torch.Tensor:
    """[K, bytes] uint8 view of [K, n] float32 rows (little-endian, as the wire writes)."""
    return rows.to(torch.float32).contiguous().view(torch.uint8)


def _same(values: torch.Tensor | None) -> torch.Tensor:
    return values


class SelectTwin:
    """``select``: each row's kept coordinates, float32, in :mod:`wire.kept`'s order."""

    name = SELECT_STAGE.name

    def encode(self, values, codec: CodecSpec, ctx: TwinContext) -> TwinEncoded:
        parts = []
        for spec, tensor in zip(ctx.specs, ctx.tensors, strict=True):
            flat = tensor.reshape(tensor.shape[0], -1).to(torch.float32)
            mask = None if ctx.masks is None else ctx.masks.masks.get(spec.name)
            if mask is not None:
                flat = flat[:, torch.from_numpy(np.asarray(mask).ravel()).to(flat.device)]
            parts.append(flat)
        kept = torch.cat(parts, dim=1)
        params = SELECT_STAGE.header_params(codec, kept.shape[1], ctx.wire_context())
        return TwinEncoded(kept, ctx.same_params(params, len(kept)), [], _same)


class RotateTwin:
    """``rotate``: each row's randomized Hadamard rotation (seeds as the SDK derives them from
    the node ids, else draws them)."""

    name = ROTATE.name

    def encode(self, values: torch.Tensor, codec: CodecSpec, ctx: TwinContext) -> TwinEncoded:
        k, n = values.shape
        if codec.rotate == "shared" or ctx.node_ids is not None:  # as the SDK's encode_update
            nodes = ctx.node_ids if ctx.node_ids is not None else [None] * k
            seeds = [rotation_seed_for(codec, node) for node in nodes]
        elif ctx.seeds is None:
            raise ValueError("a per-client rotation needs each row's generator seed")
        else:
            seeds = [int(np.random.default_rng(s).integers(0, MAX_SEED)) for s in ctx.seeds]
        params = [ROTATE.header_params(codec, n, ctx.wire_context(0, s)) for s in seeds]
        block = params[0]["block"] if params else 1
        signs = signs_rows(seeds, padded_length(n, block), values.device)

        def decoded(rows: torch.Tensor | None) -> torch.Tensor:
            return unrotate_rows(rows, signs, block, n)

        return TwinEncoded(rotate_rows(values, signs, block), params, [], decoded)


class SubsampleTwin:
    """``subsample``: each row's seeded subset of every rotated block (EDEN's fractional bits);
    ``decoded`` puts the values back (times 1/p when unbiased) with zeros elsewhere."""

    name = SUBSAMPLE_STAGE.name

    def encode(self, values: torch.Tensor, codec: CodecSpec, ctx: TwinContext) -> TwinEncoded:
        k, n = values.shape
        rotations = dict(ctx.previous)[ROTATE.name]
        params = [SUBSAMPLE_STAGE.header_params(codec, n, ctx.wire_context(r)) for r in range(k)]
        keep = params[0]["keep"] if params else 1
        block = rotations[0]["block"] if rotations else 1
        where = [positions(subset_seed(p["seed"]), block, keep) for p in rotations]
        index = torch.from_numpy(np.stack(where) if where else np.zeros((0, keep), np.int64))
        index = index.to(values.device)[:, None, :].expand(k, n // block, keep)
        sent = values.reshape(k, n // block, block).gather(2, index).reshape(k, -1)
        unbiased = bool(params) and params[0]["scale"] == "unbiased"
        factor = torch.tensor(inverse_fraction(block, keep), device=values.device)

        def decoded(rows: torch.Tensor | None) -> torch.Tensor:
            rows = rows.reshape(k, n // block, keep)
            out = torch.zeros(k, n // block, block, dtype=torch.float32, device=values.device)
            return out.scatter_(2, index, rows * factor if unbiased else rows).reshape(k, n)

        return TwinEncoded(sent, params, [], decoded)


class QuantizeTwin:
    """``quantize``: uniform b-bit codes and (min, max) per chunk, stochastic noise per row."""

    name = QUANTIZE.name

    def encode(self, values: torch.Tensor, codec: CodecSpec, ctx: TwinContext) -> TwinEncoded:
        k, n = values.shape
        bits, chunk = codec.quant_bits, codec.quant_chunk
        noise = None
        if codec.stochastic:
            if ctx.seeds is None:
                raise ValueError("stochastic quantization needs each row's generator seed")
            noise = noise_rows(list(ctx.seeds), n, chunk, values.device)
        codes, lo, hi = quantize_rows(values, bits, chunk, noise)
        scales = torch.stack([lo, hi], dim=2).reshape(k, -1)
        params = QUANTIZE.header_params(codec, n, ctx.wire_context())
        sections = [("scales", _bytes(scales)), ("codes", pack_rows(codes, bits))]

        def decoded(_: torch.Tensor | None) -> torch.Tensor:
            return dequantize_rows(codes, lo, hi, bits, chunk)

        return TwinEncoded(None, ctx.same_params(params, k), sections, decoded)


class Float32Twin:
    """``float32``: the rows' bytes."""

    name = FLOAT32.name

    def encode(self, values: torch.Tensor, codec: CodecSpec, ctx: TwinContext) -> TwinEncoded:
        rows = values.to(torch.float32)
        params = FLOAT32.header_params(codec, rows.shape[1], ctx.wire_context())
        return TwinEncoded(
            None, ctx.same_params(params, len(rows)), [("values", _bytes(rows))], lambda _: rows
        )


class EdenTwin:
    """``eden``: EDEN/DRIVE centroid codes and one float32 scale per chunk."""

    name = EDEN.name

    def encode(self, values: torch.Tensor, codec: CodecSpec, ctx: TwinContext) -> TwinEncoded:
        params = EDEN.header_params(codec, values.shape[1], ctx.wire_context())
        bits, chunk = params["bits"], params["chunk"]
        codes, scales = eden_rows(values, bits, chunk, params["scale"])
        sections = [("scales", _bytes(scales)), ("codes", pack_rows(codes, bits))]
        return TwinEncoded(
            None,
            ctx.same_params(params, len(values)),
            sections,
            lambda _: eden_values(codes, scales, bits, chunk),
        )


class SignTwin:
    """``sign``: EF-signSGD's 1-bit signs and mean-|x| scale per chunk."""

    name = SIGN.name

    def encode(self, values: torch.Tensor, codec: CodecSpec, ctx: TwinContext) -> TwinEncoded:
        params = SIGN.header_params(codec, values.shape[1], ctx.wire_context())
        chunk = params["chunk"]
        codes, scales = sign_rows(values, chunk)
        sections = [("scales", _bytes(scales)), ("codes", pack_rows(codes, 1))]
        return TwinEncoded(
            None,
            ctx.same_params(params, len(values)),
            sections,
            lambda _: sign_values(codes, scales, chunk),
        )


for _twin in (
    SelectTwin(),
    RotateTwin(),
    SubsampleTwin(),
    QuantizeTwin(),
    Float32Twin(),
    EdenTwin(),
    SignTwin(),
):
    register_twin(_twin)


@dataclass
class TwinRun:
    """A chain's sections ([K, bytes] uint8 each), its per-client rotation seeds (None without a
    rotation) and the stages' outputs, which :meth:`decoded` inverts."""

    sections: list[tuple[str, torch.Tensor]]
    rotation_seeds: list[int] | None
    outputs: list[TwinEncoded]

    def decoded(self) -> torch.Tensor:
        """What the server decodes: [K, kept] float32 (the select stage's values)."""
        rows = None
        for out in reversed(self.outputs):
            rows = out.decoded(rows)
        return rows

    def numpy_sections(self) -> dict[str, np.ndarray]:
        return {name: rows.cpu().numpy() for name, rows in self.sections}


def supported(codec: CodecSpec) -> bool:
    """Whether every stage ``codec`` runs has a twin (and no two of them draw from a client's
    generator: a per-client rotation before stochastic quantization)."""
    names = [stage.name for stage in encode_chain(codec)]
    draws = codec.rotate == "client" and "quantize" in names and codec.stochastic
    return all(name in TWINS for name in names) and not draws


def run_twins(
    codec: CodecSpec, kept: torch.Tensor, ctx: TwinContext, *, from_select: bool = False
) -> TwinRun:
    """Run ``codec``'s chain after ``select`` on [K, kept] rows (``from_select``: from the
    tensors in ``ctx``, ``kept`` unused)."""
    if not supported(codec):
        raise ValueError(f"a stage of {codec} has no batched twin; use the SDK's encoder")
    chain = encode_chain(codec)
    values, outputs, sections = kept, [], []
    if not from_select:
        chain = chain[1:]
        outputs.append(TwinEncoded(kept, [], [], _same))
    for stage in chain:
        out = TWINS[stage.name].encode(values, codec, ctx)
        ctx.previous.append((stage.name, out.params))
        outputs.append(out)
        sections += out.sections
        values = out.values
    rotate = dict(ctx.previous).get(ROTATE.name)
    seeds = None if rotate is None else [p["seed"] for p in rotate]
    return TwinRun(sections, seeds, outputs)
