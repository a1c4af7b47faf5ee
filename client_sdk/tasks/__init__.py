"""Tasks by name: the built-in examples, or a user's own Task by reference.

Built-in: ``digits``; ``synthetic`` / ``synthetic:ALPHA,BETA``; ``tutorial-cnn`` /
``tutorial-cnn:SAMPLES``. A user's own: ``package.module:attr`` or ``path/to/file.py:attr``
(:mod:`client_sdk.tasks.references`). Every runtime resolves a task name through
:func:`get_task`, the one resolver.
"""

from __future__ import annotations

from client_sdk.task import Task, TaskConfigError, has_natural_partition
from client_sdk.tasks.digits import digits_task
from client_sdk.tasks.references import absolute_reference, is_reference, load_task
from client_sdk.tasks.synthetic import synthetic_task
from client_sdk.tasks.tutorial_cnn import tutorial_cnn_task

BUILTIN_TASKS = ("digits", "synthetic", "tutorial-cnn")


def get_task(name: str) -> Task:
    """Resolve a task name such as ``digits`` or ``synthetic:0.5,0.5``, or a reference such
    as ``mypkg.tasks:task`` / ``path/to/task.py:make_task`` to a user's own Task."""
    if not isinstance(name, str) or not name:
        raise TaskConfigError(f"a task name must be a non-empty string, got {name!r}")
    base, _, args = name.partition(":")
    if base not in BUILTIN_TASKS and is_reference(name):
        return load_task(name)
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
        samples, _, sizes = args.partition(":")
        if not samples.isdigit():
            raise TaskConfigError(
                f"task {name!r}: write tutorial-cnn:SAMPLES with a whole number, e.g. "
                "tutorial-cnn:50 (or tutorial-cnn:50:dirichlet:0.3 for skewed client sizes)"
            )
        return tutorial_cnn_task(int(samples), sizes)
    raise TaskConfigError(
        f"unknown task {name!r}; built-in tasks: {', '.join(BUILTIN_TASKS)}, or your own as "
        "package.module:attr or path/to/file.py:attr"
    )


def natural_partition(name: str) -> bool:
    """Whether the task's data comes already split per client (no partitioner needed)."""
    return has_natural_partition(get_task(name).data)


def portable_task_name(name: str) -> str:
    """``name`` as another process should be given it: a task file's path made absolute."""
    return absolute_reference(name) if is_reference(name) else name


__all__ = ["BUILTIN_TASKS", "get_task", "natural_partition", "portable_task_name"]
