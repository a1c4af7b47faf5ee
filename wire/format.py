"""Wire format v0: a versioned, self-describing, pickle-free client-update payload.

Layout (all integers little-endian)::

    b"PLNW" | version: u16 | header_len: u32 | header: UTF-8 JSON | body

The JSON header names the format version, the round, the codec stages with their parameters,
every tensor's name/shape/dtype and the body's byte count. Decoding checks each field before it
touches the body, so a malformed payload is refused with an :class:`UpdateRejected` reason and
never allocates more than the payload it was given.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wire.errors import RejectReason, UpdateRejected
from wire.stages import Float32Delta, TensorSpec, get_stage

MAGIC = b"PLNW"
FORMAT_VERSION = 0
SUPPORTED_VERSIONS = frozenset({0})
_PREFIX = struct.Struct("<4sHI")
MAX_HEADER_BYTES = 1 << 20
ALLOWED_DTYPES = frozenset({"float32"})


@dataclass(frozen=True)
class DecodedUpdate:
    """A validated update: tensors in header order plus the byte counts of each part."""

    server_round: int
    names: tuple[str, ...]
    tensors: tuple[np.ndarray, ...]
    stages: tuple[dict[str, Any], ...]
    header_bytes: int
    body_bytes: int
    total_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, np.ndarray]:
        return dict(zip(self.names, self.tensors, strict=True))


def encode_update(
    tensors: Mapping[str, np.ndarray], *, server_round: int, stage: str = Float32Delta.name
) -> bytes:
    """Encode named tensors (e.g. local-minus-global deltas) into one payload."""
    codec = get_stage(stage)
    names = list(tensors)
    arrays = [np.asarray(tensors[name]) for name in names]
    body, params = codec.encode(arrays)
    body_bytes = sum(part.nbytes if isinstance(part, memoryview) else len(part) for part in body)
    header = {
        "format": FORMAT_VERSION,
        "round": int(server_round),
        "stages": [{"name": codec.name, "params": params}],
        "tensors": [
            {"name": name, "shape": [int(d) for d in arr.shape], "dtype": "float32"}
            for name, arr in zip(names, arrays, strict=True)
        ],
        "body_bytes": body_bytes,
    }
    header_bytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_bytes))
    return b"".join([prefix, header_bytes, *body])  # the body is copied once, here


def decode_update(
    payload: bytes,
    *,
    expected: Sequence[TensorSpec] | None = None,
    expected_round: int | None = None,
    max_bytes: int | None = None,
) -> DecodedUpdate:
    """Validate and decode a payload; raise :class:`UpdateRejected` on any inconsistency.

    ``expected`` (the global model's tensor specs) and ``expected_round`` are what the server
    knows: an update for another model or another round is refused. ``max_bytes`` refuses an
    oversized payload before anything is parsed.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise UpdateRejected(
            RejectReason.MISSING_PAYLOAD, f"payload must be bytes, got {type(payload).__name__}"
        )
    view = memoryview(payload)
    if max_bytes is not None and len(view) > max_bytes:
        raise UpdateRejected(
            RejectReason.TOO_LARGE,
            f"payload has {len(view)} bytes, more than the {max_bytes} this model can need",
        )
    if len(view) < _PREFIX.size:
        raise UpdateRejected(
            RejectReason.TOO_SHORT,
            f"payload has {len(view)} bytes; the fixed prefix alone is {_PREFIX.size}",
        )
    magic, version, header_len = _PREFIX.unpack_from(view, 0)
    if magic != MAGIC:
        raise UpdateRejected(RejectReason.BAD_MAGIC, f"payload starts {magic!r}, not {MAGIC!r}")
    if version not in SUPPORTED_VERSIONS:
        raise UpdateRejected(
            RejectReason.UNSUPPORTED_VERSION,
            f"format version {version}; this server reads {sorted(SUPPORTED_VERSIONS)}",
        )
    if header_len > MAX_HEADER_BYTES or _PREFIX.size + header_len > len(view):
        raise UpdateRejected(
            RejectReason.TOO_SHORT,
            f"header claims {header_len} bytes but only {len(view) - _PREFIX.size} follow",
        )
    header = _parse_header(bytes(view[_PREFIX.size : _PREFIX.size + header_len]))
    specs = _tensor_specs(header)
    server_round = header["round"]
    if expected_round is not None and server_round != expected_round:
        raise UpdateRejected(
            RejectReason.ROUND_MISMATCH,
            f"update is for round {server_round}, the server is in round {expected_round}",
        )
    if expected is not None:
        _check_expected(specs, expected)
    stages = header["stages"]
    if not isinstance(stages, list) or len(stages) != 1 or not isinstance(stages[0], dict):
        raise UpdateRejected(
            RejectReason.BAD_HEADER, "wire v0 carries exactly one codec stage object in 'stages'"
        )
    stage_name, params = stages[0].get("name"), stages[0].get("params", {})
    if not isinstance(stage_name, str) or not isinstance(params, dict):
        raise UpdateRejected(
            RejectReason.BAD_HEADER, "a stage needs a string 'name' and dict 'params'"
        )
    codec = get_stage(stage_name)
    body = view[_PREFIX.size + header_len :]
    want = codec.body_bytes(specs, params)
    if header["body_bytes"] != want or len(body) != want:
        raise UpdateRejected(
            RejectReason.LENGTH_MISMATCH,
            f"body has {len(body)} bytes (header says {header['body_bytes']}); "
            f"{len(specs)} tensors under {stage_name!r} need exactly {want}",
        )
    tensors = codec.decode(body, specs, params)
    return DecodedUpdate(
        server_round=server_round,
        names=tuple(spec.name for spec in specs),
        tensors=tuple(tensors),
        stages=tuple(stages),
        header_bytes=_PREFIX.size + header_len,
        body_bytes=len(body),
        total_bytes=len(view),
    )


def _parse_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UpdateRejected(RejectReason.BAD_HEADER, f"header is not UTF-8 JSON ({err})") from None
    if not isinstance(header, dict):
        raise UpdateRejected(RejectReason.BAD_HEADER, "header must be a JSON object")
    needed = {"format": int, "round": int, "stages": list, "tensors": list, "body_bytes": int}
    for key, kind in needed.items():
        value = header.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise UpdateRejected(
                RejectReason.BAD_HEADER, f"header field {key!r} must be a {kind.__name__}"
            )
    if header["format"] not in SUPPORTED_VERSIONS:
        raise UpdateRejected(
            RejectReason.UNSUPPORTED_VERSION, f"header format {header['format']} is not supported"
        )
    return header


def _tensor_specs(header: dict[str, Any]) -> list[TensorSpec]:
    specs: list[TensorSpec] = []
    for i, item in enumerate(header["tensors"]):
        if not isinstance(item, dict):
            raise UpdateRejected(RejectReason.BAD_TENSOR_SPEC, f"tensor #{i} is not an object")
        name, shape, dtype = item.get("name"), item.get("shape"), item.get("dtype")
        if not isinstance(name, str) or not isinstance(shape, list):
            raise UpdateRejected(
                RejectReason.BAD_TENSOR_SPEC, f"tensor #{i} needs a string name and a list shape"
            )
        if not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in shape
        ):
            raise UpdateRejected(
                RejectReason.BAD_TENSOR_SPEC,
                f"tensor {name!r} has shape {shape}; dimensions must be ints in [0, 2^31)",
            )
        if dtype not in ALLOWED_DTYPES:
            raise UpdateRejected(
                RejectReason.BAD_TENSOR_SPEC,
                f"tensor {name!r} has dtype {dtype!r}; allowed: {sorted(ALLOWED_DTYPES)}",
            )
        specs.append(TensorSpec(name=name, shape=tuple(shape), dtype=dtype))
    if len({spec.name for spec in specs}) != len(specs):
        raise UpdateRejected(RejectReason.BAD_TENSOR_SPEC, "tensor names must be unique")
    return specs


def _check_expected(specs: Sequence[TensorSpec], expected: Sequence[TensorSpec]) -> None:
    got = [(s.name, s.shape) for s in specs]
    want = [(s.name, tuple(s.shape)) for s in expected]
    if got != want:
        diff = next(
            (f"{g} != {w}" for g, w in zip(got, want, strict=False) if g != w),
            f"{len(got)} tensors sent, {len(want)} expected",
        )
        raise UpdateRejected(
            RejectReason.SHAPE_MISMATCH,
            f"update does not match the global model's tensors ({diff})",
        )
