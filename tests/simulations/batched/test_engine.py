import gc

import pytest
from flwr.serverapp import ServerApp
from flwr.supercore.task_identity import TaskIdentity

from client_sdk.tasks import get_task
from simulations.app import simulated_client_data
from simulations.batched import BatchedGrid, run_server_app
from simulations.batched.engine import GC_THRESHOLDS


def _grid() -> BatchedGrid:
    return BatchedGrid(task=get_task, data=simulated_client_data, num_nodes=3, seed=1)


def test_the_server_app_runs_with_the_engines_identity_and_gc_thresholds_then_both_return():
    seen = {}
    app = ServerApp()

    @app.main()
    def main(grid, context):
        seen["thresholds"] = gc.get_threshold()
        seen["run"] = (TaskIdentity.run_id, context.run_id, grid.run.run_id)
        seen["nodes"] = len(list(grid.get_node_ids()))

    before, identity = gc.get_threshold(), TaskIdentity._run_id
    run_server_app(app, _grid(), run_id=7)
    assert seen == {"thresholds": GC_THRESHOLDS, "run": (7, 7, 7), "nodes": 3}
    assert gc.get_threshold() == before and TaskIdentity._run_id == identity


def test_a_failing_server_app_still_restores_the_thresholds():
    app = ServerApp()

    @app.main()
    def main(grid, context):
        raise RuntimeError("server app failed")

    before = gc.get_threshold()
    with pytest.raises(RuntimeError, match="server app failed"):
        run_server_app(app, _grid())
    assert gc.get_threshold() == before
