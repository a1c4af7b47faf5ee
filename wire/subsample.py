"""Fractional bits per coordinate: a seeded random subset of the rotated coordinates.

EDEN (Vargaftik et al., "EDEN: Communication-Efficient and Robust Distributed Mean Estimation
for Federated Learning", ICML 2022) reaches b < 1 bit per coordinate by sending only a random
fraction p of the rotated coordinates, each at 1 (or more) bits; the receiver puts zeros at the
others and scales the sent ones by 1/p, which keeps the estimate unbiased. Without the 1/p it is
random-k sparsification, meant for error feedback (Stich, Cordonnier & Jaggi, "Sparsified SGD
with Memory", NeurIPS 2018): the residual keeps the unsent coordinates for the next round.

No index and no seed travel. Every rotation block of ``block`` values sends the same ``keep``
positions: the first ``keep`` of ``default_rng(seed).permutation(block)``, ascending, where
``seed`` is drawn from the per-client rotation seed (:func:`subset_seed`) and ``block`` is the
rotation's, both read from the ``rotate`` stage just before in the header; each block has signs
of its own, so the positions are a uniform random subset of every block's rotated basis. The
params are ``keep`` and ``scale`` (``unbiased``: x 1/p; ``none``: for error feedback). The
values stage (EDEN) puts one scale on each block's ``keep`` values (:func:`wire.eden._chunk`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from wire.errors import RejectReason, UpdateRejected
from wire.stage_api import SUBSAMPLE, DecodeContext, EncodeContext, Encoded, Params

if TYPE_CHECKING:
    from wire.codec import CodecSpec

MAX_SUBSET_SEED = 1 << 32
PARAMS = frozenset({"keep", "scale"})
SCALES = ("unbiased", "none")


def subset_seed(rotation_seed: int) -> int:
    """The subset's seed, drawn from the rotation's (a stream of its own)."""
    return int(np.random.default_rng([int(rotation_seed), 0x535542]).integers(MAX_SUBSET_SEED))


def keep_of(fraction: float, block: int) -> int:
    """Coordinates sent per block: ``ceil(fraction * block)``, at least 1."""
    return max(1, min(block, math.ceil(fraction * block)))


@functools.lru_cache(maxsize=64)
def positions(seed: int, block: int, keep: int) -> np.ndarray:
    """The ``keep`` positions sent in every block of ``block`` values (ascending int64)."""
    out = np.sort(np.random.default_rng(seed).permutation(block)[:keep])
    out.setflags(write=False)
    return out


def inverse_fraction(block: int, keep: int) -> np.float32:
    """The unbiased variant's factor ``block / keep`` (1 / p), rounded once to float32."""
    return np.float32(block / keep)


def subsample(values: np.ndarray, seed: int, block: int, keep: int) -> np.ndarray:
    """The sent values: each block's ``positions``, block after block (float32)."""
    rows = np.asarray(values, dtype=np.float32).reshape(-1, block)
    return rows[:, positions(seed, block, keep)].ravel()


def expand(
    sent: np.ndarray, seed: int, block: int, keep: int, count: int, unbiased: bool
) -> np.ndarray:
    """``count`` float32 values: ``sent`` (times 1/p when ``unbiased``) at the positions, 0 else."""
    rows = np.asarray(sent, dtype=np.float32).reshape(-1, keep)
    if unbiased:
        rows = rows * inverse_fraction(block, keep)
    out = np.zeros((count // block, block), dtype=np.float32)
    out[:, positions(seed, block, keep)] = rows
    return out.ravel()


def _reject(detail: str) -> UpdateRejected:
    return UpdateRejected(RejectReason.BAD_HEADER, detail)


def _rotation(params: Mapping[str, Any] | None) -> tuple[int, int]:
    """(subset seed, block) from the rotate stage's params."""
    if params is None:
        raise ValueError("subsample needs a rotation before it (its seed is the rotation's)")
    return subset_seed(params["seed"]), params["block"]


class SubsampleStage:
    """Encode/decode pair ``subsample``: params ``{"keep", "scale"}``, no body section; hands
    ``count / block * keep`` values to the values stage. Runs right after a per-client rotation
    (:class:`~wire.codec.CodecSpec` refuses it otherwise; a header without one is refused)."""

    name, slot = "subsample", SUBSAMPLE

    def wanted(self, codec: CodecSpec) -> bool:
        return codec.quant_fraction < 1

    def header_params(self, codec: CodecSpec, count: int, ctx: EncodeContext) -> Params:
        _, block = _rotation(ctx.params_of("rotate"))
        scale = "unbiased" if codec.eden_scale == "unbiased" else "none"
        return {"keep": keep_of(codec.quant_fraction, block), "scale": scale}

    def encode(self, values: np.ndarray, codec: CodecSpec, ctx: EncodeContext) -> Encoded:
        params = self.header_params(codec, values.size, ctx)
        seed, block = _rotation(ctx.params_of("rotate"))
        return Encoded(subsample(values, seed, block, params["keep"]), params, [])

    def layout(
        self, params: Mapping[str, Any], count: int, ctx: DecodeContext
    ) -> tuple[int, list[tuple[str, int]]]:
        if set(params) != PARAMS:
            raise _reject(
                f"subsample needs exactly the params {sorted(PARAMS)}, "
                f"got {sorted(map(str, params))[:10]}"
            )
        if not ctx.previous or ctx.previous[-1][0] != "rotate":
            raise UpdateRejected(
                RejectReason.STAGE_ORDER, "subsample must follow a rotate stage (its seed)"
            )
        block = ctx.previous[-1][1]["block"]  # checked by rotate's layout
        keep, scale = params["keep"], params["scale"]
        if type(keep) is not int or not 1 <= keep <= block:
            raise _reject(f"subsample keep {str(keep)[:50]} is not an int in [1, {block}]")
        if type(scale) is not str or scale not in SCALES:
            raise _reject(f"subsample scale {str(scale)[:50]!r} is not one of {SCALES}")
        return count // block * keep, []

    def decode(self, params, sections, values, count, ctx) -> np.ndarray:
        seed, block = _rotation(ctx.params_of("rotate"))
        keep = params["keep"]
        if params["scale"] == "unbiased":
            with np.errstate(over="ignore", invalid="ignore"):  # refused just below
                values = values * inverse_fraction(block, keep)
            if not np.isfinite(values).all():
                raise UpdateRejected(RejectReason.NON_FINITE, "a sent value times 1/p overflows")
        return expand(values, seed, block, keep, count, unbiased=False)


SUBSAMPLE_STAGE = SubsampleStage()
