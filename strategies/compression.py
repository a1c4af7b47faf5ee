"""What the server asks of every client's update, and the pruning it owns.

The settings travel to clients in the round's config (``codec_config``); the stages that ran
come back in each payload's header, so decoding never trusts the config alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from strategies.pruning import PruningSchedule
from wire import CodecSpec, keys
from wire.rotation import shared_rotation_seed


@dataclass(frozen=True, kw_only=True)
class CompressionSettings:
    codec: CodecSpec = field(default_factory=CodecSpec)
    pruning: PruningSchedule | None = None
    error_feedback: bool = False  # clients keep the compression residual between rounds
    qat: bool = False  # fake-quantized int8 weights during local training
    download_bits: int = 0  # 0: float32 global model; 8: 8-bit (nearest) download
    frozen: tuple[str, ...] = ()  # parameter-name prefixes never trained nor uploaded

    def __post_init__(self) -> None:
        if self.download_bits not in (0, 8):
            raise ValueError(f"download-bits must be 0 (float32) or 8, got {self.download_bits}")

    def codec_config(self, server_round: int = 0, run_seed: int = 0) -> dict[str, Any]:
        """The round-config entries clients read to compress their update (a shared rotation's
        seed for this round, :func:`wire.rotation.shared_rotation_seed`, among them)."""
        shared = {}
        if self.codec.rotate != "none":  # shared, or the root of each client's (wire.header_ref)
            shared[keys.ROTATE_SEED] = shared_rotation_seed(run_seed, server_round)
        return {
            **shared,
            keys.QUANT_BITS: self.codec.quant_bits,
            keys.QUANT_CHUNK: self.codec.quant_chunk,
            keys.QUANT_ROUNDING: "stochastic" if self.codec.stochastic else "nearest",
            keys.TOPK: self.codec.topk,
            keys.QUANT_SCHEME: self.codec.scheme,
            keys.EDEN_SCALE: self.codec.eden_scale,
            keys.ROTATE: self.codec.rotate,
            keys.ROTATE_BLOCK: self.codec.rotate_block,
            keys.QUANT_FRACTION: self.codec.quant_fraction,
            keys.ERROR_FEEDBACK: self.error_feedback,
            keys.QAT: self.qat,
            keys.FREEZE: ",".join(self.frozen),
        }
