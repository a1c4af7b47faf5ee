"""Client-side mechanisms of differential privacy, numpy only; randomness is the caller's Generator.

- :func:`clip_l2`: scale a vector to L2 norm at most ``clip`` (every DP mode starts here).
- :func:`gaussian_noise`: central/local DP's continuous noise ``N(0, stddev^2 I)``.
- The distributed discrete Gaussian (Kairouz, Liu & Steinke, ICML 2021; TF Federated's
  ``DistributedDpSumFactory`` is the reference): clip -> shared randomized Hadamard rotation
  (:mod:`wire.rotation`, the seed every client of the round shares) -> multiply by ``scale`` ->
  :func:`conditional_round` to integers (retried until the rounded norm is within
  :func:`rounded_l2_bound`) -> add :func:`wire.discrete_gaussian.discrete_gaussian` noise (each
  client its share of the variance) -> reduce modulo ``2^bits``. Secure aggregation sums the
  vectors modulo ``2^bits``; the server centres the sum into ``[-2^(bits-1), 2^(bits-1))``,
  divides by ``scale`` and rotates back (:func:`ddp_decode_sum`).

A coordinate of the true sum wraps when it leaves the centred range; :func:`wrap_probability`
bounds the chance that any does, treating the sum as sub-Gaussian (the paper, Sec. 4.2 and
Theorem 34): after the rotation a coordinate of a norm-``c`` vector has variance proxy
``rho c^2 / B`` (``B`` the rotation's block: one block may hold all of the norm), rounding
error ``1/4``, a discrete Gaussian share ``s^2`` (Canonne et al. 2020); :func:`choose_scale`
picks the largest scale whose bound is at most a target (default :data:`WRAP_BOUND`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wire.discrete_gaussian import (
    MAX_VARIANCE,
    VARIANCE_DENOMINATOR,
    discrete_gaussian,
    exact_variance,
)
from wire.rotation import block_for, padded_length, rotate, unrotate

DEFAULT_BETA = math.exp(-0.5)  # conditional rounding's retry bound (TF Federated's default)
MAX_ROUNDING_TRIES = 1000
WRAP_BOUND = 1e-6  # default chance per round that any coordinate of the sum wraps
RHO = 1.0  # flatness of the rotated vector (the paper's Lemma 29 constant, ~1 for Hadamard)


def l2_norm(values: np.ndarray) -> float:
    """The L2 norm, summed in float64 by numpy's own loop (``einsum``), not BLAS: the same bits
    whatever BLAS's thread count, and no wait on its threads (which dominated a client's
    encode on a busy machine)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    return math.sqrt(float(np.einsum("i,i->", v, v)))


def clip_l2(values: np.ndarray, clip: float) -> tuple[np.ndarray, float]:
    """``values * min(1, clip / ||values||)`` (float32) and the norm before clipping."""
    v = np.asarray(values, dtype=np.float32).ravel()
    if not np.all(np.isfinite(v)):
        raise ValueError("cannot clip a vector with NaN or infinite values")
    if not (isinstance(clip, int | float) and math.isfinite(clip) and clip > 0):
        raise ValueError(f"L2 clip must be a positive number, got {clip!r}")
    norm = l2_norm(v)
    if norm <= clip:
        return v.copy(), norm
    return (v * np.float32(clip / norm)).astype(np.float32), norm


def gaussian_noise(rng: np.random.Generator, stddev: float, size: int) -> np.ndarray:
    """``N(0, stddev^2)`` float32 draws (central and local DP)."""
    if not (isinstance(stddev, int | float) and math.isfinite(stddev) and stddev >= 0):
        raise ValueError(f"noise stddev must be a number >= 0, got {stddev!r}")
    return rng.normal(0.0, stddev, size).astype(np.float32)


