"""Pairwise key agreements of secure aggregation, each computed once for both ends of a pair.

In SecAgg+ (Bell et al. CCS 2020) every pair of neighbours agrees on two keys, X25519 followed
by HKDF (:func:`wire.secagg.agree_each`): one seals their Shamir shares (stages 2 and 4), one
seeds their pairwise mask (stage 3). On devices each end computes each key itself: a node does
about 3 x degree agreements a round, each an X25519 exchange. The simulator holds both ends, and
X25519 is symmetric: ``agree(a, B) == agree(b, A)`` whenever ``A`` and ``B`` are the public keys
of ``a`` and ``b``. So a result is remembered under the two public keys it joins (and its HKDF
purpose), and the other end, or the same node in a later stage, finds it there. The memo is
sound whatever keys a node holds: a node handed a wrong public key looks up a pair nobody else
has computed, and computes it. A fresh round brings fresh keys: the engine starts a new cache
with each keys stage (:class:`.secure.SecureRound`).
"""

from __future__ import annotations

from wire.secagg import agree_each, public_key


class AgreementCache:
    """:func:`wire.secagg.agree_each` with each (pair of public keys, purpose) computed once."""

    def __init__(self) -> None:
        self._public: dict[bytes, bytes] = {}  # private key -> its public key
        self._agreed: dict[tuple[bytes, bytes, bytes], bytes] = {}
        self.computed = 0  # agreements computed (the rest were found)
        self.found = 0

    def agree_each(self, private: bytes, peer_publics: list[bytes], purpose: bytes) -> list[bytes]:
        """The same keys, in the same order, and the same errors as ``agree_each``."""
        if private not in self._public:
            self._public[private] = public_key(private)
        mine = self._public[private]
        keys = [self._key(mine, peer, purpose) for peer in peer_publics]
        missing = [i for i, key in enumerate(keys) if key not in self._agreed]
        agreed = agree_each(private, [peer_publics[i] for i in missing], purpose)
        for i, value in zip(missing, agreed, strict=True):
            self._agreed[keys[i]] = value
        self.computed += len(missing)
        self.found += len(keys) - len(missing)
        return [self._agreed[key] for key in keys]

    @staticmethod
    def _key(mine: bytes, peer: bytes, purpose: bytes) -> tuple[bytes, bytes, bytes]:
        low, high = sorted((mine, peer))  # the pair, whichever end asks
        return purpose, low, high
