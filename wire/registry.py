"""A small registry of codec stages as encode/decode pairs, and the chain's tail they form.

The chain is ``select`` → [``topk``] → [a transform] → a values stage. ``select``, ``topk``,
``quantize`` and ``float32`` are :mod:`wire.stages`' functions; the stages registered here are
self-contained objects (the shape the redesign gives every stage): a *transform* maps n values
to ``check(params, n)`` values and back (``rotate``, :mod:`wire.rotation`); a *values* stage
turns the last vector into body sections and back (``eden``, ``sign``, :mod:`wire.eden`). Each
states its body ``sections(params, count)`` (name, bytes) before any byte is read, validating
every header parameter (wrong type, range or an extra key is a typed rejection).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from wire.codec import CodecSpec
from wire.eden import EDEN, SIGN
from wire.errors import RejectReason, UpdateRejected
from wire.rotation import MAX_SEED, ROTATE
from wire.stages import decode_values, encode_values, values_sections

Sections = list[tuple[str, Any]]
OLD_VALUE_STAGES = ("float32", "quantize")


class TransformStage(Protocol):
    name: str

    def check(self, params: Mapping[str, Any], count: int) -> int: ...
    def sections(self, params: Mapping[str, Any], count: int) -> list[tuple[str, int]]: ...
    def decode(self, params: Mapping[str, Any], values: np.ndarray, count: int) -> np.ndarray: ...


class ValuesStage(Protocol):
    name: str

    def sections(self, params: Mapping[str, Any], count: int) -> list[tuple[str, int]]: ...
    def decode(
        self, params: Mapping[str, Any], sections: Mapping[str, memoryview], count: int
    ) -> np.ndarray: ...


TRANSFORMS: dict[str, TransformStage] = {}
VALUES: dict[str, ValuesStage] = {}


def register_transform(stage: TransformStage) -> TransformStage:
    TRANSFORMS[stage.name] = stage
    return stage


def register_values(stage: ValuesStage) -> ValuesStage:
    VALUES[stage.name] = stage
    return stage


register_transform(ROTATE)
register_values(EDEN)
register_values(SIGN)


def known_stages() -> set[str]:
    return {"select", "topk", *TRANSFORMS, *OLD_VALUE_STAGES, *VALUES}


def check_order(names: list[str]) -> None:
    """select → [topk] → [one transform] → one values stage, or a STAGE_ORDER rejection."""
    rest = names[1:]
    if rest[:1] == ["topk"]:
        rest = rest[1:]
    if rest[:1] and rest[0] in TRANSFORMS:
        rest = rest[1:]
    if names[:1] != ["select"] or len(rest) != 1 or rest[0] not in (*OLD_VALUE_STAGES, *VALUES):
        raise UpdateRejected(
            RejectReason.STAGE_ORDER,
            f"stages {names} are not select → [topk] → [{'|'.join(TRANSFORMS)}] → "
            f"{'|'.join((*OLD_VALUE_STAGES, *VALUES))}",
        )


def value_sections(stage: str, params: Mapping[str, Any], count: int) -> list[tuple[str, int]]:
    if stage in VALUES:
        return VALUES[stage].sections(params, count)
    return values_sections(stage, params, count)


def decode_value_stage(
    stage: str, params: Mapping[str, Any], sections: Mapping[str, memoryview], count: int
) -> np.ndarray:
    if stage in VALUES:
        return VALUES[stage].decode(params, sections, count)
    return decode_values(stage, params, sections, count)


def scale_chunk(codec: CodecSpec, block: int) -> int:
    """Values per eden/sign scale after a rotation in blocks of ``block``: at most one block.
    Each block is rotated on its own, so a scale spanning blocks of unequal energy is no longer
    rotation-equivariant and EDEN's unbiased scale turns biased (300 values with 5 spikes in
    blocks of 64 under one scale: the mean of 1000 estimates missed x by 1.2 ||x||)."""
    return min(codec.quant_chunk, block)


def encode_tail(
    values: np.ndarray, codec: CodecSpec, rng: np.random.Generator | None
) -> tuple[list[dict[str, Any]], Sections]:
    """The stages after select/topk for ``codec``: [rotate] then the values stage."""
    stages: list[dict[str, Any]] = []
    sections: Sections = []
    chunk = codec.quant_chunk
    if codec.rotate != "none":
        if codec.rotate == "shared":
            seed = codec.rotate_seed
        elif rng is None:
            raise ValueError("a per-client rotation needs an rng (numpy Generator) for its seed")
        else:
            seed = int(rng.integers(0, MAX_SEED))
        values, params, _ = ROTATE.encode(values, seed=seed, block=codec.rotate_block)
        stages.append({"name": ROTATE.name, "params": params})
        chunk = scale_chunk(codec, params["block"])
    if codec.scheme == "eden":
        params, value_sections_ = EDEN.encode(
            values, bits=codec.quant_bits, chunk=chunk, scale=codec.eden_scale
        )
        stages.append({"name": EDEN.name, "params": params})
    elif codec.scheme == "sign":
        params, value_sections_ = SIGN.encode(values, chunk=chunk)
        stages.append({"name": SIGN.name, "params": params})
    else:
        if codec.quant_bits and codec.stochastic and rng is None:
            raise ValueError("stochastic quantization needs an rng (numpy Generator)")
        params, value_sections_ = encode_values(
            values, codec.quant_bits, codec.quant_chunk, rng if codec.stochastic else None
        )
        stages.append({"name": "quantize" if codec.quant_bits else "float32", "params": params})
    return stages, sections + value_sections_
