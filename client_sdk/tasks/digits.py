"""Built-in task: an MLP on scikit-learn's bundled 8x8 digits (offline, no download).

1,797 images, 10 classes; a fixed stratified 80/20 split gives 1,437 training images that are
partitioned among clients and 360 held out for the server's central evaluation.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from torch import nn

from client_sdk.task import OptimizerSpec, Task
from client_sdk.tasks.pooled import Pool, PooledData

SPLIT_SEED = 42


@lru_cache(maxsize=1)
def load_digits_pool() -> Pool:
    """The digits pool, scaled to [0, 1]; the split is fixed so accuracies compare across runs."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=SPLIT_SEED
    )
    return Pool(x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)


def digits_mlp(hidden: int = 128) -> nn.Module:
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def digits_task() -> Task:
    return Task(
        name="digits",
        model_fn=digits_mlp,
        data=PooledData(load=load_digits_pool),
        optimizer=OptimizerSpec(name="sgd", lr=0.1, momentum=0.9),
        local_epochs=5,
        batch_size=10,
    )
