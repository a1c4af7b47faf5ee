"""Cryptographic building blocks of secure aggregation (SecAgg+, Bell et al. CCS 2020).

Key agreement is X25519 with HKDF-SHA256 (RFC 7748, RFC 5869), share encryption AES-256-GCM
with the round, stage and both node ids as associated data, and the mask generator a ChaCha20
keystream (RFC 8439) keyed by a 256-bit seed, all from ``cryptography``.

Shamir secret sharing (Shamir 1979) is written here, over the prime field of p = 2^256 + 297
(the smallest prime above 2^256, so a 32-byte secret is one field element and a share is 33
bytes). Why not pycryptodome's ``Shamir`` (a Flower dependency): its GF(2^128) arithmetic is
bit-by-bit Python, far slower than Python's integers modulo p, and unmasking rebuilds secrets
for every client of a round (benchmarks/README.md).

Masked vectors live in Z_2^m with m <= 32: arithmetic is native ``uint32`` wrap-around, and
a value is reduced with ``& (2^m - 1)`` only where it is packed, which is exact because 2^m
divides 2^32.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from wire.errors import RejectReason, UpdateRejected

KEY_BYTES = 32
NONCE_BYTES = 12
MAX_MODULUS_BITS = 32
MAX_SHARES = 1024  # holders of one secret (a client's neighbours)
SHAMIR_PRIME = 2**256 + 297  # the smallest prime above 2^256
SHARE_BYTES = 33  # a field element below SHAMIR_PRIME, big-endian
_RAW = serialization.Encoding.Raw


def new_private_key() -> bytes:
    """A fresh X25519 private key (raw 32 bytes) from the OS CSPRNG."""
    return X25519PrivateKey.generate().private_bytes(
        _RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def public_key(private: bytes) -> bytes:
    return (
        X25519PrivateKey.from_private_bytes(private)
        .public_key()
        .public_bytes(_RAW, serialization.PublicFormat.Raw)
    )


def new_seed() -> bytes:
    """A 256-bit secret seed (a client's self-mask seed)."""
    return os.urandom(KEY_BYTES)


def agree(private: bytes, peer_public: bytes, purpose: bytes) -> bytes:
    """The 32-byte key two nodes derive from X25519 and HKDF-SHA256; ``purpose`` separates uses.

    Raises :class:`UpdateRejected` (bad-secagg) for a public key that is not 32 bytes or is a
    low-order point (all zeros, ...), whose exchange would give the all-zero secret.
    """
    return agree_each(private, [peer_public], purpose)[0]


def agree_each(private: bytes, peer_publics: list[bytes], purpose: bytes) -> list[bytes]:
    """:func:`agree` with each of ``peer_publics``, loading ``private`` once (loading a raw
    X25519 key costs about as much as the exchange itself)."""
    for peer_public in peer_publics:
        if len(peer_public) != KEY_BYTES:
            raise UpdateRejected(
                RejectReason.BAD_SECAGG,
                f"public key must be {KEY_BYTES} bytes, got {len(peer_public)}",
            )
    key = X25519PrivateKey.from_private_bytes(private)
    return [
        HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=purpose).derive(
            _exchange(key, peer_public)
        )
        for peer_public in peer_publics
    ]


def _exchange(key: X25519PrivateKey, peer_public: bytes) -> bytes:
    try:
        return key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:  # a low-order point: the shared secret would be all zeros
        raise UpdateRejected(
            RejectReason.BAD_SECAGG,
            f"public key {peer_public.hex()[:16]}... is a low-order X25519 point (its exchange "
            "gives the all-zero secret): it cannot key a share or a mask",
        ) from None


# Any fixed scalar detects a low-order point: X25519 clamps every scalar to a multiple of the
# cofactor 8, so for a point of order dividing 8 every exchange gives the identity (RFC 7748
# §6.1 says to check for the all-zero output, which ``cryptography`` turns into ValueError).
_PROBE = X25519PrivateKey.from_private_bytes(bytes(range(1, KEY_BYTES + 1)))  # not a secret


def usable_public_key(peer_public: object) -> bool:
    """True when ``peer_public`` is 32 bytes and an X25519 exchange with it succeeds (not a
    low-order point such as all zeros): what the server checks of each advertised key, so a
    bad key is its sender's fault at setup, not its honest neighbours' later."""
    if not isinstance(peer_public, bytes) or len(peer_public) != KEY_BYTES:
        return False
    try:
        _PROBE.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        return False
    return True


def encrypt(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """AES-256-GCM: random 96-bit nonce || ciphertext || 16-byte tag."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def decrypt(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    """Open :func:`encrypt`'s output; a changed byte, key or context raises UpdateRejected."""
    if len(sealed) < NONCE_BYTES + 16:
        raise UpdateRejected(RejectReason.BAD_SECAGG, f"sealed share too short ({len(sealed)} B)")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated)
    except InvalidTag:
        raise UpdateRejected(
            RejectReason.SHARE_TAMPERED,
            "share ciphertext failed its AES-GCM tag (tampered, replayed from another "
            "round/stage, or sealed for another node)",
        ) from None


