import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from client_sdk import ClientData
from client_sdk.tasks.digits import digits_task
from client_sdk.training import LocalSchedule, train_local
from simulations.batched.schedule import batch_schedule


def one_by_one(sizes, seeds, epochs, batch):
    """The layout spelled out client by client, epoch by epoch."""
    per_epoch = -(-sizes // batch)
    steps = per_epoch * epochs
    index = np.zeros((int(steps.max()), len(sizes), batch), dtype=np.int64)
    weight = np.zeros(index.shape, dtype=np.float32)
    for k, (n, seed) in enumerate(zip(sizes.tolist(), seeds, strict=True)):
        generator = torch.Generator().manual_seed(seed)
        padded = per_epoch[k] * batch
        for epoch in range(epochs):
            order = np.zeros(padded, dtype=np.int64)
            order[:n] = torch.randperm(n, generator=generator).numpy()
            rows = slice(epoch * per_epoch[k], (epoch + 1) * per_epoch[k])
            index[rows, k] = order.reshape(-1, batch)
            weight[rows, k] = (np.arange(padded) < n).reshape(-1, batch)
    return index, weight, steps


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 200), min_size=1, max_size=12),
    epochs=st.integers(1, 3),
    batch=st.integers(1, 16),
    seed=st.integers(0, 2**62),
)
def test_whole_array_layout_equals_the_client_by_client_one(sizes, epochs, batch, seed):
    sizes = np.asarray(sizes)
    seeds = [seed + k for k in range(len(sizes))]
    expected = one_by_one(sizes, seeds, epochs, batch)
    for got, want in zip(batch_schedule(sizes, seeds, epochs, batch), expected, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_a_clients_minibatches_are_the_ones_train_local_draws():
    """train_local sees the same samples in the same order, the short last batch included."""
    n, batch, epochs, seed = 23, 5, 2, 7
    seen: list[list[int]] = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            seen.append(x[:, 0].long().tolist())
            return x[:, :2] * self.w

    x = np.repeat(np.arange(n, dtype=np.float32)[:, None], 2, axis=1)
    y = np.zeros(n, dtype=np.int64)
    data = ClientData(x_train=x, y_train=y, x_test=x, y_test=y)
    schedule = LocalSchedule(epochs=epochs, batch_size=batch, lr=0.1)
    train_local(Recorder(), digits_task(), data, schedule, torch.Generator().manual_seed(seed))
    index, weight, steps = batch_schedule(np.array([n]), [seed], epochs, batch)
    drawn = [row[w > 0].tolist() for row, w in zip(index[:, 0], weight[:, 0], strict=True)]
    assert steps.tolist() == [len(seen)] and drawn == seen
