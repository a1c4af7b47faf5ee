"""Pooled uploads: one reply carries the weighted mean of a group of clients' updates.

A host that runs many clients (Pollen's batched simulation engine) may, when the server says
the weighted mean of the updates is all it needs this round, act like an edge aggregator in
hierarchical federated learning (Liu et al., "Client-Edge-Cloud Hierarchical Federated
Learning", ICC 2020): it sends one payload per group, the group's weighted mean update, and
every other member's reply carries only its metrics and the pool's id. The mean is float32
even when the members' updates are quantized: it is then the mean of what the server would
have decoded from each member's own payload. The server uses a pool
only when it is whole and its weight is the sum of its members' example counts
(``strategies.pooling``). Devices never pool: each sends its own payload.
"""

from __future__ import annotations

# Server -> clients, in the train config: "the weighted mean is all I need this round".
POOLING_CONFIG_KEY = "pollen-pooling"
# In a reply's update ConfigRecord (next to the payload on the pool's carrier).
POOL_ID_FIELD = "pool-id"  # the same string on every member of one pool
POOL_SIZE_FIELD = "pool-size"  # carrier only: how many replies (carrier included) the pool has
POOL_WEIGHT_FIELD = "pool-weight"  # carrier only: the sum of the members' num-examples
# Carrier only, optional: the size of the payload each member would have sent on its own (a
# quantized update); without it each member counts a float32 update, the carrier's size.
POOL_MEMBER_BYTES_FIELD = "pool-member-bytes"
