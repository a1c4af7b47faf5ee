"""Reframing an update payload around an edited header, for hostile-header tests."""

import json
import struct
import zlib

from wire.format import read_header


def reframe(payload: bytes, header_json: bytes, body: bytes | None = None) -> bytes:
    """``payload`` with its header replaced by ``header_json`` (and its body by ``body``)."""
    (header_len,) = struct.unpack_from("<I", payload, 6)
    body = payload[10 + header_len :] if body is None else body
    compressed = zlib.compress(header_json)
    return payload[:6] + struct.pack("<I", len(compressed)) + compressed + body


def with_header(payload: bytes, edit) -> bytes:
    """``payload`` after ``edit`` changed its decoded header in place."""
    header = read_header(payload)
    edit(header)
    return reframe(payload, json.dumps(header).encode())
