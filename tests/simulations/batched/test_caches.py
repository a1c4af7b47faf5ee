"""The engine's caches: client data made once per node, device batches kept within budget."""

from client_sdk.tasks import get_task
from simulations.app import client_data_of
from simulations.batched.caches import ClientCaches, data_key
from simulations.settings import SimulatedClientsSection
from tests.helpers.batched import CPU
from tests.helpers.batched import round_plan as _plan
from tests.messages import node_context

CONFIG = {"task": "digits", "num-partitions": 4}
simulated_client_data = client_data_of(SimulatedClientsSection(partition="iid"))


def _counting():
    made = []

    def data(context, config):
        made.append(context.node_id)
        return simulated_client_data(context, config)

    return data, made


def test_a_nodes_data_is_made_once_per_data_key():
    data, made = _counting()
    caches = ClientCaches(data, CPU)
    plan = _plan(get_task("digits"), CONFIG)
    context = node_context(1, 4, node_id=11)
    first = caches.client_data(data_key(plan), 11, context, plan)
    assert caches.client_data(data_key(plan), 11, context, plan) is first and made == [11]
    # the split is the run's own (the grid's data function), not a round-config key
    assert data_key(_plan(get_task("digits"), {**CONFIG, "partition": "shards:2"})) == data_key(
        plan
    )
    other = _plan(get_task("digits"), {**CONFIG, "seed": 5})
    assert data_key(other) != data_key(plan)
    caches.client_data(data_key(other), 11, context, other)
    assert made == [11, 11]


def test_device_batches_are_kept_while_they_fit_and_dropped_on_request():
    data, _ = _counting()
    plan = _plan(get_task("digits"), CONFIG)
    clients = [simulated_client_data(node_context(i, 4), plan.config) for i in range(2)]
    caches = ClientCaches(data, CPU, budget_bytes=1 << 30)
    batch = caches.device_batch(plan, [0, 1], clients, channels_last=False)
    assert caches.device_batch(plan, [0, 1], clients, channels_last=False) is batch
    assert caches.batch_bytes == batch.nbytes
    assert caches.device_batch(plan, [1, 0], clients, channels_last=False) is not batch
    caches.drop_batches()
    assert caches.batch_bytes == 0
    assert caches.device_batch(plan, [0, 1], clients, channels_last=False) is not batch

    tight = ClientCaches(data, CPU, budget_bytes=batch.nbytes - 1)
    kept = tight.device_batch(plan, [0, 1], clients, channels_last=False)
    assert tight.device_batch(plan, [0, 1], clients, channels_last=False) is not kept
    assert tight.batch_bytes == 0
