"""What a client does to its update before upload: the codec configuration.

The server sends these settings in its round config; the stages that actually ran are written in
each payload's header, so decoding never depends on this object.
"""

from __future__ import annotations

from dataclasses import dataclass

from wire.eden import EDEN_BITS, SCALES
from wire.quantize import ALLOWED_BITS
from wire.rotation import MAX_BLOCK, MAX_SEED

SCHEMES = ("uniform", "eden", "sign")
ROTATIONS = ("none", "client", "shared")


class CodecConfigError(ValueError):
    """An impossible codec setting; the message names the setting."""


@dataclass(frozen=True, kw_only=True)
class CodecSpec:
    quant_bits: int = 0  # 0: float32 values; else 1, 2, 4 or 8 bits per value
    quant_chunk: int = 1024  # values per (min, max) scale pair
    stochastic: bool = True  # unbiased stochastic rounding; False: nearest
    topk: float = 0.0  # 0: dense; else the fraction of (kept) coordinates sent
    # uniform: (min, max) per chunk (wire.quantize); eden: EDEN/DRIVE centroids + one scale per
    # chunk (wire.eden); sign: EF-signSGD's mean-|x| scaled sign (1 bit)
    scheme: str = "uniform"
    eden_scale: str = "unbiased"  # eden only: unbiased | mse (least error, biased: use with EF)
    # randomized Hadamard rotation before the values stage (wire.rotation): none; client (seed
    # derived from rotate_seed and the node id, else drawn per client and round; written in
    # the header); shared (rotate_seed, the server's seed for this round: one for every client)
    rotate: str = "none"
    rotate_block: int = 1024  # values per Hadamard block (a power of two)
    rotate_seed: int = 0  # the round's rotation seed (the server's rotate-seed)
    # EDEN's fractional bits (wire.subsample): send this random fraction of each rotated
    # block's coordinates (1: all); unbiased (x 1/p) with eden-scale unbiased, else for EF
    quant_fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.quant_bits and self.quant_bits not in ALLOWED_BITS:
            raise CodecConfigError(
                f"quant-bits must be 0 or one of {ALLOWED_BITS}, got {self.quant_bits}"
            )
        self._check_scheme()
        if not 1 <= self.quant_chunk <= 1 << 24:
            raise CodecConfigError(f"quant-chunk must be in [1, 2^24], got {self.quant_chunk}")
        if not 0 <= self.topk <= 1:
            raise CodecConfigError(f"topk must be in [0, 1] (0 = off), got {self.topk}")

    def _check_scheme(self) -> None:
        if self.scheme not in SCHEMES:
            raise CodecConfigError(f"quant-scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if self.scheme == "eden" and self.quant_bits not in EDEN_BITS:
            raise CodecConfigError(
                f"quant-scheme eden needs quant-bits in {EDEN_BITS}, got {self.quant_bits}"
            )
        if self.scheme == "sign" and self.quant_bits != 1:
            raise CodecConfigError(f"quant-scheme sign needs quant-bits 1, got {self.quant_bits}")
        if self.eden_scale not in SCALES:
            raise CodecConfigError(f"eden-scale must be one of {SCALES}, got {self.eden_scale!r}")
        if self.eden_scale != "unbiased" and self.scheme != "eden":
            raise CodecConfigError("eden-scale applies to quant-scheme eden only")
        if self.rotate not in ROTATIONS:
            raise CodecConfigError(f"rotate must be one of {ROTATIONS}, got {self.rotate!r}")
        block = self.rotate_block
        if type(block) is not int or not 2 <= block <= MAX_BLOCK or block & (block - 1):
            raise CodecConfigError(
                f"rotate-block must be a power of two in [2, {MAX_BLOCK}], got {block!r}"
            )
        if type(self.rotate_seed) is not int or not 0 <= self.rotate_seed < MAX_SEED:
            raise CodecConfigError(f"rotate-seed must be in [0, 2^63), got {self.rotate_seed!r}")
        self._check_fraction()

    def _check_fraction(self) -> None:
        fraction = self.quant_fraction
        if type(fraction) not in (int, float) or not 0 < fraction <= 1:
            raise CodecConfigError(f"quant-fraction must be in (0, 1], got {fraction!r}")
        if fraction < 1 and (self.scheme != "eden" or self.rotate != "client"):
            raise CodecConfigError(
                "quant-fraction < 1 needs quant-scheme eden and rotate client (each client's "
                "subset of the rotated coordinates is drawn from its rotation seed)"
            )
        if fraction < 1 and self.topk:
            raise CodecConfigError("quant-fraction < 1 and topk both drop coordinates: pick one")

    @property
    def lossless(self) -> bool:
        return self.quant_bits == 0 and self.topk == 0 and self.rotate == "none"
