"""Randomized Hadamard rotation: a seeded, exactly invertible (up to float error) linear stage.

``R(x) = (H D_2 / sqrt(B)) (H D_1 / sqrt(B)) x`` block by block: each ``D_r`` is a diagonal of
random signs drawn from one seed, ``H`` the B x B Walsh-Hadamard matrix (B a power of two) and
the vector is zero-padded to a multiple of B. ``H`` is symmetric and ``H H = B I``, so each pass
inverts as ``D_r H y / sqrt(B)``. (Two passes: see :data:`ROUNDS`.) After the
rotation every coordinate is a signed mix of the whole block: a vector whose energy sits in a
few coordinates comes out spread evenly, with coordinates close to Gaussian, which is what lets a
1-bit or few-bit quantizer with one scale per block lose little (Suresh et al., "Distributed
Mean Estimation with Limited Communication", ICML 2017; DRIVE, Vargaftik et al., NeurIPS 2021;
EDEN, Vargaftik et al., ICML 2022). Rotation is linear, so a rotation shared by every client of
a round (``seed`` from the server) commutes with summation: the server may sum rotated vectors
(secure aggregation) and rotate the sum back once (Kairouz et al., "The Distributed Discrete
Gaussian Mechanism", ICML 2021).

The transform is ``log2 B`` in-place butterfly passes (``a + b``, ``a - b``), O(n log B) additions
and no multiplications: the torch twin of the batched engine runs the same float32 operations in
the same order, so both give the same bits (``simulations/batched/rotation.py``). Signs are
``default_rng(seed).random(P, float32) < 0.5`` (-1 there), numpy's PCG64 draws, which the batched
engine can also compute on a GPU (:mod:`simulations.batched.pcg64`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from wire.errors import RejectReason, UpdateRejected
from wire.stage_api import TRANSFORM, DecodeContext, EncodeContext, Encoded, Params

if TYPE_CHECKING:
    from wire.codec import CodecSpec

MAX_BLOCK = 1 << 18  # three factors of 2^6
MAX_FACTOR_LOG2 = 6
MIN_BLOCK = 64
MAX_SEED = 1 << 63  # seeds are in [0, 2^63)
# passes of H D: one leaves a spiky vector's 1-bit EDEN estimate biased (a few random-signed
# terms per coordinate are far from Gaussian; 0.22 of ||x|| on 300 values with 5 spikes, 2000
# rotations), two make it unbiased to Monte Carlo precision (0.013), as a third does
ROUNDS, MAX_ROUNDS = 2, 3
PARAMS = frozenset({"seed", "block", "rounds"})


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def block_for(count: int, block: int) -> int:
    """The block used for ``count`` values: the largest power of two up to ``block`` (and to the
    count's next power of two) whose padding stays within 1/8 of the count, but not below 64
    (a smaller block mixes too few values): 610 values -> 128 (640), 9,610 -> 1024 (10,240)."""
    used = max(1, min(block, next_pow2(count)))
    while used > MIN_BLOCK and padded_length(count, used) > count + count // 8:
        used //= 2
    return used


def padded_length(count: int, block: int) -> int:
    """Values after rotation: ``count`` rounded up to a multiple of ``block``."""
    return -(-count // block) * block


def shared_rotation_seed(run_seed: int, server_round: int) -> int:
    """One rotation for every client of a round (the server sends it as ``rotate-seed``)."""
    return int(
        np.random.default_rng([int(run_seed), int(server_round), 0x524F54]).integers(MAX_SEED)
    )


def client_rotation_seed(round_seed: int, node_id: int) -> int:
    """A per-client rotation's seed: from the round's rotation seed and the client's node id,
    which the server also knows, so the seed need not travel (:mod:`wire.header_ref`); distinct
    node ids give independent PCG64 streams (the independence DRIVE/EDEN assume)."""
    return int(np.random.default_rng([int(round_seed), int(node_id), 0x434C49]).integers(MAX_SEED))


def random_signs(seed: int, length: int) -> np.ndarray:
    """The rotation's diagonal: float32 +1/-1, bit i of ``default_rng(seed).bytes`` (LSB first)
    set means -1."""
    raw = np.frombuffer(np.random.default_rng(seed).bytes(-(-length // 8)), dtype=np.uint8)
    bits = np.unpackbits(raw, bitorder="little")[:length]
    return np.float32(1) - np.float32(2) * bits.astype(np.float32)


@functools.lru_cache(maxsize=16)
def hadamard(size: int) -> np.ndarray:
    """The size x size Sylvester-Hadamard matrix (float32 +1/-1), ``size`` a power of two."""
    h = np.ones((1, 1), dtype=np.float32)
    while h.shape[0] < size:
        h = np.block([[h, h], [h, -h]])
    h.setflags(write=False)
    return h


def factors(block: int) -> tuple[int, ...]:
    """``block`` (2^k) as powers of two of at most 2^6 (``H_B`` is their Kronecker product)."""
    k = block.bit_length() - 1
    parts = -(-k // MAX_FACTOR_LOG2) if k else 1
    logs = [k // parts + (1 if i < k % parts else 0) for i in range(parts)]
    return tuple(1 << v for v in logs)


def fwht(rows: np.ndarray) -> np.ndarray:
    """Unnormalized Walsh-Hadamard transform of each row of a float32 [m, B] array (B = 2^k).

    ``H_B = H_f1 (x) H_f2 (x) ...`` (Kronecker), so each factor is one batched BLAS product along
    its axis of the rows seen as [m, f1, f2, ...]: n * (f1 + f2 + ...) additions instead of the
    butterflies' n log2 B, but on numpy far faster than log2 B butterfly passes, each a full
    pass over the array (benchmarks/README.md). The last factor multiplies f rows at a time (a
    stack of f x f products, the same sums): OpenBLAS runs products that small on the calling
    thread, where one [n / f, f] product would wake its thread pool, whose wait dominates on a
    busy machine. :func:`fwht_reference` is the butterfly form the tests compare against.
    Returns a fresh array."""
    m, b = rows.shape
    out = np.array(rows, dtype=np.float32, copy=True)
    if b < 2:
        return out
    left = m
    for f in factors(b):
        right = b * m // (left * f)  # the factor's axis in [left, f, right]
        view = out.reshape(left, f, right)
        if right == 1 and left % f == 0:  # H is symmetric
            out = np.matmul(view.reshape(left // f, f, f), hadamard(f))
        elif right == 1:
            out = view.reshape(left, f) @ hadamard(f)
        else:
            out = np.matmul(hadamard(f), view)
        left *= f
    out = out.reshape(m, b)
    return out


def fwht_reference(rows: np.ndarray) -> np.ndarray:
    """The textbook butterfly transform (log2 B passes of a + b, a - b): the slow reference."""
    out = np.array(rows, dtype=np.float64, copy=True)
    m, b = out.shape
    h = 1
    while h < b:
        view = out.reshape(m, b // (2 * h), 2, h)
        first, second = view[:, :, 0].copy(), view[:, :, 1].copy()
        view[:, :, 0], view[:, :, 1] = first + second, first - second
        h *= 2
    return out


def _norm(block: int) -> np.float32:
    return np.float32(1.0 / np.sqrt(np.float64(block)))


def rotate(values: np.ndarray, seed: int, block: int, rounds: int = ROUNDS) -> np.ndarray:
    """``R(values)``: float32, ``padded_length(len(values), block)`` values (block = 2^k);
    ``rounds`` passes of ``H D_r / sqrt(B)``, the signs of every pass from the one seed."""
    v = np.asarray(values, dtype=np.float32).ravel()
    length = padded_length(v.size, block)
    out = np.zeros(length, dtype=np.float32)
    out[: v.size] = v
    signs = random_signs(seed, rounds * length).reshape(rounds, length)
    for r in range(rounds):
        out *= signs[r]
        out = fwht(out.reshape(-1, block)).ravel()
        out *= _norm(block)
    return out


def unrotate(
    rotated: np.ndarray, seed: int, block: int, count: int, rounds: int = ROUNDS
) -> np.ndarray:
    """``R^-1``: the first ``count`` values of the passes ``D_r H y / sqrt(B)`` in reverse."""
    out = np.asarray(rotated, dtype=np.float32).ravel()
    signs = random_signs(seed, rounds * out.size).reshape(rounds, out.size)
    for r in reversed(range(rounds)):
        out = fwht(out.reshape(-1, block)).ravel()
        out *= _norm(block)
        out *= signs[r]
    return out[:count]


# ----------------------------------------------------------------------------- the stage
class RotateStage:
    """Encode/decode pair ``rotate``: params ``{"seed", "block", "rounds"}`` (ints), no body
    section (0 bytes: the seed travels in the header, the rotated values in the next stage).
    The seed: a row encoder's given one, else the codec's shared one, else drawn from the
    codec generator (per client and round)."""

    name, slot = "rotate", TRANSFORM

    def wanted(self, codec: CodecSpec) -> bool:
        return codec.rotate != "none"

    def header_params(self, codec: CodecSpec, count: int, ctx: EncodeContext) -> Params:
        if ctx.rotation_seed is not None:
            seed = ctx.rotation_seed
        elif codec.rotate == "shared":
            seed = codec.rotate_seed
        elif ctx.rng is None:
            raise ValueError("a per-client rotation needs an rng (numpy Generator) for its seed")
        else:
            seed = int(ctx.rng.integers(0, MAX_SEED))
        if type(seed) is not int or not 0 <= seed < MAX_SEED:
            raise ValueError(f"rotation seed must be an int in [0, 2^63), got {seed!r}")
        return {"seed": seed, "block": block_for(count, codec.rotate_block), "rounds": ROUNDS}

    def encode(self, values: np.ndarray, codec: CodecSpec, ctx: EncodeContext) -> Encoded:
        params = self.header_params(codec, values.size, ctx)
        return Encoded(rotate(values, params["seed"], params["block"], ROUNDS), params, [])

    def layout(
        self, params: Mapping[str, Any], count: int, ctx: DecodeContext
    ) -> tuple[int, list[tuple[str, int]]]:
        padded = self.check(params, count)
        if ctx.rotation_seed is not None and params["seed"] != ctx.rotation_seed:
            raise UpdateRejected(
                RejectReason.BAD_HEADER,
                f"update rotated with seed {params['seed']}, this round's rotation for this "
                f"node is {ctx.rotation_seed} (shared, or derived from the node id)",
            )
        return padded, []

    def check(self, params: Mapping[str, Any], count: int) -> int:
        """Validate the header's params for ``count`` input values; the values that follow."""
        if set(params) != PARAMS:
            raise UpdateRejected(
                RejectReason.BAD_HEADER,
                f"rotate needs exactly the params {sorted(PARAMS)}, got {sorted(map(str, params))}",
            )
        seed, block, rounds = params["seed"], params["block"], params["rounds"]
        if type(rounds) is not int or not 1 <= rounds <= MAX_ROUNDS:
            raise UpdateRejected(
                RejectReason.BAD_HEADER, f"rotation rounds {rounds!r} is not an int in [1, 3]"
            )
        if type(seed) is not int or not 0 <= seed < MAX_SEED:
            raise UpdateRejected(
                RejectReason.BAD_HEADER, f"rotation seed {seed!r} is not an int in [0, 2^63)"
            )
        if (
            type(block) is not int
            or not 1 <= block <= MAX_BLOCK
            or block & (block - 1)
            or block > next_pow2(count)
        ):
            raise UpdateRejected(
                RejectReason.BAD_HEADER,
                f"rotation block {block!r} is not a power of two in [1, "
                f"{min(MAX_BLOCK, next_pow2(count))}] for {count} values",
            )
        return padded_length(count, block)

    def decode(self, params, sections, values, count, ctx) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):  # refused just below
            out = unrotate(values, params["seed"], params["block"], count, params["rounds"])
        if not np.isfinite(out).all():
            raise UpdateRejected(
                RejectReason.NON_FINITE, "the rotated-back values overflow float32"
            )
        return out


ROTATE = RotateStage()
