"""The simulation ClientApp's data function bound to a split, as the runner binds a run's (a
test's in-process grid, like Flower's in-process engine, hands clients an empty run config)."""

from simulations.app import client_data_of
from simulations.settings import SimulatedClientsSection


def split_data(partition: str):
    return client_data_of(SimulatedClientsSection(partition=partition))


iid_data = split_data("iid")
