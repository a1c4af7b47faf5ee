"""Pollen's update wire format: versioned header, codec stages, typed rejections.

Depends on numpy (and, in later stages, cryptography) only; Flower records carry the payload
bytes under :data:`UPDATE_RECORD_KEY` / :data:`PAYLOAD_FIELD`.
"""

from wire.errors import RejectReason, UpdateRejected
from wire.format import FORMAT_VERSION, MAGIC, DecodedUpdate, decode_update, encode_update
from wire.stages import STAGES, Float32Delta, TensorSpec

# Where a payload lives inside a Flower RecordDict: a ConfigRecord holding one bytes value.
UPDATE_RECORD_KEY = "pollen.update"
PAYLOAD_FIELD = "payload"

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "PAYLOAD_FIELD",
    "STAGES",
    "UPDATE_RECORD_KEY",
    "DecodedUpdate",
    "Float32Delta",
    "RejectReason",
    "TensorSpec",
    "UpdateRejected",
    "decode_update",
    "encode_update",
]
