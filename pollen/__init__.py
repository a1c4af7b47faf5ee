"""Pollen: federated learning on Flower with pruned, quantized clients and compact updates.

``pollen.simulate(task, ...)`` runs a simulation from Python (:mod:`pollen.api`); the ``pollen``
command (:mod:`pollen.cli`) is the same from a shell.
"""

__version__ = "0.1.0"


def simulate(*args, **kwargs):
    """Run a simulation from Python; see :func:`pollen.api.simulate`."""
    from pollen.api import simulate as run

    return run(*args, **kwargs)


def __getattr__(name: str):
    if name == "SettingsError":
        from pollen.api import SettingsError

        return SettingsError
    raise AttributeError(f"module 'pollen' has no attribute {name!r}")


__all__ = ["SettingsError", "simulate"]