def local_dp(
    deltas: dict[str, np.ndarray], clip: float, stddev: float, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Local DP on the device: the whole update (every tensor together) clipped to L2 norm
    ``clip``, then ``N(0, stddev^2)`` added to each coordinate (the Gaussian mechanism run by
    the client itself; Dwork & Roth 2014, Sec. 3.5.3); the tensors keep the update's order
    (the encoder and the server's checks follow the model's)."""
    names = list(deltas)
    flat = np.concatenate([np.asarray(deltas[n], dtype=np.float32).ravel() for n in names])
    clipped, _ = clip_l2(flat, clip)
    noisy = clipped + gaussian_noise(rng, stddev, clipped.size)
    out, start = {}, 0
    for n in names:
        size = np.asarray(deltas[n]).size
        out[n] = noisy[start : start + size].reshape(np.shape(deltas[n]))
        start += size
    return out


def rounded_l2_bound(scaled_clip: float, dim: int, beta: float = DEFAULT_BETA) -> float:
    """Norm bound after conditional randomized rounding of a norm-``scaled_clip`` vector in
    ``dim`` coordinates (Kairouz et al. 2021, Theorem 1); ``beta = 0``: plain rounding."""
    plain = scaled_clip + math.sqrt(dim)
    if beta == 0:
        return plain
    if not 0 < beta < 1:
        raise ValueError(f"rounding beta must be in [0, 1), got {beta!r}")
    squared = (
        scaled_clip**2
        + dim / 4
        + math.sqrt(2 * math.log(1 / beta)) * (scaled_clip + math.sqrt(dim) / 2)
    )
    return min(plain, math.sqrt(squared))


def conditional_round(
    rng: np.random.Generator, values: np.ndarray, bound: float
) -> tuple[np.ndarray, int]:
    """Unbiased randomized rounding to int64 (``floor(x) + Bernoulli(x - floor(x))``), redrawn
    until the squared norm (exact in integers) is at most ``bound^2``; the tries it took."""
    x = np.asarray(values, dtype=np.float64)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if not np.all(np.isfinite(x)) or peak >= 2.0**40:
        raise ValueError("conditional rounding needs finite values below 2^40")
    low = np.floor(x)
    frac = x - low
    base = low.astype(np.int64)
    if math.isinf(bound):
        return base + (rng.random(x.shape) < frac), 1
    if not 0 <= bound * bound < 2.0**62:
        raise ValueError(f"rounding bound must be in [0, 2^31), got {bound!r}")
    limit = math.floor(bound * bound)
    # |rounded| <= peak + 1: below 2^61 in all, the int64 sum of squares cannot overflow
    fits = (peak + 1) ** 2 * x.size < 2.0**61
    for tries in range(1, MAX_ROUNDING_TRIES + 1):
        rounded = base + (rng.random(x.shape) < frac)
        if not fits:
            approx = float(np.dot(rounded.astype(np.float64), rounded.astype(np.float64)))
            if approx >= 2.0**62:
                continue
        if int(np.dot(rounded, rounded)) <= limit:  # exact in int64
            return rounded, tries
    raise ValueError(
        f"conditional rounding found no vector within norm {bound:.6g} in {MAX_ROUNDING_TRIES} "
        "tries: the input is not clipped to the bound's norm"
    )


def variance_proxy(
    *,
    clients: int,
    scaled_clip: float,
    block: int,
    local_variance: float,
    rho: float = RHO,
) -> float:
    """Sub-Gaussian variance proxy of one coordinate of the sum of ``clients`` vectors rotated
    block by block (``block``: the rotation's block, :func:`wire.rotation.block_for`): a block
    spreads only its own share of the norm, at most all of it, over its ``block`` values."""
    rounding = 0.25 + 1 / VARIANCE_DENOMINATOR  # rounding error, the sampler's variance round-up
    return rho / block * (clients * scaled_clip) ** 2 + clients * (rounding + local_variance)


def wrap_probability(
    *, bits: int, clients: int, scaled_clip: float, dim: int, block: int, local_variance: float
) -> float:
    """Bound on the probability that any of the ``dim`` coordinates of the sum leaves
    ``[-2^(bits-1), 2^(bits-1))``: ``2 d exp(-(2^(bits-1))^2 / (2 v))`` (union over coordinates,
    sub-Gaussian tail with proxy ``v`` of :func:`variance_proxy`), capped at 1."""
    v = variance_proxy(
        clients=clients, scaled_clip=scaled_clip, block=block, local_variance=local_variance
    )
    half = 2.0 ** (bits - 1)
    return min(1.0, 2 * dim * math.exp(-(half * half) / (2 * v)))


def choose_scale(
    *,
    bits: int,
    clients: int,
    clip: float,
    dim: int,
    block: int,
    local_stddev: float,
    wrap_bound: float = WRAP_BOUND,
) -> float:
    """The largest scale whose sum keeps ``k = sqrt(2 ln(2 dim / wrap_bound))`` standard
    deviations inside the modulus, so :func:`wrap_probability` is at most ``wrap_bound``, as TF
    Federated's ``heuristic_scale_factor`` (which fixes ``k = 4``) with the sampler's variance
    round-up (``local_stddev`` in the update's units). Capped where the scaled variance would
    leave the noise sampler's range; refuses bits too few for ``clients``' rounding errors."""
    if not 0 < wrap_bound < 1:
        raise ValueError(f"wrap bound must be in (0, 1), got {wrap_bound!r}")
    n = clients
    k = math.sqrt(2 * math.log(2 * dim / wrap_bound))
    # 2^bits >= 2 k sqrt(v), v = scale^2 (rho c^2 n^2 / B + n s^2) + n (1/4 + 1/16)
    room = 4.0**bits / (4 * k * k) - n * (0.25 + 1 / VARIANCE_DENOMINATOR)
    if room <= 0:
        raise ValueError(
            f"{bits} bits per coordinate cannot hold the sum of {n} clients' rounding errors "
            f"with wrap probability {wrap_bound:g}: raise the bits or sample fewer clients"
        )
    scale = math.sqrt(room / (RHO / block * clip**2 * n**2 + n * local_stddev**2))
    if (scale * local_stddev) ** 2 > MAX_VARIANCE:  # the noise sampler's range
        scale = math.sqrt(MAX_VARIANCE) / local_stddev
    return scale


@dataclass(frozen=True, kw_only=True)
class DdpSpec:
    """One round's distributed-DP settings (the same for every client of the round)."""

    bits: int  # the modulus 2^bits of the secure sum, 2..32
    clip: float  # L2 clip of an update (its units)
    scale: float  # update units -> integer units
    local_variance: float  # each client's discrete Gaussian variance, integer units
    seed: int  # the round's shared rotation seed
    block: int = 1 << 12  # largest rotation block (wire.rotation.block_for picks the used one)
    beta: float = DEFAULT_BETA

    def __post_init__(self) -> None:
        if (
            isinstance(self.bits, bool)
            or not isinstance(self.bits, int)
            or not 2 <= self.bits <= 32
        ):
            raise ValueError(f"dp bits must be an int in [2, 32], got {self.bits!r}")
        for name in ("clip", "scale"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"dp {name} must be a positive number, got {value!r}")
        exact_variance(self.local_variance)  # raises outside the sampler's range

    @property
    def modulus(self) -> int:
        return 1 << self.bits

    def rotated_length(self, count: int) -> int:
        return padded_length(count, block_for(count, self.block))


def ddp_encode(values: np.ndarray, spec: DdpSpec, rng: np.random.Generator) -> np.ndarray:
    """One client's vector for the secure sum: uint64 in ``[0, 2^bits)``, rotated length."""
    clipped, _ = clip_l2(values, spec.clip)
    block = block_for(clipped.size, spec.block)
    rotated = rotate(clipped, spec.seed, block).astype(np.float64) * spec.scale
    scaled_clip = spec.clip * spec.scale
    norm = l2_norm(rotated)
    if norm > scaled_clip:  # the rotation keeps the norm up to float32 error: clip that away
        rotated *= scaled_clip / norm
    bound = rounded_l2_bound(scaled_clip, rotated.size, spec.beta)
    integers, _ = conditional_round(rng, rotated, bound)
    noisy = integers + discrete_gaussian(rng, spec.local_variance, integers.size)
    return noisy.view(np.uint64) & np.uint64(spec.modulus - 1)  # two's complement mod 2^bits


def modular_sum(vectors: list[np.ndarray], bits: int) -> np.ndarray:
    """The sum modulo ``2^bits`` (what secure aggregation reveals)."""
    total = np.zeros_like(vectors[0], dtype=np.uint64)
    for v in vectors:
        total = (total + v.astype(np.uint64)) & np.uint64((1 << bits) - 1)
    return total


def ddp_decode_sum(total: np.ndarray, spec: DdpSpec, count: int) -> np.ndarray:
    """The float32 sum of the clients' clipped updates (plus the summed noise) from the modular
    sum: centre into ``[-2^(bits-1), 2^(bits-1))``, divide by the scale, rotate back, first
    ``count`` values."""
    t = np.asarray(total, dtype=np.int64)
    half = spec.modulus // 2
    centred = np.where(t >= half, t - spec.modulus, t).astype(np.float64) / spec.scale
    block = block_for(count, spec.block)
    if centred.size != padded_length(count, block):
        raise ValueError(f"a sum of {centred.size} values does not decode to {count} values")
    return unrotate(centred.astype(np.float32), spec.seed, block, count)
