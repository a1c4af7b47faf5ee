"""ChaCha20 keystreams for many seeds at once on the engine's device: secure aggregation's masks.

:func:`wire.secagg.mask_stream` expands a 32-byte seed into uint32 words with the ChaCha20
keystream (RFC 8439, zero counter and nonce) from ``cryptography``, one seed at a time on the
CPU. The batched engine needs one stream per client (self mask) and one per pair of neighbours
(pairwise masks): thousands of 250 KB streams per round. This is the RFC's block function
written in torch over [16, blocks] states, every block of every seed in one tensor, because
no library computes ChaCha20 on a GPU; each word is the same as ``cryptography``'s
(``tests/simulations/batched/test_secure.py``). Words are held in int64 and reduced modulo
2^32 after each addition, so nothing depends on how a signed 32-bit overflow behaves.

On a CPU ``cryptography``'s vectorized C is faster than these torch kernels, so the engine
uses this on CUDA only (:mod:`.secure`).
"""

from __future__ import annotations

import numpy as np
import torch

WORDS_PER_BLOCK = 16
_CONSTANTS = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)  # "expand 32-byte k"
_MASK32 = 0xFFFFFFFF


def _rotl(x: torch.Tensor, bits: int) -> torch.Tensor:
    return ((x << bits) & _MASK32) | (x >> (32 - bits))


def _quarter_rounds(a, b, c, d) -> None:
    """RFC 8439 section 2.1 on [4, blocks] rows (four quarter rounds side by side), in place."""
    a.add_(b).bitwise_and_(_MASK32)
    d.copy_(_rotl(d ^ a, 16))
    c.add_(d).bitwise_and_(_MASK32)
    b.copy_(_rotl(b ^ c, 12))
    a.add_(b).bitwise_and_(_MASK32)
    d.copy_(_rotl(d ^ a, 8))
    c.add_(d).bitwise_and_(_MASK32)
    b.copy_(_rotl(b ^ c, 7))


def keystream_words(seeds: list[bytes], count: int, device: torch.device) -> torch.Tensor:
    """[len(seeds), count] int64: word i of row s is ``mask_stream(seeds[s], count)[i]``."""
    for seed in seeds:
        if len(seed) != 32:
            raise ValueError(f"ChaCha20 keys are 32 bytes, got {len(seed)}")
    if count > WORDS_PER_BLOCK << 32:
        raise ValueError(f"{count} words exceed ChaCha20's 32-bit block counter")
    blocks = -(-count // WORDS_PER_BLOCK)
    keys = np.frombuffer(b"".join(seeds), dtype="<u4").reshape(len(seeds), 8).astype(np.int64)
    initial = torch.zeros(WORDS_PER_BLOCK, len(seeds), blocks, dtype=torch.int64, device=device)
    for i, constant in enumerate(_CONSTANTS):
        initial[i] = constant
    initial[4:12] = torch.from_numpy(keys.T.copy()).to(device)[:, :, None]
    initial[12] = torch.arange(blocks, dtype=torch.int64, device=device)  # block counter
    state = initial.clone()
    a, b, c, d = state[0:4], state[4:8], state[8:12], state[12:16]
    for _ in range(10):  # 20 rounds: a column round and a diagonal round each
        _quarter_rounds(a, b, c, d)
        rolled = [row.roll(-shift, dims=0) for shift, row in ((1, b), (2, c), (3, d))]
        _quarter_rounds(a, *rolled)
        for shift, row, new in zip((1, 2, 3), (b, c, d), rolled, strict=True):
            row.copy_(new.roll(shift, dims=0))
    state.add_(initial).bitwise_and_(_MASK32)
    # [16, seeds, blocks] -> [seeds, blocks * 16]: block j's word w is stream word 16 j + w
    return state.permute(1, 2, 0).reshape(len(seeds), -1)[:, :count]
