"""The integer vector a client masks in secure aggregation, and what the server makes of its sum.

An update is clipped to ``[-clip, clip]`` per coordinate and stochastically rounded to ``bits``
levels on one grid shared by every client (unbiased; Alistarh et al. QSGD 2017), only on the
coordinates the shared pruning mask keeps. The client's weight ``w`` (its example count, capped
at ``max_weight``) is folded in before masking: the vector is ``w * q`` followed by ``w``
itself, so the server learns the weighted sum and the total weight, never a single client's.

Bound: a coordinate of the vector is at most ``max_weight * (2^bits - 1)``, so the sum of
``N`` vectors is below ``N * max_weight * (2^bits - 1) + 1``, and the modulus ``2^m`` is the
smallest power of two above it (:func:`wire.secagg.modulus_bits`): the masked sum never wraps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from wire.bitpack import pack_uint, packed_size, unpack_uint
from wire.errors import RejectReason, UpdateRejected
from wire.kept import TensorSpec, gather_kept, scatter_kept, segment_lengths
from wire.mask import MaskSet
from wire.secagg import modulus_bits

VECTOR_FIELD = "vector"  # which spec the record is (wire.ddp_vector.vector_spec_from_config)
QUANTIZED_VECTOR = "quantized"


@dataclass(frozen=True)
class SecAggVectorSpec:
    """How updates become integers this round (sent by the server with the train message)."""

    bits: int = 8
    clip: float = 1.0
    max_weight: int = 256
    clients: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 16:
            raise ValueError(f"secure-aggregation bits must be 1..16, got {self.bits}")
        if not (np.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"secure-aggregation clip must be a positive number, got {self.clip}")
        if self.max_weight < 1 or self.clients < 1:
            raise ValueError("max_weight and clients must be >= 1")
        modulus_bits(self.clients, self.max_weight * self.levels)  # raises if it cannot fit

    @property
    def levels(self) -> int:
        return (1 << self.bits) - 1

    @property
    def modulus_bits(self) -> int:
        return modulus_bits(self.clients, self.max_weight * self.levels)

    @property
    def modulus_mask(self) -> int:
        return (1 << self.modulus_bits) - 1

    def weight_of(self, num_examples: float) -> int:
        return int(min(max(int(num_examples), 1), self.max_weight))

    def vector_size(self, values: int) -> int:
        """Values a masked upload carries for ``values`` (kept or rotated) coordinates."""
        return values + 1  # + the weight

    def quantize(
        self, flat: np.ndarray, weight: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, int]:
        """``[w * q, w]`` as uint32 and how many coordinates were clipped.

        A NaN or Inf is refused (UpdateRejected, non-finite): nobody could tell a masked upload
        of a diverged update from a good one, so the client answers with an error instead and
        the server recovers its masks as for a dropped client.
        """
        refuse_non_finite(flat)
        clipped = int(np.count_nonzero(np.abs(flat) > self.clip))
        scaled = (np.clip(flat.astype(np.float64), -self.clip, self.clip) + self.clip) * (
            self.levels / (2 * self.clip)
        )
        low = np.floor(scaled)
        q = low + (rng.random(scaled.shape) < (scaled - low))
        vector = np.empty(flat.size + 1, dtype=np.uint32)
        vector[:-1] = q.astype(np.uint32) * np.uint32(weight)
        vector[-1] = weight
        return vector, clipped

    def weighted_mean(self, total: np.ndarray) -> tuple[np.ndarray, int]:
        """The weighted mean update (float64) and total weight from the unmasked sum."""
        weight = int(total[-1])
        if weight <= 0:
            raise ValueError("the unmasked total weight is zero: the sum is inconsistent")
        sums = total[:-1].astype(np.float64)
        mean = sums * (2 * self.clip / self.levels) / weight - self.clip
        return mean, weight

    def check_sum(self, total: np.ndarray, uploads: int) -> None:
        """Honest vectors sum to a weight in [1, uploads x max-weight] and coordinates at most
        weight x levels; a client that masked values off the grid is caught here (not who).
        Raises ValueError."""
        weight = int(total[-1])
        if not 1 <= weight <= uploads * self.max_weight or (
            total.size > 1 and int(total[:-1].max()) > weight * self.levels
        ):
            raise ValueError(
                "the unmasked sum is off the shared grid (a client masked values outside "
                "[0, weight x levels] or a false weight); the round is not used"
            )

    def pack(self, vector: np.ndarray) -> bytes:
        return pack_masked(vector, self.modulus_bits)

    def unpack(self, payload: bytes, count: int) -> np.ndarray:
        return unpack_masked(payload, count, self.modulus_bits)

    def as_config(self) -> dict[str, int | float | str]:
        return {
            VECTOR_FIELD: QUANTIZED_VECTOR,
            "bits": self.bits,
            "clip": self.clip,
            "max-weight": self.max_weight,
            "clients": self.clients,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> SecAggVectorSpec:
        """The spec the server sent; a missing field, a value of the wrong type (a bool, a
        float for an int, a list) or out of range is :class:`UpdateRejected` (bad-secagg)."""
        if config.get(VECTOR_FIELD) != QUANTIZED_VECTOR:
            raise UpdateRejected(
                RejectReason.BAD_SECAGG,
                f"secure-aggregation field {VECTOR_FIELD!r} must be {QUANTIZED_VECTOR!r} here, "
                f"got {str(config.get(VECTOR_FIELD))!r:.40}",
            )
        values = {}
        for key, kind in (("bits", int), ("clip", float), ("max-weight", int), ("clients", int)):
            value = config.get(key)
            if isinstance(value, bool) or not isinstance(
                value, (int, float) if kind is float else int
            ):
                raise UpdateRejected(
                    RejectReason.BAD_SECAGG,
                    f"secure-aggregation field {key!r} must be {kind.__name__}, got "
                    f"{type(value).__name__}",
                )
            values[key.replace("-", "_")] = kind(value)
        try:
            return cls(**values)
        except ValueError as err:
            raise UpdateRejected(RejectReason.BAD_SECAGG, str(err)) from None


def refuse_non_finite(flat: np.ndarray) -> None:
    """A NaN or Inf is refused (UpdateRejected, non-finite) before it is masked."""
    if not np.isfinite(flat).all():
        raise UpdateRejected(
            RejectReason.NON_FINITE,
            "the update holds NaN or Inf values; a masked upload of it would corrupt the "
            "round's sum unseen, so it is not sent (lower the learning rate or clip)",
        )


def pack_masked(vector: np.ndarray, bits: int) -> bytes:
    """A masked vector's values modulo ``2^bits``, ``bits`` each."""
    return pack_uint(vector & np.uint32((1 << bits) - 1), bits)


