"""numpy's PCG64 uniform draws for many generators at once, in torch (for the GPU).

The device codec must round each client's update with the noise the SDK draws
(``np.random.default_rng(seed).random(...)``), or the payload bytes would differ. numpy draws
one generator at a time on the host, a cost paid per client per round (benchmarks/README.md).
PCG64 (O'Neill 2014, "PCG: a family of simple fast space-efficient statistically good
algorithms") is a 128-bit LCG,
``s <- a*s + inc mod 2**128``, whose 64-bit outputs are the XSL-RR permutation of each new
state. Its m-th state is ``a**m * s0 + inc * (a**(m-1) + ... + a + 1)`` (LCG jump-ahead,
Brown 1994, "Random number generation with arbitrary strides"), so every draw of every
generator is computed independently: the powers and sums are shared by all generators and
cached, and each client contributes only its seeded ``(s0, inc)``. numpy's float32 draws take
the low then the high 32 bits of each output (``>> 8``, times 2**-24); its float64 draws take a
whole output (``>> 11``, times 2**-53). 128-bit products are taken in 16-bit limbs held in
int64 (a limb product is below 2**32, a column of 16 below 2**36). Written by hand: neither
torch nor numpy has a batched or device form of numpy's generators. On a CPU numpy's own C
loop is faster, so the engine uses this on CUDA only; ``tests/simulations/batched/test_pcg64.py``
checks it against numpy value for value.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

MULTIPLIER = 0x2360ED051FC65DA44385DF649FCCF645  # numpy's PCG64 (PCG_DEFAULT_MULTIPLIER_128)
_MASK128 = (1 << 128) - 1
_LIMBS, _BITS, _LIMB = 8, 16, 0xFFFF
# states computed per block: clients x outputs, times 8 limbs of int64 (2**21: 128 MB)
BLOCK_ELEMENTS = 1 << 21


def _to_limbs(values: Sequence[int]) -> np.ndarray:
    """[N, 8] int64: each 128-bit value as 16-bit limbs, least significant first."""
    raw = b"".join(v.to_bytes(16, "little") for v in values)
    return np.frombuffer(raw, dtype="<u2").reshape(-1, _LIMBS).astype(np.int64)


@functools.lru_cache(maxsize=8)
def _jumps(outputs: int) -> tuple[np.ndarray, np.ndarray]:
    """Limbs of ``a**m`` and ``1 + a + ... + a**(m-1)`` for m = 1..outputs."""
    powers, sums = [], []
    power, total = 1, 0
    for _ in range(outputs):
        total = (total + power) & _MASK128
        power = (power * MULTIPLIER) & _MASK128
        powers.append(power)
        sums.append(total)
    return _to_limbs(powers), _to_limbs(sums)


def seeded_states(seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """[K, 8] limbs of each ``default_rng(seed)``'s state and increment, as numpy seeds them."""
    states = [np.random.PCG64(int(seed)).state["state"] for seed in seeds]
    return _to_limbs([s["state"] for s in states]), _to_limbs([s["inc"] for s in states])


def _states(power, total, s0, inc) -> torch.Tensor:
    """[B, M, 8] limbs of ``power * s0 + total * inc mod 2**128`` (power, total: [M, 8])."""
    columns = []
    for k in range(_LIMBS):
        acc = torch.zeros(s0.shape[0], power.shape[0], dtype=torch.int64, device=s0.device)
        for i in range(k + 1):
            acc += s0[:, k - i, None] * power[None, :, i]
            acc += inc[:, k - i, None] * total[None, :, i]
        columns.append(acc)
    carry = torch.zeros_like(columns[0])
    for k in range(_LIMBS):
        columns[k] += carry
        carry = columns[k] >> _BITS
        columns[k] &= _LIMB
    return torch.stack(columns, dim=-1)


def _outputs(states: torch.Tensor) -> torch.Tensor:
    """[..., 4] 16-bit limbs of XSL-RR: rotate right (high ^ low 64 bits) by the top 6 bits."""
    x = states[..., 4:] ^ states[..., :4]
    rotation = states[..., 7] >> 10
    whole, part = (rotation >> 4)[..., None], (rotation & 15)[..., None]
    lanes = torch.arange(4, device=states.device)
    low = torch.gather(x, -1, (lanes + whole) % 4)
    high = torch.gather(x, -1, (lanes + whole + 1) % 4)
    return ((low >> part) | (high << (_BITS - part))) & _LIMB


def _draws(seeds: Sequence[int], outputs: int, device: torch.device, convert) -> torch.Tensor:
    s0_all, inc_all = (torch.from_numpy(a).to(device) for a in seeded_states(seeds))
    power, total = (torch.from_numpy(a).to(device) for a in _jumps(outputs))
    block = max(1, BLOCK_ELEMENTS // max(outputs, 1))
    parts = []
    for start in range(0, len(seeds), block):
        rows = slice(start, start + block)
        parts.append(convert(_outputs(_states(power, total, s0_all[rows], inc_all[rows]))))
    return torch.cat(parts) if parts else torch.zeros(0, device=device)


def uniform_float32(seeds: Sequence[int], count: int, device: torch.device) -> torch.Tensor:
    """[K, count]: ``np.random.default_rng(seed).random(count, dtype=np.float32)`` per seed."""

    def convert(v: torch.Tensor) -> torch.Tensor:  # v: [B, M, 4] limbs of each output
        low = (v[..., 1] << 8) | (v[..., 0] >> 8)  # (low 32 bits) >> 8
        high = (v[..., 3] << 8) | (v[..., 2] >> 8)  # (high 32 bits) >> 8
        pairs = torch.stack([low, high], dim=-1).reshape(v.shape[0], -1)
        return pairs[:, :count].to(torch.float32) * (1.0 / 16777216.0)

    return _draws(seeds, -(-count // 2), device, convert).reshape(len(seeds), count)


def uniform_float64(seeds: Sequence[int], count: int, device: torch.device) -> torch.Tensor:
    """[K, count]: ``np.random.default_rng(seed).random(count)`` (float64) per seed."""

    def convert(v: torch.Tensor) -> torch.Tensor:  # the 53 top bits of each 64-bit output
        top = (v[..., 3] << 37) | (v[..., 2] << 21) | (v[..., 1] << 5) | (v[..., 0] >> 11)
        return top.to(torch.float64) * (1.0 / 9007199254740992.0)

    return _draws(seeds, count, device, convert).reshape(len(seeds), count)
