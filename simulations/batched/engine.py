"""Run a Flower ServerApp on the batched engine, in this process, as Flower's runtime would."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

from flwr.app import Context, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import ServerApp
from flwr.supercore.run import Run

from simulations.batched.flower_private import task_identity
from simulations.batched.grid import BatchedGrid

# Cyclic-GC thresholds while the engine runs. Each simulated client costs about ten container
# objects per round (its instruction and reply Messages, their metadata and records), nearly
# all freed by reference counting, while the run keeps ~10 objects per node alive (contexts,
# cached data). Python's defaults (700, 10, 10) then run a full collection every few thousand
# clients, each scanning every live object and finding nothing: a large share of a big round's
# host time (benchmarks/README.md). These thresholds leave few such passes; cycles are still
# collected.
GC_THRESHOLDS = (50_000, 20, 100)


@contextlib.contextmanager
def fewer_gc_passes() -> Iterator[None]:
    """:data:`GC_THRESHOLDS` for the block, Python's previous thresholds restored after it."""
    saved = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*saved)


def run_server_app(server_app: ServerApp, grid: BatchedGrid, *, run_id: int = 1) -> None:
    """Call ``server_app`` with ``grid`` after setting the run identity Flower's runtime sets.

    Messages a ServerApp creates read their run id and source node from ``TaskIdentity``
    (``flwr.superlink.runtime.run_serverapp`` sets it the same way,
    :func:`.flower_private.task_identity`); it is restored afterwards, as are the garbage
    collector's thresholds (:func:`fewer_gc_passes`).
    """
    with task_identity(run_id, SUPERLINK_NODE_ID):
        grid.set_run(Run.create_empty(run_id))
        context = Context(
            run_id=run_id,
            node_id=SUPERLINK_NODE_ID,
            node_config={},
            state=RecordDict(),
            run_config={},
        )
        with fewer_gc_passes():
            server_app(grid, context)
