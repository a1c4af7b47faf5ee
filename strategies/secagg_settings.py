"""Settings of secure aggregation (SecAgg+, Bell et al. CCS 2020) and its graph rule.

The server assigns each client ``degree`` neighbours on a Harary graph and a Shamir threshold
``t``; clients check the same rule (:func:`wire.secagg_protocol.check_graph`): ``t`` above
half the degree, both at least 2 (Bonawitz et al. CCS 2017 need ``t > n/2`` of the share
holders so a server cannot collect both secrets of one client).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from wire.secagg_protocol import check_graph


class SecAggFailed(RuntimeError):
    """The round's secure aggregation cannot finish (too few clients or shares)."""


@dataclass(frozen=True)
class SecAggSettings:
    """``degree`` 0: every other client up to 24, else 3 log2(N) neighbours (O(log N) as in
    Bell et al.; small federations get a complete graph, which survives 30% dropouts);
    ``threshold`` 0: half the degree + 1. ``share_metrics``: masked uploads also carry the
    client's plaintext train-loss, clipped-fraction and partition-id (off: only the sum is
    learnt, as secure aggregation promises)."""

    degree: int = 0
    threshold: int = 0
    bits: int = 8
    clip: float = 1.0
    max_weight: int = 256
    timeout: float = 600.0
    share_metrics: bool = False

    def graph(self, clients: int) -> tuple[int, int]:
        """(degree, threshold) for ``clients`` nodes; a threshold must exceed half the degree.

        An automatic degree is kept between an explicit threshold t and 2t - 1, so the pair
        stays valid. A degree-regular graph on an odd number of nodes needs an even degree
        (the handshake lemma: degree x nodes is twice the edges), so an odd degree with an odd
        ``clients`` becomes the even degree next to it that keeps the threshold valid (one
        above when it can: more holders per secret). Raises ValueError when no valid pair
        exists for ``clients`` (fewer than 3, or a threshold the degree cannot carry).
        """
        most = clients - 1
        degree = self.degree
        if not degree:
            degree = max(24, 3 * math.ceil(math.log2(max(clients, 2))))
            if self.threshold:
                degree = min(max(degree, self.threshold), 2 * self.threshold - 1)
        degree = min(degree, most)
        if degree * clients % 2:
            for even in (degree + 1, degree - 1):
                t = self.threshold or even // 2 + 1
                if even <= most and even // 2 < t <= even:
                    degree = even
                    break
        threshold = self.threshold or degree // 2 + 1
        try:
            check_graph(degree, threshold)
        except ValueError as err:
            raise ValueError(f"{err} (with {clients} clients)") from None
        return degree, threshold
