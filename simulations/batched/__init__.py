"""Pollen's batched simulation engine: thousands of virtual clients per round behind a Grid."""

from simulations.batched.engine import run_server_app
from simulations.batched.grid import BatchedGrid
from simulations.batched.stats import EngineStats
from simulations.batched.training import NotVectorizable, train_clients

__all__ = ["BatchedGrid", "EngineStats", "NotVectorizable", "run_server_app", "train_clients"]