def mask_stream(seed: bytes, count: int) -> np.ndarray:
    """``count`` uniform uint32 words: the ChaCha20 keystream under ``seed`` (zero nonce).

    Every seed is a fresh secret or a per-round pairwise key, so the fixed nonce never repeats
    a (key, nonce) pair.
    """
    global _zeros
    if len(_zeros) < 4 * count:  # the plaintext: zeros made once, not per stream
        _zeros = bytes(4 * count)
    encryptor = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    return np.frombuffer(encryptor.update(memoryview(_zeros)[: 4 * count]), dtype=np.uint32)


_zeros = b""


def split_secret(secret: bytes, threshold: int, holders: int) -> list[bytes]:
    """Shamir shares of a 32-byte secret: holder i gets the polynomial's value at x = i + 1."""
    if len(secret) != KEY_BYTES:
        raise ValueError(f"secrets are {KEY_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= holders <= MAX_SHARES:
        raise ValueError(
            f"need 1 <= threshold ({threshold}) <= holders ({holders}) <= {MAX_SHARES}"
        )
    coefficients = [int.from_bytes(secret, "big")] + [
        secrets.randbelow(SHAMIR_PRIME) for _ in range(threshold - 1)
    ]
    shares = []
    for x in range(1, holders + 1):
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % SHAMIR_PRIME
        shares.append(y.to_bytes(SHARE_BYTES, "big"))
    return shares


def share_in_field(share: bytes) -> bool:
    """A share as :func:`split_secret` makes them: 33 bytes, an element below the prime."""
    return len(share) == SHARE_BYTES and int.from_bytes(share, "big") < SHAMIR_PRIME


def combine_shares(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The secret from ``threshold`` shares keyed by holder position (0-based): Lagrange at 0."""
    if len(shares) < threshold:
        raise ValueError(f"{len(shares)} shares, {threshold} needed")
    points = []
    for position, share in sorted(shares.items())[:threshold]:
        if not isinstance(share, bytes) or len(share) != SHARE_BYTES:
            raise UpdateRejected(
                RejectReason.BAD_SECAGG, f"a share must be a {SHARE_BYTES}-byte element"
            )
        y = int.from_bytes(share, "big")
        if y >= SHAMIR_PRIME:
            raise UpdateRejected(
                RejectReason.BAD_SECAGG,
                f"a share must be a {SHARE_BYTES}-byte element below the field prime",
            )
        points.append((position + 1, y))
    secret = 0
    for i, (xi, yi) in enumerate(points):
        num = den = 1
        for j, (xj, _) in enumerate(points):
            if j != i:
                num = num * xj % SHAMIR_PRIME
                den = den * (xj - xi) % SHAMIR_PRIME
        secret = (secret + yi * num * pow(den, -1, SHAMIR_PRIME)) % SHAMIR_PRIME
    if secret >> (8 * KEY_BYTES):
        raise UpdateRejected(RejectReason.BAD_SECAGG, "shares do not combine to a 32-byte secret")
    return secret.to_bytes(KEY_BYTES, "big")


def modulus_bits(clients: int, max_value: int) -> int:
    """The smallest m with ``clients * max_value < 2^m``: the sum of N values cannot wrap."""
    bits = max(1, int(clients * max_value).bit_length())
    if bits > MAX_MODULUS_BITS:
        raise ValueError(
            f"{clients} clients x values up to {max_value} need {bits}-bit sums; at most "
            f"{MAX_MODULUS_BITS} are supported: lower the weight cap, the bits or the clients"
        )
    return bits


# ---------------------------------------------------------------- signatures (node identity)
SIGNATURE_BYTES_MAX = 160  # a DER ECDSA signature on P-384 is at most 104 bytes
SIGNING_KEY_BYTES_MAX = 512  # an OpenSSH public key line of P-384 is about 180 bytes
_SSH, _SSH_PUB = serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH


def load_signing_key(data: bytes) -> ec.EllipticCurvePrivateKey:
    """An EC private key (OpenSSH or PEM): the key a SuperNode authenticates with (Flower's
    ``--auth-supernode-private-key``, P-384); ValueError for anything else."""
    try:
        if data.lstrip().startswith(b"-----BEGIN OPENSSH"):
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise ValueError(f"not an unencrypted EC private key: {err}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"not an EC private key: {type(key).__name__}")
    return key


def canonical_public_key(data: bytes) -> bytes:
    """An OpenSSH public key line reduced to ``type base64`` (no comment), the form in which
    signing keys travel and are compared; ValueError if it is not an EC public key."""
    try:
        key = serialization.load_ssh_public_key(data.strip())
    except (ValueError, UnsupportedAlgorithm) as err:
        raise ValueError(f"not an OpenSSH public key: {err}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"not an EC public key: {type(key).__name__}")
    return key.public_bytes(_SSH, _SSH_PUB)


def signing_public_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(_SSH, _SSH_PUB)


def sign(key: ec.EllipticCurvePrivateKey, statement: bytes) -> bytes:
    """ECDSA over ``statement`` with SHA-384 (the hash that matches P-384)."""
    return key.sign(statement, ec.ECDSA(hashes.SHA384()))


def signature_valid(public: bytes, signature: object, statement: bytes) -> bool:
    """True when ``signature`` (bytes) is ``public``'s ECDSA-SHA384 over ``statement``."""
    if not isinstance(signature, bytes) or len(signature) > SIGNATURE_BYTES_MAX:
        return False
    try:
        key = serialization.load_ssh_public_key(public)
        if not isinstance(key, ec.EllipticCurvePublicKey):
            return False
        key.verify(signature, statement, ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        return False
    return True
