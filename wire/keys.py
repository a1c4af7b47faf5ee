"""Round-config keys: the names the server writes in each round's ``ConfigRecord`` and clients read.

One constant per key, shared by the writer (``strategies.compression``, the ServerApp's client
config) and the reader (``client_sdk.rounds``), the way Flower shares ``KEY_CLIPPING_NORM``
between its DP mod and wrapper. A run-config setting sent to clients keeps its run-config name.
"""

from __future__ import annotations

# Written by Flower's strategies themselves (``configure_train``), read by clients.
SERVER_ROUND = "server-round"
PROXIMAL_MU = "proximal-mu"  # FedProx

# The task and the local schedule (the ServerApp's client config; ``lr`` per round by the adapter).
TASK = "task"
SEED = "seed"
LR = "lr"
LOCAL_EPOCHS = "local-epochs"
BATCH_SIZE = "batch-size"
NUM_PARTITIONS = "num-partitions"

# Update compression (``strategies.compression.CompressionSettings.codec_config``).
QUANT_BITS = "quant-bits"
QUANT_CHUNK = "quant-chunk"
QUANT_ROUNDING = "quant-rounding"
TOPK = "topk"
QUANT_SCHEME = "quant-scheme"
EDEN_SCALE = "eden-scale"
ROTATE = "rotate"
ROTATE_BLOCK = "rotate-block"
ROTATE_SEED = "rotate-seed"  # this round's rotation seed (shared, or per-client ones' root)
HEADER_REF = "header-ref"  # digest of the header the server expects (wire.header_ref), bytes
QUANT_FRACTION = "quant-fraction"
ERROR_FEEDBACK = "error-feedback"
QAT = "qat"
FREEZE = "freeze"
# Local differential privacy (dp-mode local): the client clips and noises its update itself
DP_LOCAL_CLIP = "dp-local-clip"  # L2 clip of the whole update
DP_LOCAL_STDDEV = "dp-local-stddev"  # Gaussian noise stddev per coordinate
DP_LOCAL_SEEDED = "dp-local-seeded"  # noise from the client's round seed (experiments only)

# Node config (set by Flower's simulation, ``--node-config`` in a deployment).
PARTITION_ID = "partition-id"
