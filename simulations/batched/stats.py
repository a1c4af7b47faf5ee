"""What the batched engine did in a run, for ``summary.json``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EngineStats:
    """Counts and host times of the batched engine (:class:`.grid.BatchedGrid`)."""

    vectorized_clients: int = 0
    looped_clients: int = 0
    fallback_reason: str = ""
    train_seconds: float = 0.0  # vmapped local training, device synchronised
    reply_seconds: float = 0.0  # deltas to host, encoding (secure masks too), reply Messages
    pooled_clients: int = 0  # replies sent inside a pool (the server allowed pooling)
    sdk_encoded_clients: int = 0  # vectorized clients whose payload the SDK encoded one by one
    data_seconds: float = 0.0  # client data: generation (first use), padding, upload to device
    layout: str = ""  # grouped | channels-last | packed | unfold (training.LAYOUTS); "": none yet
    layout_seconds: dict[str, float] = field(default_factory=dict)  # pick_layout's timings
    cudnn_benchmark: bool = False  # CUDA: the layout trains fastest in cuDNN's benchmark mode
    chunk_sizes: list[int] = field(default_factory=list)
