"""Pollen's client SDK: describe a Task once, get a Flower ClientApp that trains it.

Depends on :mod:`wire`, torch and Flower's client side; never on Ray.
"""

from client_sdk.app import DataProvider, build_client_app, client_seed, partition_id_of
from client_sdk.data_sources import HuggingFaceData, TorchDatasetData, from_arrays
from client_sdk.task import (
    ClientData,
    FederatedData,
    OptimizerSpec,
    Partitioner,
    Task,
    TaskConfigError,
)
from client_sdk.training import LocalSchedule, evaluate_model, train_local
from client_sdk.weights import load_arrays, model_arrays, tensor_specs

__all__ = [
    "ClientData",
    "DataProvider",
    "FederatedData",
    "HuggingFaceData",
    "LocalSchedule",
    "OptimizerSpec",
    "Partitioner",
    "Task",
    "TaskConfigError",
    "TorchDatasetData",
    "build_client_app",
    "client_seed",
    "evaluate_model",
    "from_arrays",
    "load_arrays",
    "model_arrays",
    "partition_id_of",
    "tensor_specs",
    "train_local",
]
