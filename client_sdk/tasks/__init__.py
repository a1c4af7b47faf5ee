"""Built-in Tasks, looked up by name.

``digits``; ``synthetic`` / ``synthetic:ALPHA,BETA``; ``tutorial-cnn`` / ``tutorial-cnn:SAMPLES``.
"""

from __future__ import annotations

from client_sdk.task import Task, TaskConfigError
from client_sdk.tasks.digits import digits_task
from client_sdk.tasks.synthetic import synthetic_task
from client_sdk.tasks.tutorial_cnn import tutorial_cnn_task

BUILTIN_TASKS = ("digits", "synthetic", "tutorial-cnn")


def get_task(name: str) -> Task:
    """Resolve a task name such as ``digits``, ``synthetic`` or ``synthetic:0.5,0.5``."""
    base, _, args = name.partition(":")
    if base == "digits" and not args:
        return digits_task()
    if base == "synthetic":
        if not args:
            return synthetic_task()
        try:
            alpha, beta = (float(v) for v in args.split(","))
        except ValueError:
            raise TaskConfigError(
                f"task {name!r}: write synthetic:ALPHA,BETA with two numbers, e.g. synthetic:1,1"
            ) from None
        return synthetic_task(alpha, beta)
    if base == "tutorial-cnn":
        if not args:
            return tutorial_cnn_task()
        if not args.isdigit():
            raise TaskConfigError(
                f"task {name!r}: write tutorial-cnn:SAMPLES with a whole number, e.g. "
                "tutorial-cnn:50"
            )
        return tutorial_cnn_task(int(args))
    raise TaskConfigError(f"unknown task {name!r}; built-in tasks: {', '.join(BUILTIN_TASKS)}")


def natural_partition(name: str) -> bool:
    """Whether the task's data comes already split per client (no partitioner needed)."""
    return name.partition(":")[0] in ("synthetic", "tutorial-cnn")


__all__ = ["BUILTIN_TASKS", "get_task", "natural_partition"]