def unpack_masked(payload: bytes, count: int, bits: int) -> np.ndarray:
    """The ``bits``-bit values of a masked upload of ``count`` coordinates (checked length)."""
    expected = packed_size(count, bits)
    if len(payload) != expected:
        raise UpdateRejected(
            RejectReason.LENGTH_MISMATCH,
            f"masked upload is {len(payload)} bytes; {count} values of {bits} bits are {expected}",
        )
    return unpack_uint(payload, bits, count).astype(np.uint32)


def flatten_kept(
    arrays: Mapping[str, np.ndarray], names: Sequence[str], masks: MaskSet | None
) -> np.ndarray:
    """The kept coordinates of ``names`` (all of a tensor the mask does not cover), in
    :mod:`wire.kept`'s order (the ``select`` stage's), each tensor in its own dtype."""
    return gather_kept([arrays[name] for name in names], names, masks)


def _specs(shapes: Mapping[str, tuple[int, ...]]) -> list[TensorSpec]:
    return [TensorSpec(name, tuple(int(d) for d in shape)) for name, shape in shapes.items()]


def kept_count(shapes: Mapping[str, tuple[int, ...]], masks: MaskSet | None) -> int:
    return sum(segment_lengths(_specs(shapes), masks))


def unflatten_kept(
    flat: np.ndarray, shapes: Mapping[str, tuple[int, ...]], masks: MaskSet | None
) -> dict[str, np.ndarray]:
    """Inverse of :func:`flatten_kept`: float32 copies, pruned coordinates exact zeros."""
    specs = _specs(shapes)
    tensors = scatter_kept(flat, specs, masks, copy=True)
    return {spec.name: tensor for spec, tensor in zip(specs, tensors, strict=True)}
