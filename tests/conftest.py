"""Shared fixtures, and what keeps `pytest -n N` (pytest-xdist) workers out of each other's way.

Each worker gets an equal share of the CPU cores for torch (``OMP_NUM_THREADS``, set before torch
is imported, reaches the processes a test starts too: `pollen` commands, SuperNodes and their
ClientApps), and its own ``POLLEN_HOME`` so runs without an ``out-dir`` land in the session's
temporary folder rather than ``~/.pollen``. Real Flower processes take free ports from the OS
(``tests/e2e/flower_deployment.free_port``) and folders under ``tmp_path``.
"""

import os

import pytest
from flwr.supercore.task_identity import TaskIdentity

WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, (os.cpu_count() or 1) // WORKERS)
if WORKERS > 1:
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, str(THREADS))


def pytest_collection_modifyitems(config, items):
    """Under -n, the tests that start real Flower processes (the longest, minutes each) go out
    first, so that none of them starts last and runs alone while the other worker idles."""
    if WORKERS > 1:
        items.sort(key=lambda item: item.get_closest_marker("e2e") is None)


@pytest.fixture(autouse=True, scope="session")
def worker_share(tmp_path_factory):
    """Torch threads and POLLEN_HOME for this worker (the whole session when run without -n)."""
    import torch

    saved_threads, saved_home = torch.get_num_threads(), os.environ.get("POLLEN_HOME")
    if WORKERS > 1:
        torch.set_num_threads(THREADS)
    os.environ["POLLEN_HOME"] = str(tmp_path_factory.mktemp("pollen-home"))
    yield
    torch.set_num_threads(saved_threads)
    if saved_home is None:
        os.environ.pop("POLLEN_HOME", None)
    else:
        os.environ["POLLEN_HOME"] = saved_home


@pytest.fixture(autouse=True)
def serverapp_identity():
    """Server-side Messages read the process's run/node identity, as inside a ServerApp."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
