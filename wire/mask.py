"""The shared pruning mask: which coordinates of which tensors everyone keeps.

The server owns one mask for the global model and sends it with the model; clients train with
the pruned coordinates held at zero and upload values for kept coordinates only, in a fixed
order, so no indices travel. The mask's hash in each update header proves both sides used the
same mask (a mismatch is rejected). Wire form: a JSON list of (name, shape) and the bits of all
masks, ``np.packbits`` little-endian, concatenated.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from wire.errors import RejectReason, UpdateRejected

_MASK_MAGIC = b"PLNM"
_PREFIX = struct.Struct("<4sI")


@dataclass(frozen=True)
class MaskSet:
    """Boolean keep-masks for some tensors (True = kept); tensors not listed are dense."""

    masks: Mapping[str, np.ndarray]

    @property
    def digest(self) -> str:
        """A short SHA-256 of names, shapes and bits, written in every masked update."""
        h = hashlib.sha256()
        for name in sorted(self.masks):
            mask = self.masks[name]
            h.update(json.dumps([name, list(mask.shape)]).encode())
            h.update(np.packbits(mask.ravel(), bitorder="little").tobytes())
        return h.hexdigest()[:16]

    def kept(self, name: str, size: int) -> int:
        mask = self.masks.get(name)
        return size if mask is None else int(mask.sum())

    def sparsity(self) -> float:
        total = sum(m.size for m in self.masks.values())
        return 1.0 - sum(int(m.sum()) for m in self.masks.values()) / total if total else 0.0

    def apply(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copies of ``arrays`` with pruned coordinates set to zero."""
        return {
            name: np.where(self.masks[name], arr, np.float32(0)).astype(np.float32)
            if name in self.masks
            else arr
            for name, arr in arrays.items()
        }

    def encode(self) -> bytes:
        names = sorted(self.masks)
        header = json.dumps([[n, list(self.masks[n].shape)] for n in names]).encode()
        bits = b"".join(
            np.packbits(self.masks[n].ravel(), bitorder="little").tobytes() for n in names
        )
        return _PREFIX.pack(_MASK_MAGIC, len(header)) + header + bits

    @classmethod
    def decode(cls, payload: bytes, expected: Mapping[str, Sequence[int]] | None = None) -> MaskSet:
        """Parse a mask; ``expected`` maps tensor names to the shapes they must have."""

        def bad(why: str) -> UpdateRejected:
            return UpdateRejected(RejectReason.MASK_MISMATCH, f"pruning mask: {why}")

        if len(payload) < _PREFIX.size:
            raise bad("shorter than its prefix")
        magic, header_len = _PREFIX.unpack_from(payload, 0)
        if magic != _MASK_MAGIC or _PREFIX.size + header_len > len(payload):
            raise bad("bad magic or truncated header")
        try:
            entries = json.loads(payload[_PREFIX.size : _PREFIX.size + header_len])
            specs = [(str(n), tuple(int(d) for d in shape)) for n, shape in entries]
        except (ValueError, TypeError) as err:
            raise bad(f"header is not a list of [name, shape] ({err})") from None
        masks: dict[str, np.ndarray] = {}
        offset = _PREFIX.size + header_len
        for name, shape in specs:
            if expected is not None and tuple(expected.get(name, ())) != shape:
                raise bad(f"tensor {name!r} with shape {shape} is not in the model")
            size = int(np.prod(shape, dtype=np.int64))
            nbytes = (size + 7) // 8
            chunk = (
                np.frombuffer(payload, np.uint8, count=nbytes, offset=offset)
                if (offset + nbytes <= len(payload))
                else None
            )
            if chunk is None:
                raise bad(f"bits of {name!r} are truncated")
            masks[name] = np.unpackbits(chunk, bitorder="little")[:size].astype(bool).reshape(shape)
            offset += nbytes
        if offset != len(payload):
            raise bad(f"{len(payload) - offset} bytes left over after the last mask")
        return cls(masks)
