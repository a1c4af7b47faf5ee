"""A chunk's data back to back: no client padded, every sample where ``starts`` says."""

import numpy as np
import torch

from client_sdk import ClientData
from client_sdk.tasks import get_task
from simulations.batched.training import stack_clients
from tests.helpers.batched import CPU
from tests.helpers.batched import client_data as _clients


def _sized(task, sizes):
    """Clients of ``task`` cut to ``sizes`` from the helper's clients."""
    base = _clients(task, k=len(sizes))
    return [
        ClientData(d.x_train[:n], d.y_train[:n], d.x_test, d.y_test)
        for d, n in zip(base, sizes, strict=True)
    ]


def test_each_clients_samples_sit_at_its_start_unpadded():
    data = _sized(get_task("tutorial-cnn:12"), [12, 1, 7])
    for channels_last in (False, True):
        batch = stack_clients(data, CPU, channels_last=channels_last)
        assert batch.sizes.tolist() == [12, 1, 7] and batch.starts.tolist() == [0, 12, 13]
        assert batch.x.shape == (20, 3, 32, 32) and batch.images
        assert batch.nbytes == 20 * 3 * 32 * 32 * 4 + 20 * 8  # the real samples only
        for k, d in enumerate(data):
            rows = slice(int(batch.starts[k]), int(batch.starts[k] + batch.sizes[k]))
            assert torch.equal(batch.x[rows], torch.from_numpy(d.x_train.astype(np.float32)))
            assert torch.equal(batch.y[rows], torch.from_numpy(d.y_train.astype(np.int64)))
    head = batch.head(2)
    assert head.sizes.tolist() == [12, 1] and torch.equal(head.x, batch.x[:13])


def test_flat_features_are_not_images():
    batch = stack_clients(_sized(get_task("digits"), [5, 3]), CPU)
    assert batch.x.shape == (8, 64) and not batch.images
