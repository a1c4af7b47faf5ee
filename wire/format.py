"""Wire format v2/v3: a versioned, self-describing, pickle-free client-update payload.

Layout (all integers little-endian)::

    b"PLNW" | version: u16 | header_len: u32 | header: zlib(UTF-8 JSON) | body sections
    b"PLNW" | 3: u16 | 4: u32 | reference: 4 bytes | body sections

Version 2 deflates the header with a preset dictionary (:mod:`wire.header_dict`; the header
sizes it gives are in benchmarks/README.md); version 1 (plain zlib, the same JSON) is still
decoded. Version 3 replaces a header the server announced it expects with that header's 4-byte
digest (:mod:`wire.header_ref`); the server decodes it with the header it expects for the sending
node, whose digest it must be, through the same checks as a sent header.

The header names the format version, the round, every tensor's name/shape/dtype, the codec
stages in the order they ran with their parameters (``select`` → [``topk``] → [``rotate``] →
[``subsample``] → ``quantize`` | ``float32`` | ``eden`` | ``sign``), and each body section with
its byte count.
Encoding runs the registered stages (:mod:`wire.registry`) a CodecSpec asks for; decoding
runs the chain the header names, each stage's ``layout`` first, then its ``decode`` in
reverse, with no per-stage branches here. Decoding checks every field against what the server
knows (tensor specs, round, pruning mask) before it reads the body, so a malformed payload is
refused with an :class:`UpdateRejected` reason. The header is zlib-compressed (it is often
larger than a pruned, quantized body) and inflated with a hard cap, so no payload can make the
server allocate more than ``MAX_HEADER_BYTES`` for it.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wire.codec import CodecSpec
from wire.errors import RejectReason, UpdateRejected
from wire.header_cache import HeaderCache
from wire.header_dict import HEADER_ZDICT_V2
from wire.header_ref import (
    FORMAT_VERSION,
    REF_BYTES,
    RoundHeaders,
    canonical,
    digest_of,
    header_of,
    rotation_seed_for,
)
from wire.kept import TensorSpec, scatter_kept, segment_lengths
from wire.mask import MaskSet
from wire.registry import encode_chain, parse_chain
from wire.stage_api import DecodeContext, EncodeContext

MAGIC = b"PLNW"
# each version's preset zlib dictionary for the header (None: plain zlib)
HEADER_DICTS: dict[int, bytes | None] = {1: None, 2: HEADER_ZDICT_V2}
REFERENCE_VERSION = 3  # a header reference instead of the header
SUPPORTED_VERSIONS = frozenset({*HEADER_DICTS, REFERENCE_VERSION})
_PREFIX = struct.Struct("<4sHI")
MAX_HEADER_BYTES = 1 << 20
ALLOWED_DTYPES = frozenset({"float32"})


@dataclass(frozen=True)
class DecodedUpdate:
    """A validated update: dense tensors in header order plus byte counts per part."""

    server_round: int
    names: tuple[str, ...]
    tensors: tuple[np.ndarray, ...]
    stages: tuple[dict[str, Any], ...]
    header_bytes: int
    section_bytes: dict[str, int]
    total_bytes: int

    @property
    def body_bytes(self) -> int:
        return sum(self.section_bytes.values())

    def as_dict(self) -> dict[str, np.ndarray]:
        return dict(zip(self.names, self.tensors, strict=True))


def encode_update(
    tensors: Mapping[str, np.ndarray],
    *,
    server_round: int,
    codec: CodecSpec | None = None,
    masks: MaskSet | None = None,
    rng: np.random.Generator | None = None,
    node_id: int | None = None,
    reference: RoundHeaders | None = None,
) -> bytes:
    """Encode named tensors (e.g. local-minus-global deltas) into one payload.

    ``rng`` drives stochastic rounding and draws a per-client rotation's seed when there is no
    ``node_id`` (else the seed is derived from it and the codec's round seed); masked tensors
    send kept values only. ``reference``: the headers whose digest the server announced this
    round; a header equal to the one expected for ``node_id`` is sent as that digest (v3).
    """
    codec = codec or CodecSpec()
    specs = [TensorSpec(name, tuple(int(d) for d in np.shape(t))) for name, t in tensors.items()]
    ctx = EncodeContext(
        specs,
        masks,
        segment_lengths(specs, masks),
        tuple(tensors.values()),
        rng=rng,
        rotation_seed=rotation_seed_for(codec, node_id) if codec.rotate == "client" else None,
    )
    sections: list[tuple[str, Any]] = []
    values = None
    for stage in encode_chain(codec):
        values, params, stage_sections = stage.encode(values, codec, ctx)
        ctx.previous.append((stage.name, params))
        sections += stage_sections
    stages = [{"name": name, "params": params} for name, params in ctx.previous]
    header = header_of(
        server_round,
        specs,
        stages,
        [(name, _nbytes(buf)) for name, buf in sections],
    )
    expected = None
    if reference is not None and reference.digest is not None:
        try:
            expected = reference.header_for(node_id)
        except ValueError:  # a per-client rotation without a node id: the full header
            expected = None
    frame = payload_frame(header, digest_of(header) if header == expected else None)
    return b"".join([frame, *(buf for _, buf in sections)])  # one copy


def payload_frame(header: dict[str, Any], reference: bytes | None = None) -> bytes:
    """Prefix and header of a payload: the ``reference`` digest (v3) where given, else the
    deflated JSON ``header`` (v2)."""
    if reference is not None:
        return _PREFIX.pack(MAGIC, REFERENCE_VERSION, len(reference)) + reference
    deflater = zlib.compressobj(9, zdict=HEADER_DICTS[FORMAT_VERSION])
    header_bytes = deflater.compress(canonical(header)) + deflater.flush()
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_bytes)) + header_bytes


def _nbytes(buf: bytes | memoryview) -> int:
    return buf.nbytes if isinstance(buf, memoryview) else len(buf)


def decode_update(
    payload: bytes,
    *,
    expected: Sequence[TensorSpec] | None = None,
    masks: MaskSet | None = None,
    expected_round: int | None = None,
    max_bytes: int | None = None,
    rotation_seed: int | None = None,
    headers: RoundHeaders | None = None,
    node_id: int | None = None,
) -> DecodedUpdate:
    """Validate and decode a payload; raise :class:`UpdateRejected` on any inconsistency.

    ``expected`` (the tensors the server wants: the global model's trainable ones), ``masks``
    (this round's pruning mask) and ``expected_round`` are what the server knows; an update for
    another model, mask or round is refused. ``max_bytes`` refuses an oversized payload first.
    ``rotation_seed``: the rotation seed this update must name (the round's shared one, or
    the sender's derived one); a rotation with another seed is refused. ``headers``: what this
    round announced (a v3 reference decodes with ``headers.header_for(node_id)``).
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
            f"payload has {len(view)} bytes; the prefix alone is {_PREFIX.size}",
        )
    magic, version, header_len = _PREFIX.unpack_from(view, 0)
    if magic != MAGIC:
        raise UpdateRejected(
            RejectReason.BAD_MAGIC, f"payload starts {bytes(magic)!r}, not {MAGIC!r}"
        )
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
    key = bytes(view[4 : _PREFIX.size + header_len])  # version, length, header: one per version
    if version == REFERENCE_VERSION:
        cached, (header, specs, text_bytes) = None, _referenced(key[6:], headers, node_id)
    else:
        cached = HEADER_CACHE.get(key)
        header, specs, text_bytes = cached or _parsed_header(key[6:], version)
    if expected_round is not None and header["round"] != expected_round:
        raise UpdateRejected(
            RejectReason.ROUND_MISMATCH,
            f"update is for round {header['round']}, the server is in round {expected_round}",
        )
    if expected is not None:
        _check_expected(specs, expected)
        if cached is None and version != REFERENCE_VERSION:  # only ones that matched the model
            HEADER_CACHE.put(key, (header, specs, text_bytes))
    if masks is not None:
        _check_mask_shapes(specs, masks)
    ctx = DecodeContext(specs, masks, segment_lengths(specs, masks), rotation_seed)
    chain = parse_chain(header["stages"])
    layout: list[tuple[str, int]] = []
    counts: list[int] = []  # values entering each stage on encode
    contexts: list[DecodeContext] = []  # each stage's, with the stages before it
    count = 0
    for stage, params in chain:  # every parameter checked before any body byte is read
        counts.append(count)
        contexts.append(ctx)
        count, stage_sections = stage.layout(params, count, ctx)
        ctx = ctx.then(stage.name, params)
        layout += stage_sections
    sections = _split_body(header, view[_PREFIX.size + header_len :], layout)
    values = None
    for (stage, params), count, at in zip(
        reversed(chain), reversed(counts), reversed(contexts), strict=True
    ):
        values = stage.decode(params, sections, values, count, at)
    return DecodedUpdate(
        server_round=header["round"],
        names=tuple(spec.name for spec in specs),
        tensors=tuple(scatter_kept(values, specs, masks)),
        stages=tuple({"name": stage.name, "params": params} for stage, params in chain),
        header_bytes=_PREFIX.size + header_len,
        section_bytes={name: len(buf) for name, buf in sections.items()},
        total_bytes=len(view),
    )


def read_header(payload: bytes) -> dict[str, Any]:
    """The inflated JSON header of a payload (for inspection and tests; a v3 payload's
    reference as hex); not validated."""
    _, version, header_len = _PREFIX.unpack_from(payload, 0)
    if version == REFERENCE_VERSION:
        reference = payload[_PREFIX.size : _PREFIX.size + header_len]
        return {"format": version, "reference": bytes(reference).hex()}
    inflater = _inflater(version)
    return json.loads(inflater.decompress(payload[_PREFIX.size : _PREFIX.size + header_len]))


HEADER_CACHE = HeaderCache()


def _inflater(version: int) -> Any:
    zdict = HEADER_DICTS.get(version)
    return zlib.decompressobj() if zdict is None else zlib.decompressobj(zdict=zdict)


def _referenced(
    raw: bytes, headers: RoundHeaders | None, node_id: int | None
) -> tuple[dict[str, Any], tuple[TensorSpec, ...], int]:
    """The header a v3 reference stands for: the one this round expects from ``node_id``."""
    if headers is None or headers.digest is None:
        why = "payload references a header, but this round announced none"
        raise UpdateRejected(RejectReason.BAD_HEADER, why)
    if len(raw) != REF_BYTES:
        why = f"header reference has {len(raw)} bytes, not {REF_BYTES}"
        raise UpdateRejected(RejectReason.BAD_HEADER, why)
    try:
        header = headers.header_for(node_id)
    except ValueError as err:
        raise UpdateRejected(RejectReason.BAD_HEADER, str(err)) from None
    if raw != (expected := digest_of(header)):
        why = f"header reference {raw.hex()} is not this round's for this node ({expected.hex()})"
        raise UpdateRejected(RejectReason.BAD_HEADER, why)
    return header, tuple(_tensor_specs(header)), 0


def _parsed_header(raw: bytes, version: int) -> tuple[dict[str, Any], tuple[TensorSpec, ...], int]:
    """Header, tensor specs and the inflated JSON's size in bytes."""
    header, text_bytes = _parse_header(raw, version)
    return header, tuple(_tensor_specs(header)), text_bytes


def _parse_header(raw: bytes, version: int) -> tuple[dict[str, Any], int]:
    inflater = _inflater(version)
    try:
        text = inflater.decompress(raw, MAX_HEADER_BYTES)
        if inflater.unconsumed_tail or inflater.unused_data or not inflater.eof:
            why = f"header is truncated or inflates past {MAX_HEADER_BYTES} bytes"
            raise UpdateRejected(RejectReason.BAD_HEADER, why)
        header = json.loads(text.decode("utf-8"))
    except RecursionError:
        raise UpdateRejected(RejectReason.BAD_HEADER, "header JSON nests too deeply") from None
    except (zlib.error, ValueError) as err:  # bad UTF-8 or JSON, or an int too long to parse
        why = f"header is not zlib-compressed UTF-8 JSON ({str(err)[:200]})"
        raise UpdateRejected(RejectReason.BAD_HEADER, why) from None
    if not isinstance(header, dict):
        raise UpdateRejected(RejectReason.BAD_HEADER, "header must be a JSON object")
    needed = {"format": int, "round": int, "stages": list, "tensors": list, "sections": list}
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
    return header, len(text)


def _split_body(
    header: dict[str, Any], body: memoryview, layout: list[tuple[str, int]]
) -> dict[str, memoryview]:
    declared = header["sections"]
    if declared != [[name, size] for name, size in layout]:
        raise UpdateRejected(
            RejectReason.LENGTH_MISMATCH,
            f"body sections {declared} differ from what the stages need: {layout}",
        )
    if sum(n for _, n in layout) != len(body):
        raise UpdateRejected(
            RejectReason.LENGTH_MISMATCH,
            f"body has {len(body)} bytes, the sections need {sum(n for _, n in layout)}",
        )
    out, offset = {}, 0
    for name, size in layout:
        out[name] = body[offset : offset + size]
        offset += size
    return out


def _check_mask_shapes(specs: Sequence[TensorSpec], masks: MaskSet) -> None:
    for spec in specs:
        mask = masks.masks.get(spec.name)
        if mask is not None and tuple(mask.shape) != tuple(spec.shape):
            raise UpdateRejected(
                RejectReason.MASK_MISMATCH,
                f"mask for {spec.name!r} has shape {mask.shape}, tensor {spec.shape}",
            )


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
        if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
            raise UpdateRejected(
                RejectReason.BAD_TENSOR_SPEC,
                f"tensor {name[:100]!r} has dtype {str(dtype)[:100]}; "
                f"allowed: {sorted(ALLOWED_DTYPES)}",
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
