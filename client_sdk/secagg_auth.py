"""Signed secure aggregation: a client's defence against a malicious server (Bonawitz et al.
CCS 2017 §6, the active-adversary variant; Bell et al. CCS 2020 build SecAgg+ on it).

A node configured with its signing key and the enrolled nodes' public keys (node config
``secagg-signing-key``: the EC key it authenticates to the SuperLink with, Flower's
``--auth-supernode-private-key``; ``secagg-trusted-keys``: the enrolled public keys, OpenSSH
lines in a file or ``*.pub`` files in a directory, given to the device with its own key):

1. signs its stage-1 X25519 public keys (with the round, the session nonce and its node id);
2. in stage 2 accepts only neighbours whose keys carry a valid signature by an enrolled key
   other than its own, no enrolled key twice: a server that substitutes a neighbour's keys
   (to read the shares sealed for it, or to mask with keys it knows) is detected and the node
   aborts before sharing anything;
3. in stage 4 (ConsistencyCheck) first signs the survivor and dropped sets it was shown, and
   releases shares only after the server returns at least ``threshold`` of its neighbours'
   signatures over the very same sets, every one valid: a server that tells some nodes a
   client dropped (to collect its mask-key shares) while others saw it upload (to collect its
   seed shares) is caught by any honest neighbour shown the lie, which aborts. A node signs
   one view per round and never a second one.

Threat model. Without signing keys (simulation; deployments without SuperNode
authentication) the protocol is secure against a semi-honest server and any set of colluding
clients smaller than the threshold of a victim's neighbours; a malicious server can still add
simulated clients (Sybils) or swap keys it relays, and, with clients colluding, show different
survivor sets. A node also refuses on its own, in any mode, to upload with fewer than
``threshold`` live neighbours, and any threshold at most half its neighbours or below 2
(:mod:`client_sdk.secagg`). With signing keys, a server (ServerApp and SuperLink) that deviates
after enrolment can neither substitute keys nor equivocate about dropouts to an honest
neighbour without the node aborting; it can still make the round fail (deny service), and the
set of enrolled keys is the trust anchor: an operator who enrols keys it controls has Sybils.
Integrity of the sum against malicious clients (range proofs) is out of scope in both modes;
the server only checks that the unmasked sum lies on the shared grid.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import ConfigRecord, Context

from wire import RejectReason, UpdateRejected
from wire.secagg import (
    SIGNATURE_BYTES_MAX,
    SIGNING_KEY_BYTES_MAX,
    canonical_public_key,
    load_signing_key,
    sign,
    signature_valid,
    signing_public_key,
)
from wire.secagg_protocol import field_byte_list, field_ids, key_statement

SIGNING_KEY_CONFIG = "secagg-signing-key"
TRUSTED_KEYS_CONFIG = "secagg-trusted-keys"


class SecAggConfigError(ValueError):
    """This node's signing configuration cannot be used; the message says how to fix it."""


@dataclass(frozen=True)
class Identity:
    key: ec.EllipticCurvePrivateKey
    public: bytes  # OpenSSH "ecdsa-sha2-nistp384 AAAA..." without a comment
    trusted: frozenset[bytes]  # the enrolled nodes' public keys, the same form


def identity(context: Context) -> Identity | None:
    """This node's signing identity from its node config; None when signing is not set up."""
    key_path = context.node_config.get(SIGNING_KEY_CONFIG, "")
    trusted_path = context.node_config.get(TRUSTED_KEYS_CONFIG, "")
    if not key_path and not trusted_path:
        return None
    if not (isinstance(key_path, str) and key_path and isinstance(trusted_path, str)):
        raise SecAggConfigError(
            f"signed secure aggregation needs both node-config keys {SIGNING_KEY_CONFIG} "
            f"(this node's EC private key) and {TRUSTED_KEYS_CONFIG} (the enrolled public keys)"
        )
    try:
        key = load_signing_key(Path(key_path).read_bytes())
        trusted = frozenset(_trusted_keys(Path(trusted_path)))
    except (OSError, ValueError) as err:
        raise SecAggConfigError(f"signed secure aggregation: {err}") from None
    if not trusted:
        raise SecAggConfigError(f"{TRUSTED_KEYS_CONFIG} {trusted_path}: no public keys")
    return Identity(key, signing_public_key(key), trusted)


