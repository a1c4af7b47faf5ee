"""Run a Flower ServerApp on the batched engine, in this process, as Flower's runtime would."""

from __future__ import annotations

from flwr.app import Context, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from simulations.batched.grid import BatchedGrid


def run_server_app(server_app: ServerApp, grid: BatchedGrid, *, run_id: int = 1) -> None:
    """Call ``server_app`` with ``grid`` after setting the run identity Flower's runtime sets.

    Messages a ServerApp creates read their run id and source node from ``TaskIdentity``
    (``flwr.superlink.runtime.run_serverapp`` sets it the same way); it is restored afterwards.
    """
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SUPERLINK_NODE_ID
    try:
        grid.set_run(Run.create_empty(run_id))
        context = Context(
            run_id=run_id,
            node_id=SUPERLINK_NODE_ID,
            node_config={},
            state=RecordDict(),
            run_config={},
        )
        server_app(grid, context)
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
