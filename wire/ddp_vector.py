"""Distributed DP's vector for secure aggregation, and the one place a client picks its spec.

:class:`DdpVectorSpec` has the duck-typed interface of :class:`wire.secagg_vector.SecAggVectorSpec`
(``quantize``, ``weighted_mean``, ``check_sum``, ``pack``/``unpack``, ``modulus_bits``,
``as_config``/``from_config``): a client's vector is :func:`wire.dp.ddp_encode` of its kept
coordinates (clip -> the round's shared randomized Hadamard rotation -> scale -> conditional
randomized rounding -> its discrete Gaussian share -> mod ``2^bits``; Kairouz, Liu & Steinke,
ICML 2021) followed by one count coordinate equal to 1. Secure aggregation sums the vectors
modulo ``2^bits``; the server learns the sum (already private) and the number of uploads in it,
and the mean is :func:`wire.dp.ddp_decode_sum` divided by that count: every client weighs the
same, as DP needs (an example-count weight would let one client move the mean further than the
clip). :func:`vector_spec_from_config` reads the record's ``vector`` field to pick the spec.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from wire.discrete_gaussian import MAX_VARIANCE
from wire.dp import DdpSpec, ddp_decode_sum, ddp_encode, l2_norm
from wire.errors import RejectReason, UpdateRejected
from wire.rotation import MAX_BLOCK, MAX_SEED, MIN_BLOCK
from wire.secagg_vector import (
    VECTOR_FIELD,
    SecAggVectorSpec,
    pack_masked,
    refuse_non_finite,
    unpack_masked,
)

DDP_VECTOR = "ddp"
MIN_BITS, MAX_BITS = 8, 32  # 32: the masks are uint32 words
MAX_LENGTH = 1 << 31  # kept coordinates of one update


@dataclass(frozen=True)
class DdpVectorSpec:
    """One round's distributed-DP vector (sent by the server with the train message)."""

    bits: int  # the secure sum's modulus 2^bits
    clip: float  # L2 clip of the whole update (its units)
    scale: float  # update units -> integer units
    local_variance: float  # each client's discrete Gaussian variance, integer units
    seed: int  # the round's shared rotation seed
    block: int  # largest rotation block (wire.rotation.block_for picks the one used)
    length: int  # kept coordinates of an update
    clients: int  # clients of the round (the count coordinate stays below the modulus)

    def __post_init__(self) -> None:
        for name, low, high in (
            ("bits", MIN_BITS, MAX_BITS),
            ("seed", 0, MAX_SEED - 1),
            ("block", MIN_BLOCK, MAX_BLOCK),
            ("length", 1, MAX_LENGTH),
            ("clients", 1, MAX_LENGTH),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(
                    f"dp vector {name} must be an int in [{low}, {high}], got {value!r}"
                )
        if self.block & (self.block - 1):
            raise ValueError(f"dp vector block must be a power of two, got {self.block}")
        if self.clients >= 1 << self.bits:
            raise ValueError(
                f"{self.clients} clients' count does not fit {self.bits} bits: raise dp-bits"
            )
        if not (
            isinstance(self.local_variance, int | float)
            and not isinstance(self.local_variance, bool)
            and math.isfinite(self.local_variance)
            and 0 < self.local_variance <= MAX_VARIANCE
        ):
            raise ValueError(
                f"dp vector local-variance must be in (0, {MAX_VARIANCE}], got "
                f"{self.local_variance!r}"
            )
        self.ddp  # checks clip and scale  # noqa: B018

    @cached_property
    def ddp(self) -> DdpSpec:
        return DdpSpec(
            bits=self.bits,
            clip=self.clip,
            scale=self.scale,
            local_variance=self.local_variance,
            seed=self.seed,
            block=self.block,
        )

    @property
    def modulus_bits(self) -> int:
        return self.bits

    @property
    def modulus_mask(self) -> int:
        return (1 << self.bits) - 1

    @property
    def rotated_length(self) -> int:
        """Integer coordinates of the rotated update (before the count)."""
        return self.ddp.rotated_length(self.length)

    def vector_size(self, values: int) -> int:
        """Values a masked upload carries for ``values`` kept coordinates (the count's too)."""
        if values != self.length:
            raise ValueError(f"the round's dp vector has {self.length} kept values, not {values}")
        return self.rotated_length + 1

    def weight_of(self, num_examples: float) -> int:
        """1: clients weigh the same (DP bounds one client's pull on the mean by the clip)."""
        return 1

    def quantize(
        self, flat: np.ndarray, weight: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, int]:
        """``[ddp_encode(flat), 1]`` as uint32 and the coordinates the L2 clip scaled (all of
        them or none). ``rng`` draws the rounding and the noise: a secret one on a device."""
        flat = np.asarray(flat)
        refuse_non_finite(flat)
        if flat.size != self.length or weight != 1:
            raise UpdateRejected(
                RejectReason.LENGTH_MISMATCH,
                f"the round's dp vector holds {self.length} kept values of weight 1; this "
                f"update has {flat.size} of weight {weight}",
            )
        norm = l2_norm(flat)
        vector = np.empty(self.rotated_length + 1, dtype=np.uint32)
        vector[:-1] = ddp_encode(flat, self.ddp, rng)
        vector[-1] = 1
        return vector, flat.size if norm > self.clip else 0

    def weighted_mean(self, total: np.ndarray) -> tuple[np.ndarray, int]:
        """The mean update (float64, ``length`` values) and the uploads in the unmasked sum."""
        count = int(total[-1])
        if count <= 0:
            raise ValueError("the unmasked upload count is zero: the sum is inconsistent")
        summed = ddp_decode_sum(np.asarray(total[:-1]), self.ddp, self.length)
        return summed.astype(np.float64) / count, count

    def check_sum(self, total: np.ndarray, uploads: int) -> None:
        """Honest vectors' count coordinates (1 each) add up to the uploads; a client that
        masked another count is caught here (not who). Raises ValueError."""
        if total.size != self.rotated_length + 1 or int(total[-1]) != uploads:
            raise ValueError(
                f"the unmasked sum counts {int(total[-1]) if total.size else 0} uploads, not "
                f"the {uploads} summed (a client masked a false count); the round is not used"
            )

    def pack(self, vector: np.ndarray) -> bytes:
        return pack_masked(vector, self.bits)

    def unpack(self, payload: bytes, count: int) -> np.ndarray:
        return unpack_masked(payload, count, self.bits)

    def as_config(self) -> dict[str, int | float | str]:
        return {
            VECTOR_FIELD: DDP_VECTOR,
            "bits": self.bits,
            "clip": float(self.clip),
            "scale": float(self.scale),
            "local-variance": float(self.local_variance),
            "rotation-seed": self.seed,
            "rotation-block": self.block,
            "length": self.length,
            "clients": self.clients,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> DdpVectorSpec:
        """The spec the server sent; a missing field, a value of the wrong type (a bool, a
        float for an int), NaN or out of range is :class:`UpdateRejected` (bad-secagg)."""
        if config.get(VECTOR_FIELD) != DDP_VECTOR:
            raise UpdateRejected(RejectReason.BAD_SECAGG, "the record is not a dp vector's")
        values: dict[str, int | float] = {}
        for key, name, kind in (
            ("bits", "bits", int),
            ("clip", "clip", float),
            ("scale", "scale", float),
            ("local-variance", "local_variance", float),
            ("rotation-seed", "seed", int),
            ("rotation-block", "block", int),
            ("length", "length", int),
            ("clients", "clients", int),
        ):
            value = config.get(key)
            if isinstance(value, bool) or not isinstance(
                value, (int, float) if kind is float else int
            ):
                raise UpdateRejected(
                    RejectReason.BAD_SECAGG,
                    f"dp vector field {key!r} must be {kind.__name__}, got {type(value).__name__}",
                )
            values[name] = kind(value)
        try:
            return cls(**values)  # type: ignore[arg-type]
        except ValueError as err:
            raise UpdateRejected(RejectReason.BAD_SECAGG, str(err)) from None


VectorSpec = SecAggVectorSpec | DdpVectorSpec


def vector_spec_from_config(config: Mapping[str, object]) -> VectorSpec:
    """The spec the record's ``vector`` field names (raises UpdateRejected bad-secagg)."""
    kind = config.get(VECTOR_FIELD)
    if kind == DDP_VECTOR:
        return DdpVectorSpec.from_config(config)
    return SecAggVectorSpec.from_config(config)
