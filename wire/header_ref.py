"""Header references (wire format v3): a client does not resend a header the server already knows.

Every field of an update's header is known to the server before the upload: the round, its
model's tensor specs, the codec it sent, the pruning mask, and (per-client rotation) each
client's rotation seed, which both sides derive from the round's rotation seed and the client's
node id (:func:`wire.rotation.client_rotation_seed`). The server builds the header it expects
through the same stage chain the encoders use (each stage's ``header_params`` and ``layout``)
and announces a 4-byte digest of it in the round config; a client whose own header equals the
expected one sends that header's digest instead (the way HTTP/2's HPACK indexes a header both
ends know, RFC 7541), else its full header. The announced digest covers the header built with
the round's rotation seed, so one announcement serves every client of the round; a per-client
rotation's reference is the digest of the node's own header, so a reference made with another
node's seed is refused, not decoded with the wrong rotation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from wire.codec import CodecSpec
from wire.errors import UpdateRejected
from wire.kept import TensorSpec, segment_lengths
from wire.mask import MaskSet
from wire.registry import encode_chain
from wire.rotation import client_rotation_seed
from wire.stage_api import DecodeContext, EncodeContext

FORMAT_VERSION = 2  # the version of a payload with its full header (wire.format)
REF_BYTES = 4  # the digest's length: a reference frame's whole header


def row_layout(
    specs: Sequence[TensorSpec],
    *,
    codec: CodecSpec,
    masks: MaskSet | None = None,
    rotation_seed: int | None = None,
) -> tuple[list[dict], list[tuple[str, int]]]:
    """The header's stages and body sections (name, bytes) of every row's payload for ``codec``
    (a stage whose params depend on the values, top-k, is refused with a ValueError)."""
    lengths = segment_lengths(specs, masks)
    ctx = EncodeContext(specs, masks, lengths, rotation_seed=rotation_seed)
    check = DecodeContext(specs, masks, lengths)
    count, sections = sum(lengths), []
    for stage in encode_chain(codec):
        params = stage.header_params(codec, count, ctx)
        ctx.previous.append((stage.name, params))
        count, stage_sections = stage.layout(params, count, check)
        check = check.then(stage.name, params)
        sections += stage_sections
    return [{"name": n, "params": p} for n, p in ctx.previous], sections


def header_of(
    server_round: int,
    specs: Sequence[TensorSpec],
    stages: list[dict[str, Any]],
    sections: list[tuple[str, int]],
) -> dict[str, Any]:
    """The JSON header a payload with these stages and body sections carries."""
    return {
        "format": FORMAT_VERSION,
        "round": int(server_round),
        "tensors": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in specs],
        "stages": stages,
        "sections": [[name, size] for name, size in sections],
    }


def canonical(header: dict[str, Any]) -> bytes:
    """The header's one JSON text (sorted keys, no spaces): what v2 deflates and v3 hashes."""
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def digest_of(header: dict[str, Any]) -> bytes:
    """A header's reference: the first :data:`REF_BYTES` bytes of its canonical text's SHA-256."""
    return hashlib.sha256(canonical(header)).digest()[:REF_BYTES]


def rotation_seed_for(codec: CodecSpec, node_id: int | None) -> int | None:
    """The rotation seed a client's header names: the round's for a shared rotation, derived
    from it and ``node_id`` for a per-client one (None: no rotation, or no node id)."""
    if codec.rotate == "shared":
        return codec.rotate_seed
    if codec.rotate == "client" and node_id is not None:
        return client_rotation_seed(codec.rotate_seed, node_id)
    return None


@dataclass
class RoundHeaders:
    """The headers a round's updates are expected to carry (server) or may reference (client):
    ``digest`` is what the server announces, None where the header depends on the values
    (top-k) or the codec cannot run on these tensors."""

    specs: tuple[TensorSpec, ...]
    server_round: int
    codec: CodecSpec
    masks: MaskSet | None
    digest: bytes | None = field(init=False)
    _by_seed: dict[int | None, dict[str, Any]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.specs = tuple(self.specs)
        seed = None if self.codec.rotate == "none" else self.codec.rotate_seed
        try:
            template = self.header_for_seed(seed)
        except (ValueError, UpdateRejected):  # top-k, or a codec these tensors cannot take
            self.digest = None
            return
        self.digest = digest_of(template)

    def header_for_seed(self, seed: int | None) -> dict[str, Any]:
        """The expected header of a client whose rotation seed is ``seed`` (not to be mutated)."""
        if seed not in self._by_seed:
            if len(self._by_seed) >= 4096:  # one per client of a round; bounded all the same
                self._by_seed.clear()
            stages, sections = row_layout(
                self.specs, codec=self.codec, masks=self.masks, rotation_seed=seed
            )
            self._by_seed[seed] = header_of(self.server_round, self.specs, stages, sections)
        return self._by_seed[seed]

    def header_for(self, node_id: int | None) -> dict[str, Any]:
        """The expected header of node ``node_id``'s update; a ValueError where a per-client
        rotation's seed cannot be derived (no node id)."""
        if self.codec.rotate == "client" and node_id is None:
            raise ValueError("a per-client rotation's expected header needs the node id")
        return self.header_for_seed(rotation_seed_for(self.codec, node_id))

    def reference_for(self, node_id: int | None) -> bytes:
        """What node ``node_id`` sends for its expected header: that header's own digest (the
        round's announced one unless its rotation seed is per client), so a reference made for
        another node's seed is refused rather than decoded with the wrong rotation."""
        return digest_of(self.header_for(node_id))

    def rotation_seed(self, node_id: int | None) -> int | None:
        return rotation_seed_for(self.codec, node_id)
