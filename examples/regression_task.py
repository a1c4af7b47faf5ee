"""Example: a regression Task (MSE loss; mse and mae reported, mse the primary metric).

Generated data, nothing downloaded: y = x . w + 0.5 sin(x_0) + noise for 16 features. The
run's partitioner splits the clients by the target's deciles (``from_arrays`` does that for float
targets), so dirichlet:ALPHA gives clients skewed target ranges.

    pollen simulate --task examples/regression_task.py:task --clients 20 --rounds 10 --partition iid
"""

import numpy as np
import torch.nn.functional as F
from torch import nn

from client_sdk import OptimizerSpec, Task, from_arrays
from client_sdk.metrics import regression

FEATURES = 16


def model() -> nn.Module:
    return nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Linear(32, 1), nn.Flatten(0))


def data(n: int = 4000, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    w = rng.normal(size=FEATURES).astype(np.float32) / np.sqrt(FEATURES)
    y = (x @ w + 0.5 * np.sin(x[:, 0]) + 0.1 * rng.normal(size=n)).astype(np.float32)
    return from_arrays(x, y, test_fraction=0.2, split_seed=seed)


task = Task(
    name="regression",
    model_fn=model,
    data=data(),
    loss_fn=F.mse_loss,
    metrics_fn=regression,
    primary_metric="mse",
    higher_is_better=False,
    optimizer=OptimizerSpec(name="sgd", lr=0.05),
    local_epochs=1,
    batch_size=32,
)
