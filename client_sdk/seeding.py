"""Per-client, per-round seeds: numpy's ``SeedSequence([seed, round, partition_id + 1])``.

:func:`client_seed` is what every client computes for itself. :func:`client_seeds` computes
the same seeds for many clients at once, for the batched engine: numpy's SeedSequence has no
batched form and its per-client cost adds up over thousands of clients (benchmarks/README.md),
so this is a vectorized port of its entropy mixing and first state word (O'Neill's ``seed_seq``
alternative as numpy implements it in ``numpy/random/bit_generator.pyx``; pool size 4, 32-bit
words), checked value for value against numpy in ``tests/client_sdk/test_seeding.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_MULT_L, _MIX_MULT_R = 0xCA01F9DD, 0x4973F715
_MASK32, _XSHIFT, _POOL_SIZE = 0xFFFFFFFF, 16, 4


def client_seed(seed: int, server_round: int, partition_id: int) -> int:
    """A per-client, per-round seed derived from the run seed (numpy SeedSequence)."""
    state = np.random.SeedSequence([seed, server_round, partition_id + 1]).generate_state(1)
    return int(state[0])


def _words(value: int) -> list[int]:
    """numpy's split of a non-negative int into 32-bit words, least significant first."""
    if value < 0:
        raise ValueError(f"seed entropy must be non-negative, got {value}")
    words = [value & _MASK32]
    value >>= 32
    while value:
        words.append(value & _MASK32)
        value >>= 32
    return words


def client_seeds(seed: int, server_round: int, partition_ids: Sequence[int]) -> list[int]:
    """``[client_seed(seed, server_round, pid) for pid in partition_ids]``, vectorized."""
    last = np.asarray(partition_ids, dtype=np.int64) + 1
    if last.size == 0:
        return []
    if last.min() < 0 or last.max() > _MASK32:  # numpy would split these into several words
        return [client_seed(seed, server_round, int(pid)) for pid in partition_ids]
    shared = _words(seed) + _words(server_round)
    entropy = [np.full(last.shape, w, dtype=np.uint32) for w in shared]
    entropy.append(last.astype(np.uint32))
    hash_const = _INIT_A

    def hashmix(value: np.ndarray) -> np.ndarray:
        nonlocal hash_const
        value = value ^ np.uint32(hash_const)
        hash_const = (hash_const * _MULT_A) & _MASK32
        value = value * np.uint32(hash_const)
        return value ^ (value >> np.uint32(_XSHIFT))

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        result = np.uint32(_MIX_MULT_L) * x - np.uint32(_MIX_MULT_R) * y
        return result ^ (result >> np.uint32(_XSHIFT))

    zero = np.zeros(last.shape, dtype=np.uint32)
    pool = [hashmix(entropy[i] if i < len(entropy) else zero) for i in range(_POOL_SIZE)]
    for src in range(_POOL_SIZE):
        for dst in range(_POOL_SIZE):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    for src in range(_POOL_SIZE, len(entropy)):
        for dst in range(_POOL_SIZE):
            pool[dst] = mix(pool[dst], hashmix(entropy[src]))
    state = pool[0] ^ np.uint32(_INIT_B)
    state = state * np.uint32((_INIT_B * _MULT_B) & _MASK32)
    state = state ^ (state >> np.uint32(_XSHIFT))
    return state.tolist()