def _trusted_keys(path: Path) -> list[bytes]:
    files = sorted(path.glob("*.pub")) if path.is_dir() else [path]
    lines = [line for f in files for line in f.read_bytes().splitlines() if line.strip()]
    return [canonical_public_key(line) for line in lines if not line.startswith(b"#")]


def signed_keys(
    mine: Identity, state: ConfigRecord, node: int, pk_c: bytes, pk_s: bytes
) -> dict[str, bytes]:
    """Stage 1's extra fields: this node's public signing key and its signature over the
    X25519 keys it advertises (``state``: this node's fresh session)."""
    statement = key_statement(state["nonce"], state["round"], node, pk_c, pk_s)
    return {"sig-key": mine.public, "key-sig": sign(mine.key, statement)}


def check_neighbour_keys(
    record: ConfigRecord,
    mine: Identity,
    state: ConfigRecord,
    neighbours: list[int],
    pk_c: list[bytes],
    pk_s: list[bytes],
) -> list[bytes]:
    """Stage 2: each neighbour's keys signed by a distinct enrolled key that is not this
    node's; the neighbours' signing keys, else UpdateRejected (the node shares nothing)."""
    count = len(neighbours)
    sig_keys = field_byte_list(record, "sig-keys", count=count, most=SIGNING_KEY_BYTES_MAX)
    sigs = field_byte_list(record, "key-sigs", count=count, most=SIGNATURE_BYTES_MAX)
    if len(set(sig_keys) | {mine.public}) != count + 1:
        raise _abort("an enrolled key is named for two nodes (or this node's own key is)")
    for j, sig_key, sig, c, s in zip(neighbours, sig_keys, sigs, pk_c, pk_s, strict=True):
        if sig_key not in mine.trusted:
            raise _abort(f"neighbour {j}'s signing key is not an enrolled node's")
        if not signature_valid(
            sig_key, sig, key_statement(state["nonce"], state["round"], j, c, s)
        ):
            raise _abort(
                f"neighbour {j}'s public keys are not the ones it signed: the server "
                "substituted them"
            )
    return sig_keys


def consistency_check(
    record: ConfigRecord,
    mine: Identity,
    state: ConfigRecord,
    statement: bytes,
    threshold: int,
) -> bytes | None:
    """Stage 4 of a signed round. First request (no ``view-sigs``): this node's signature of
    the survivor/dropped sets it was shown (``statement``), returned for the reply; the state
    remembers the view. Second request: None once at least ``threshold`` neighbours' valid
    signatures over the same view came back, else UpdateRejected (no share is released)."""
    view = hashlib.sha256(statement).digest()
    if "view-sigs" not in record:
        state.update({"stage": "viewed", "view": view})
        return sign(mine.key, statement)
    if state.get("view") != view:
        raise _abort("the survivor set differs from the one this node signed")
    neighbours = field_ids(state, "neighbours")
    keys = dict(zip(neighbours, state["sig-keys"], strict=True))
    signers = field_ids(record, "view-signers", most=len(neighbours))
    sigs = field_byte_list(record, "view-sigs", count=len(signers), most=SIGNATURE_BYTES_MAX)
    for j, sig in zip(signers, sigs, strict=True):
        if j not in keys or not signature_valid(keys[j], sig, statement):
            raise _abort(
                f"neighbour {j} did not sign the survivor set this node was shown: the server "
                "showed different nodes different dropouts"
            )
    if len(signers) < threshold:
        raise _abort(
            f"only {len(signers)} neighbours confirmed the survivor set, below the threshold "
            f"{threshold}"
        )
    return None


def _abort(why: str) -> UpdateRejected:
    return UpdateRejected(RejectReason.BAD_SECAGG, f"signed secure aggregation: {why}; aborting")
