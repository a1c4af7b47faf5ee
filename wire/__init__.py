"""Pollen's update wire format: versioned header, codec stages, typed rejections.

Depends on numpy (and, in later stages, cryptography) only; Flower records carry the payload
bytes under :data:`UPDATE_RECORD_KEY` / :data:`PAYLOAD_FIELD`.
"""

from wire.codec import CodecConfigError, CodecSpec
from wire.errors import RejectReason, UpdateRejected
from wire.format import (
    FORMAT_VERSION,
    MAGIC,
    DecodedUpdate,
    decode_update,
    encode_update,
)
from wire.mask import MaskSet
from wire.pooling import (
    POOL_ID_FIELD,
    POOL_MEMBER_BYTES_FIELD,
    POOL_SIZE_FIELD,
    POOL_WEIGHT_FIELD,
    POOLING_CONFIG_KEY,
)
from wire.rows import encode_float32_rows
from wire.stages import TensorSpec

# Where a payload lives inside a Flower RecordDict: a ConfigRecord holding one bytes value.
UPDATE_RECORD_KEY = "pollen.update"
PAYLOAD_FIELD = "payload"
# Where the server puts the pruning mask and a compressed global model in its messages.
MASK_FIELD = "pollen-mask"
DOWNLOAD_RECORD_KEY = "pollen.download"

__all__ = [
    "DOWNLOAD_RECORD_KEY",
    "FORMAT_VERSION",
    "MAGIC",
    "MASK_FIELD",
    "PAYLOAD_FIELD",
    "POOLING_CONFIG_KEY",
    "POOL_ID_FIELD",
    "POOL_MEMBER_BYTES_FIELD",
    "POOL_SIZE_FIELD",
    "POOL_WEIGHT_FIELD",
    "UPDATE_RECORD_KEY",
    "CodecConfigError",
    "CodecSpec",
    "DecodedUpdate",
    "MaskSet",
    "RejectReason",
    "TensorSpec",
    "UpdateRejected",
    "decode_update",
    "encode_float32_rows",
    "encode_update",
]
