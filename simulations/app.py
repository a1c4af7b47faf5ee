"""The simulated Flower App: its ClientApp (the SDK's, fed a simulated partition of a Task) and
its ServerApp (the server's, reading the simulation's wider run config).

In simulation Flower sets ``partition-id``/``num-partitions`` in each node's config; in a test
deployment pass them with ``flower-supernode --node-config "partition-id=I num-partitions=N"``.
The task and seed come from the server's round config; how a pooled dataset is split
(``partition``) and a simulated attack or dropout (:mod:`simulations.attacks`) from this run's
own run config (:func:`simulations.settings.simulated_clients`), never from the round config: the
deployment ServerApp does not know them. In-process engines, whose run config is empty, bind them
with :func:`client_data_of`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from flwr.app import ConfigRecord, Context

from client_sdk import ClientData, TaskConfigError, build_client_app, partition_id_of
from client_sdk.tasks import get_task
from server.app import build_server_app
from server.schema import settings_of
from simulations.attacks import simulated_attack
from simulations.partitioners import parse_partition
from simulations.settings import SimulatedClientsSection, SimulationRunSettings, simulated_clients
from wire import keys

MIN_SAMPLES_PER_CLIENT = 2


def simulated_client_data(
    context: Context, config: ConfigRecord, simulated: SimulatedClientsSection | None = None
) -> ClientData:
    """This node's share of the Task's data: the task and seed as the server's config says,
    split as ``simulated`` says (default: this node's run config)."""
    pid = partition_id_of(context)
    num = context.node_config.get(keys.NUM_PARTITIONS, config.get(keys.NUM_PARTITIONS, 0))
    if pid < 0 or not isinstance(num, int) or num < 1:
        raise TaskConfigError(
            "this node has no partition-id/num-partitions; start it with "
            '--node-config "partition-id=I num-partitions=N"'
        )
    task = get_task(str(config.get(keys.TASK, "digits")))
    split = (simulated if simulated is not None else simulated_clients(context)).partition
    partitioner = parse_partition(split, min_samples=MIN_SAMPLES_PER_CLIENT)
    return task.data.client_data(
        pid, num, partitioner=partitioner, seed=int(config.get(keys.SEED, 0))
    )


def client_data_of(
    simulated: SimulatedClientsSection,
) -> Callable[[Context, ConfigRecord], ClientData]:
    """The data function of a run whose simulated clients are ``simulated`` (for in-process
    engines; a :class:`SimulationRunSettings` is one: ``client_data_of(run)``)."""
    own = {e.name: getattr(simulated, e.name) for e in settings_of(SimulatedClientsSection)}
    return partial(simulated_client_data, simulated=SimulatedClientsSection(**own))


clientapp = build_client_app(
    get_task, simulated_client_data, update_hook=simulated_attack, allow_seeded_noise=True
)
serverapp = build_server_app(schema=SimulationRunSettings)
