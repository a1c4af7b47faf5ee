"""``pollen new NAME``: a ready Flower App around the user's own Task (like ``flwr new``).

It writes ``NAME/pyproject.toml`` (``[tool.flwr.app]`` pointing at Pollen's ServerApp and the
SDK ClientApp, ``task = "task:task"`` in the run config), ``NAME/task.py`` (a model, data and
optimizer to edit: a small CNN on scikit-learn's bundled digits, split by the run's
partitioner through :func:`client_sdk.from_arrays`) and ``NAME/README.md``. As generated it
runs with ``pollen simulate --task NAME/task.py:task`` and with ``flwr run .`` in ``NAME``.
"""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import typer

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "0.1.0"
description = "A federated learning app on Pollen: edit task.py"
requires-python = ">=3.11"
dependencies = ["pollen-fl"]

[tool.setuptools]
py-modules = ["task"]

[tool.flwr.app]
publisher = "{publisher}"

[tool.flwr.app.components]
# Pollen's ServerApp, and the SDK ClientApp fed with a simulated partition of your Task's data
# (with your own device ClientApp, use the deployment ServerApp "server.app:app" and drop the
# simulated clients' keys, partition to dropout-rate, from the run config)
serverapp = "simulations.app:serverapp"
clientapp = "simulations.app:clientapp"

# The run config: Pollen's settings with their defaults (override with `flwr run . --run-config`)
[tool.flwr.app.config]
{config}"""

# Where the generated app differs from Pollen's defaults.
APP_CONFIG = {"task": "task:task", "min-available-nodes": 2}

TASK = '''\
"""The learning problem of this app: model, data and local training, described once.

Pollen runs this Task on devices (the SDK ClientApp), in Flower's simulation engine and in its
batched engine. Edit the three parts below; keep `task` (or point the run config's `task` at
another name in this file).
"""

import numpy as np
from sklearn.datasets import load_digits
from torch import nn

from client_sdk import OptimizerSpec, Task, from_arrays


def model() -> nn.Module:
    """A small CNN for 8x8 grey images, 10 classes."""
    return nn.Sequential(
        nn.Conv2d(1, 8, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
    )


def data():
    """Your arrays: x float32 [n, ...] as the model takes them, y int64 labels [n].

    The run's partitioner (iid, dirichlet:ALPHA, shards:K) splits them among the clients;
    20% are held out as the server's test set.
    """
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    return from_arrays(x, y, test_fraction=0.2, split_seed=0)


task = Task(
    name="{name}",
    model_fn=model,
    data=data(),
    optimizer=OptimizerSpec(name="sgd", lr=0.1, momentum=0.9),
    local_epochs=2,
    batch_size=32,
)
'''

README = """\
# {name}

A federated learning app on Pollen (built on [Flower](https://flower.ai)): your Task is in
`task.py`.

```bash
# simulate 20 clients on this machine (Pollen's batched engine or Flower's)
pollen simulate --task task.py:task --clients 20 --rounds 5 --partition dirichlet:0.5
pollen simulate --task task.py:task --clients 20 --rounds 5 --engine flower

# the same app through Flower's runtime (a local simulation, or a SuperLink you deploy)
flwr run .
```

On real devices, start each SuperNode with `--node-config "partition-id=I num-partitions=N"`
(the simulated partition), or build your own ClientApp around this Task with
`client_sdk.build_client_app(task, data=...)` and point `clientapp` in pyproject.toml at it.
"""

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


def run_config_defaults() -> dict[str, object]:
    """Every run-config key with its default, derived from the simulated App's settings
    (:class:`simulations.settings.SimulationRunSettings`)."""
    from simulations.settings import SimulationRunSettings

    values = {f.name.replace("_", "-"): f.default for f in fields(SimulationRunSettings)}
    return {**values, **APP_CONFIG}


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


class ProjectError(ValueError):
    """The project cannot be written (a bad name, or the folder exists)."""


def write_project(name: str, parent: Path, *, publisher: str = "me") -> Path:
    """Write the app ``parent/name``; refuse an existing folder or a name Flower cannot use."""
    if not _NAME.match(name):
        raise ProjectError(
            f"{name!r} is not a project name: start with a letter, then letters, digits, - or _"
        )
    root = parent / name
    if root.exists():
        raise ProjectError(f"{root} already exists; pick another name or remove it")
    root.mkdir(parents=True)
    config = "".join(f"{key} = {_toml(value)}\n" for key, value in run_config_defaults().items())
    (root / "pyproject.toml").write_text(
        PYPROJECT.format(name=name, publisher=publisher, config=config)
    )
    (root / "task.py").write_text(TASK.replace("{name}", name))
    (root / "README.md").write_text(README.format(name=name))
    return root


def new(
    name: str = typer.Argument(..., help="The app's folder and package name."),
    parent: Path = typer.Option(Path("."), "--dir", help="Where to create the folder."),
) -> None:
    """Create a Flower App for your own Task (edit its task.py), ready for `pollen simulate`
    and `flwr run`."""
    try:
        root = write_project(name, parent)
    except (ProjectError, OSError) as err:
        typer.echo(f"pollen new: error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {root}/pyproject.toml, task.py, README.md")
    typer.echo(f"next: cd {root} && pollen simulate --task task.py:task --clients 20 --rounds 5")
