"""What a client does to its update before upload: the codec configuration.

The server sends these settings in its round config; the stages that actually ran are written in
each payload's header, so decoding never depends on this object.
"""

from __future__ import annotations

from dataclasses import dataclass

from wire.quantize import ALLOWED_BITS


class CodecConfigError(ValueError):
    """An impossible codec setting; the message names the setting."""


@dataclass(frozen=True, kw_only=True)
class CodecSpec:
    quant_bits: int = 0  # 0: float32 values; else 1, 2, 4 or 8 bits per value
    quant_chunk: int = 1024  # values per (min, max) scale pair
    stochastic: bool = True  # unbiased stochastic rounding; False: nearest
    topk: float = 0.0  # 0: dense; else the fraction of (kept) coordinates sent

    def __post_init__(self) -> None:
        if self.quant_bits and self.quant_bits not in ALLOWED_BITS:
            raise CodecConfigError(
                f"quant-bits must be 0 or one of {ALLOWED_BITS}, got {self.quant_bits}"
            )
        if not 1 <= self.quant_chunk <= 1 << 24:
            raise CodecConfigError(f"quant-chunk must be in [1, 2^24], got {self.quant_chunk}")
        if not 0 <= self.topk <= 1:
            raise CodecConfigError(f"topk must be in [0, 1] (0 = off), got {self.topk}")

    @property
    def lossless(self) -> bool:
        return self.quant_bits == 0 and self.topk == 0
