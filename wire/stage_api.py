"""The one interface every codec stage implements (an encode/decode pair with exact byte counts).

pfl-research's postprocessors (``pfl/postprocessor/base.py``) pair ``postprocess_one_user`` with
``postprocess_server``; a Pollen stage pairs:

- ``header_params(codec, count, ctx)``: the header parameters (shared by every row encoder);
- ``encode(values, codec, ctx)`` -> :class:`Encoded`: the values for the next stage (None after
  a values stage), the parameters it writes in the header and its named body sections;
- ``layout(params, count, ctx)`` -> (values it hands the next stage, [(section, bytes)]):
  validates every header parameter (a wrong type, range or key is an
  :class:`~wire.errors.UpdateRejected`) before any body byte is read;
- ``decode(params, sections, values, count, ctx)``: the ``count`` values that entered the stage
  on encode, from its sections and the next stage's decoded values (None for a values stage).

``slot`` places a stage in the chain ``select`` -> [sparsify] -> [transform] -> [subsample] ->
values
(:mod:`wire.registry` holds the stages and walks the chain).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

if TYPE_CHECKING:
    from wire.codec import CodecSpec
    from wire.kept import TensorSpec
    from wire.mask import MaskSet

# A stage's place in the chain: exactly one SELECT first and one VALUES last, at most one of each
# optional slot between them, in this order.
SELECT, SPARSIFY, TRANSFORM, SUBSAMPLE, VALUES = 0, 1, 2, 3, 4
OPTIONAL_SLOTS = (SPARSIFY, TRANSFORM, SUBSAMPLE)

Params = dict[str, Any]
Sections = list[tuple[str, bytes | memoryview]]


class Encoded(NamedTuple):
    values: np.ndarray | None  # what the next stage encodes; None after a values stage
    params: Params
    sections: Sections


@dataclass
class EncodeContext:
    """What a stage may read while encoding: the tensors (``select``'s input), the pruning mask,
    each tensor's kept count, the codec generator and the stages that ran before it."""

    specs: Sequence[TensorSpec]
    masks: MaskSet | None
    lengths: Sequence[int]
    tensors: Sequence[np.ndarray] = ()
    rng: np.random.Generator | None = None
    rotation_seed: int | None = None  # a row encoder's given seed (else drawn or shared)
    previous: list[tuple[str, Params]] = field(default_factory=list)

    def params_of(self, name: str) -> Params | None:
        return next((p for n, p in self.previous if n == name), None)


@dataclass(frozen=True)
class DecodeContext:
    """What the server knows while decoding: tensor specs, the pruning mask, kept counts,
    this round's shared rotation seed (None: any) and the header's stages before this one
    (name, params), already checked by their ``layout``."""

    specs: Sequence[TensorSpec]
    masks: MaskSet | None
    lengths: Sequence[int]
    rotation_seed: int | None = None
    previous: tuple[tuple[str, Mapping[str, Any]], ...] = ()

    def params_of(self, name: str) -> Mapping[str, Any] | None:
        return next((p for n, p in self.previous if n == name), None)

    def then(self, name: str, params: Mapping[str, Any]) -> DecodeContext:
        """This context for the stage after ``name`` (whose ``layout`` accepted ``params``)."""
        return replace(self, previous=(*self.previous, (name, params)))


class Stage(Protocol):
    name: str
    slot: int

    def wanted(self, codec: CodecSpec) -> bool:
        """Whether encoding with ``codec`` runs this stage."""
        ...

    def header_params(self, codec: CodecSpec, count: int, ctx: EncodeContext) -> Params:
        """The params it writes for ``count`` input values (what a row encoder writes without
        seeing the values); a ValueError where they depend on the values (``topk``)."""
        ...

    def encode(self, values: np.ndarray, codec: CodecSpec, ctx: EncodeContext) -> Encoded: ...

    def layout(
        self, params: Mapping[str, Any], count: int, ctx: DecodeContext
    ) -> tuple[int, list[tuple[str, int]]]: ...

    def decode(
        self,
        params: Mapping[str, Any],
        sections: Mapping[str, memoryview],
        values: np.ndarray | None,
        count: int,
        ctx: DecodeContext,
    ) -> np.ndarray: ...
