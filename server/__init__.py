"""Pollen's server side: the ServerApp, run settings, checkpoints and the metrics log.

Also the deployment helpers: certificates (``pollen certs``) and a SuperLink's start, status and
stop (``pollen server``).
"""

from server.config import RunConfigError, RunSettings
from server.federation import (
    EXPORT_FILE,
    INT8_MODEL_FILE,
    MODEL_FILE,
    FederationResult,
    run_federation,
)
from server.metrics import MetricsLog, read_metrics

__all__ = [
    "EXPORT_FILE",
    "INT8_MODEL_FILE",
    "MODEL_FILE",
    "FederationResult",
    "MetricsLog",
    "RunConfigError",
    "RunSettings",
    "read_metrics",
    "run_federation",
]
