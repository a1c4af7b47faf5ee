"""The Flower App's ClientApp: the SDK's ClientApp fed with a simulated partition of a Task.

In simulation Flower sets ``partition-id``/``num-partitions`` in each node's config; in a test
deployment pass them with ``flower-supernode --node-config "partition-id=0 num-partitions=3"``.
How a pooled dataset is split (``partition``) and the seed come from the server's round config;
a simulated attack or dropout (:mod:`simulations.attacks`) from this run's own run config.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context

from client_sdk import ClientData, TaskConfigError, build_client_app, partition_id_of
from client_sdk.tasks import get_task
from simulations.attacks import simulated_attack
from simulations.partitioners import parse_partition
from wire import keys

MIN_SAMPLES_PER_CLIENT = 2


def simulated_client_data(context: Context, config: ConfigRecord) -> ClientData:
    """This node's share of the Task's data, as the server's config describes it."""
    pid = partition_id_of(context)
    num = context.node_config.get(keys.NUM_PARTITIONS, config.get(keys.NUM_PARTITIONS, 0))
    if pid < 0 or not isinstance(num, int) or num < 1:
        raise TaskConfigError(
            "this node has no partition-id/num-partitions; start it with "
            '--node-config "partition-id=I num-partitions=N"'
        )
    task = get_task(str(config.get(keys.TASK, "digits")))
    partitioner = parse_partition(
        str(config.get(keys.PARTITION, "iid")), min_samples=MIN_SAMPLES_PER_CLIENT
    )
    return task.data.client_data(
        pid, num, partitioner=partitioner, seed=int(config.get(keys.SEED, 0))
    )


clientapp = build_client_app(get_task, simulated_client_data, update_hook=simulated_attack)
