"""Names and encodings both sides of secure aggregation agree on (stages, fields, contexts),
the graph rule's safe minimums, and the typed readers of a stage record's fields.

Every field one side reads from the other's record goes through :func:`field_bytes`,
:func:`field_int`, :func:`field_ids` or :func:`field_flag`: the value's type is checked before
it is used (a ``bool`` is not an ``int``, a float equal to an int is not one, a list is not
bytes) and its size before anything is allocated from it, and a failure is an
:class:`~wire.errors.UpdateRejected` naming the field. Both sides therefore only ever fail with
a typed rejection of the peer that sent the field (Bonawitz et al. CCS 2017 §4: a party that
deviates is dropped from the round, it does not end it).
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Iterable, Mapping

import numpy as np

from wire.errors import RejectReason, UpdateRejected
from wire.secagg import MAX_SHARES, NONCE_BYTES, SHARE_BYTES, share_in_field

# Message types of the stages around the masked upload (the upload is the train reply)
STAGE_KEYS = "query.secagg_keys"
STAGE_SHARES = "query.secagg_shares"
STAGE_UNMASK = "query.secagg_unmask"
STAGE_MASKED = "train"
# Where the protocol's fields travel inside a Flower RecordDict
SECAGG_RECORD_KEY = "pollen.secagg"
# HKDF ``info`` strings: one X25519 secret never keys two uses
SHARE_PURPOSE = b"pollen/secagg/share-key"
MASK_PURPOSE = b"pollen/secagg/pairwise-mask"
# nonce, seed share + mask-key share, GCM tag
SEALED_SHARE_BYTES = NONCE_BYTES + 2 * SHARE_BYTES + 16
# The safe minimums a client accepts (and the server's graph rule never goes below): with one
# neighbour or a threshold of 1, a single share holder colluding with the server has a client's
# whole secret. Three clients (degree 2, threshold 2) are the smallest federation.
MIN_DEGREE = 2
MIN_THRESHOLD = 2
MAX_NODES = 1 << 20  # ids in one list (alive, survivors): 8 MiB, far above any real round
# The train record's opt-in for plaintext per-client metrics (train-loss, clipped-fraction,
# partition-id) next to a masked upload; without it a masked reply carries none of them.
SHARE_METRICS_FIELD = "share-metrics"
PRIVATE_METRICS = ("train-loss", "clipped-fraction", "partition-id")


def check_graph(degree: int, threshold: int) -> None:
    """A (degree, threshold) pair either side can accept; ValueError says why not.

    The threshold must exceed half the degree (Bell et al. CCS 2020 §3; else a server that tells
    two halves of a client's neighbours different stories gets both its seed and its mask key)
    and be at most the degree (else no secret can ever be rebuilt)."""
    if degree < MIN_DEGREE or threshold < MIN_THRESHOLD:
        raise ValueError(
            f"secure-aggregation degree {degree} / threshold {threshold} is below the safe "
            f"minimum ({MIN_DEGREE} neighbours, threshold {MIN_THRESHOLD}): one share holder "
            "would hold a whole secret (at least 3 clients are needed)"
        )
    if degree > MAX_SHARES:
        raise ValueError(f"secure-aggregation degree {degree} is above {MAX_SHARES} neighbours")
    if not degree // 2 < threshold <= degree:
        raise ValueError(
            f"secure-aggregation threshold {threshold} must be above half the degree "
            f"({degree}) and at most the degree"
        )


def harary_offsets(n: int, degree: int) -> list[int]:
    """The ring offsets of the circulant Harary graph H(degree, n) (Harary 1962): +-1 ..
    +-degree/2, and the diametric n/2 for an odd degree (which needs an even ``n``). Every node
    of the graph has exactly these offsets, so it has ``len(offsets) == degree`` neighbours."""
    if degree >= n - 1:
        return list(range(1, n))
    if degree < 1 or degree * n % 2:
        raise ValueError(f"no {degree}-regular graph on {n} nodes (degree x nodes must be even)")
    half = degree // 2
    offsets = set(range(1, half + 1)) | set(range(n - half, n))
    if degree % 2:
        offsets.add(n // 2)
    return sorted(offsets)


def harary_neighbours(nodes: list[int], degree: int, rng: np.random.Generator) -> dict[int, list]:
    """Each node's neighbours on a Harary graph H(degree, n) over a random order of ``nodes``
    (:func:`harary_offsets`); with ``degree >= n - 1`` the graph is complete. Raises ValueError
    for an odd degree on an odd number of nodes (no such regular graph exists)."""
    n = len(nodes)
    offsets = np.asarray(harary_offsets(n, degree), dtype=np.int64)
    order = np.asarray(nodes, dtype=np.uint64)[rng.permutation(n)]
    rows = np.sort(order[(np.arange(n)[:, None] + offsets[None, :]) % n], axis=1)
    return dict(zip(order.tolist(), rows.tolist(), strict=True))


def threshold_core(neighbours: dict[int, list[int]], nodes: Iterable[int], t: int) -> list[int]:
    """The nodes of ``nodes`` left after repeatedly removing any with fewer than ``t``
    neighbours among those left: only their secrets can be rebuilt, and a client refuses to
    upload with fewer than ``t`` live neighbours (Bonawitz et al. CCS 2017, round 2)."""
    left = set(nodes)
    while True:
        short = {v for v in left if sum(u in left for u in neighbours[v]) < t}
        if not short:
            return sorted(left)
        left -= short


def _bad(what: str, reason: RejectReason = RejectReason.BAD_SECAGG) -> UpdateRejected:
    return UpdateRejected(reason, what)


def field_bytes(
    record: Mapping[str, object], key: str, *, size: int | None = None, most: int | None = None
) -> bytes:
    """``record[key]`` if it is ``bytes`` (of exactly ``size`` / at most ``most`` bytes)."""
    value = record.get(key)
    if not isinstance(value, bytes):
        raise _bad(f"field {key!r} must be bytes, got {type(value).__name__}")
    if size is not None and len(value) != size:
        raise _bad(
            f"field {key!r} is {len(value)} bytes, expected {size}", RejectReason.LENGTH_MISMATCH
        )
    if most is not None and len(value) > most:
        raise _bad(
            f"field {key!r} is {len(value)} bytes, at most {most} allowed",
            RejectReason.LENGTH_MISMATCH,
        )
    return value


def field_int(record: Mapping[str, object], key: str, *, low: int, high: int) -> int:
    """``record[key]`` if it is an ``int`` (not a bool, not a float) in ``[low, high]``."""
    value = record.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(f"field {key!r} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise _bad(f"field {key!r} = {value} is outside [{low}, {high}]")
    return value


def field_flag(record: Mapping[str, object], key: str) -> bool:
    """``record[key]`` if it is a bool; False when absent."""
    value = record.get(key, False)
    if not isinstance(value, bool):
        raise _bad(f"field {key!r} must be a bool, got {type(value).__name__}")
    return value


def field_byte_list(
    record: Mapping[str, object], key: str, *, count: int, most: int
) -> list[bytes]:
    """``record[key]`` if it is a list of exactly ``count`` bytes values of at most ``most``
    bytes each (signing keys, signatures)."""
    value = record.get(key)
    if not isinstance(value, list) or len(value) != count:
        raise _bad(f"field {key!r} must be a list of {count} bytes values")
    if not all(isinstance(v, bytes) and len(v) <= most for v in value):
        raise _bad(f"field {key!r} holds a value that is not bytes of at most {most}")
    return value


def field_ids(
    record: Mapping[str, object], key: str, *, most: int = MAX_NODES, exact: int | None = None
) -> list[int]:
    """The node ids of ``record[key]`` (uint64 bytes), at most ``most`` (or exactly
    ``exact``) of them, without repeats."""
    raw = field_bytes(record, key, size=None if exact is None else 8 * exact, most=8 * most)
    ids = node_ids(raw)
    if len(set(ids)) != len(ids):
        raise _bad(f"field {key!r} repeats a node id")
    return ids


def node_ids(raw: bytes) -> list[int]:
    """Node ids travel as little-endian uint64 bytes (Flower ids do not fit a signed int)."""
    if len(raw) % 8:
        raise UpdateRejected(RejectReason.LENGTH_MISMATCH, "a node-id list is not 8-byte aligned")
    return np.frombuffer(raw, dtype="<u8").tolist()


@functools.lru_cache(maxsize=16)
def id_set(raw: bytes) -> frozenset[int]:
    """:func:`node_ids` as a set, cached by content: the round's alive and survivor lists are
    the same for every client, and a simulator holding N clients would otherwise parse each N
    times a round (O(N^2), a large share of the unmask stage at 1000 clients)."""
    return frozenset(node_ids(raw))


def ids_bytes(ids: list[int] | set[int]) -> bytes:
    return np.asarray(sorted(ids) if isinstance(ids, set) else ids, dtype="<u8").tobytes()


def share_context(nonce: bytes, server_round: int, src: int, dst: int) -> bytes:
    """AES-GCM associated data of a share: replay across rounds or nodes fails the tag."""
    return b"pollen/secagg/share" + nonce + struct.pack("<QQQ", server_round, src, dst)


def key_statement(nonce: bytes, server_round: int, node: int, pk_c: bytes, pk_s: bytes) -> bytes:
    """What a node signs of its stage-1 keys: a substituted key no longer matches it."""
    return (
        b"pollen/secagg/keys"
        + struct.pack("<BQQ", len(nonce), server_round, node)
        + nonce
        + pk_c
        + pk_s
    )


def view_statement(nonce: bytes, server_round: int, survivors: bytes, dropped: bytes) -> bytes:
    """What a node signs of the stage-4 outcome it was shown (Bonawitz et al. CCS 2017,
    ConsistencyCheck): the round's survivor and dropped sets, as sorted uint64 ids."""
    return (
        b"pollen/secagg/view"
        + struct.pack("<BQ", len(nonce), server_round)
        + nonce
        + hashlib.sha256(survivors).digest()
        + hashlib.sha256(dropped).digest()
    )


def chunks(raw: bytes, size: int, count: int, what: str) -> list[bytes]:
    """``raw`` cut in ``count`` pieces of ``size`` bytes; any other length is rejected."""
    if len(raw) != size * count:
        raise UpdateRejected(
            RejectReason.LENGTH_MISMATCH, f"{what}: {len(raw)} bytes, expected {count} x {size}"
        )
    return [raw[i * size : (i + 1) * size] for i in range(count)]


def shares_reply(record: Mapping[str, object], neighbours: list[int]) -> dict[int, bytes]:
    """A stage-2 reply's sealed boxes by destination: ``to`` must be exactly the client's
    ``neighbours`` and ``sealed`` one box each (sizes checked before anything is cut)."""
    to = field_ids(record, "to", exact=len(neighbours))
    if to != neighbours:
        raise _bad("shares addressed to other nodes than the assigned neighbours")
    sealed = field_bytes(record, "sealed", size=SEALED_SHARE_BYTES * len(neighbours))
    return dict(zip(to, chunks(sealed, SEALED_SHARE_BYTES, len(to), "sealed"), strict=True))


def unmask_reply(
    record: Mapping[str, object], senders: list[int], owners_of: Mapping[str, set[int]]
) -> dict[str, list]:
    """A stage-4 reply of a holder that was relayed shares from ``senders``: ``{"seed":
    [(owner, share)], "key": [(owner, share)], "refused": [sender]}``. A seed share may only be
    of a survivor (``owners_of["seed"]``), a mask-key share only of a dropped node
    (``owners_of["key"]``), each of a sender, at most one per sender, every share a field
    element; anything else rejects the whole reply (none of its shares is used)."""
    relayed = set(senders)
    out: dict[str, list] = {}
    answered: set[int] = set()
    for kind in ("seed", "key"):
        owners = field_ids(record, f"{kind}-of", most=len(senders))
        raw = field_bytes(record, f"{kind}-shares", size=SHARE_BYTES * len(owners))
        shares = chunks(raw, SHARE_BYTES, len(owners), f"{kind}-shares")
        for owner, share in zip(owners, shares, strict=True):
            if owner not in relayed or owner not in owners_of[kind] or owner in answered:
                raise _bad(f"a {kind} share of node {owner}, which this holder may not release")
            if not share_in_field(share):
                raise _bad(f"a {kind} share of node {owner} is not below the field prime")
            answered.add(owner)
        out[kind] = list(zip(owners, shares, strict=True))
    refused = field_ids(record, "refused", most=len(senders)) if "refused" in record else []
    if not set(refused) <= relayed - answered:
        raise _bad("refuses shares it was not relayed, or that it also released")
    out["refused"] = refused
    return out
