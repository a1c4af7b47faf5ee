"""Pollen's client SDK: describe a Task once, get a Flower ClientApp that trains it.

One client round (plan -> local update -> encode -> reply) is :mod:`client_sdk.client_round`,
the public seam Pollen's simulators share with the ClientApp.

Depends on :mod:`wire`, torch and Flower's client side; never on Ray.
"""

from client_sdk.app import build_client_app, client_seed
from client_sdk.client_round import (
    DataProvider,
    RoundPlan,
    TrainStats,
    UpdateHook,
    local_update,
    partition_id_of,
    plan_round,
    train_round,
    upload_reply,
)
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
    "RoundPlan",
    "Task",
    "TaskConfigError",
    "TorchDatasetData",
    "TrainStats",
    "UpdateHook",
    "build_client_app",
    "client_seed",
    "evaluate_model",
    "from_arrays",
    "load_arrays",
    "local_update",
    "model_arrays",
    "partition_id_of",
    "plan_round",
    "tensor_specs",
    "train_local",
    "train_round",
    "upload_reply",
]
