"""Unequal client dataset sizes for generated-data tasks (numpy only).

Real federated data is skewed: a few clients hold most examples. Two size distributions, both
with mean ``samples`` examples per client and at least one example each, drawn from the run
seed and the number of clients only (every client computes the same vector, so the Flower
engine's separate processes and the batched engine agree):

- ``dirichlet:ALPHA``: client i holds its Dirichlet(ALPHA) share of ``samples * N`` examples
  (the size skew of a Dirichlet label partition, Hsu, Qi & Brown 2019; ALPHA = 0.3 leaves most
  clients a few examples and some several times the mean);
- ``pareto:A``: Lomax (Pareto II) sizes with shape A > 1 scaled to mean ``samples``, a power-law
  tail (A = 2: half the clients hold fewer than half the mean, the largest of 1000 about 80x it).
"""

from __future__ import annotations

import numpy as np

SIZE_DISTRIBUTIONS = ("dirichlet", "pareto")
_STREAM = 0x73697A6573  # "sizes": keeps these draws apart from every other use of the seed


class SizeSpecError(ValueError):
    """A size distribution is malformed."""


def parse_sizes(spec: str) -> tuple[str, float]:
    """``dirichlet:0.3`` -> ("dirichlet", 0.3); ``pareto:1.5`` -> ("pareto", 1.5)."""
    kind, _, value = spec.partition(":")
    try:
        parameter = float(value)
    except ValueError:
        parameter = float("nan")
    if kind not in SIZE_DISTRIBUTIONS or not np.isfinite(parameter):
        raise SizeSpecError(
            f"client sizes {spec!r}: write dirichlet:ALPHA or pareto:A, e.g. dirichlet:0.3"
        )
    if kind == "dirichlet" and not parameter > 0:
        raise SizeSpecError(f"client sizes {spec!r}: Dirichlet alpha must be > 0")
    if kind == "pareto" and not parameter > 1:
        raise SizeSpecError(f"client sizes {spec!r}: the Pareto shape must be > 1 (finite mean)")
    return kind, parameter


def client_sizes(spec: str, samples: int, num_clients: int, seed: int) -> np.ndarray:
    """[num_clients] int64 example counts, mean about ``samples``, each >= 1."""
    kind, parameter = parse_sizes(spec)
    rng = np.random.default_rng([seed, num_clients, _STREAM])
    if kind == "dirichlet":
        share = rng.dirichlet(np.full(num_clients, parameter))
        raw = share * samples * num_clients
    else:
        raw = rng.pareto(parameter, size=num_clients) * samples * (parameter - 1)
    return np.maximum(1, np.rint(raw)).astype(np.int64)
