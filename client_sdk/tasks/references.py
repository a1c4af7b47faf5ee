"""A user's own Task, named by reference: ``package.module:attr`` or ``path/to/file.py:attr``.

``attr`` is a :class:`~client_sdk.task.Task` or a zero-argument factory returning one (a dotted
``attr`` walks attributes, e.g. ``tasks:REGISTRY.mnist``). A file reference is loaded once per
process under a module name derived from its absolute path, relative paths are tried against
the working directory and then against each ``sys.path`` entry (a Flower App's directory is
on ``sys.path`` in every runtime, so ``task.py:task`` written in its pyproject resolves in the
ServerApp, in Ray workers and on SuperNodes alike). Every failure is one
:class:`~client_sdk.task.TaskConfigError` line naming what is missing.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import threading
from pathlib import Path
from typing import Any

from client_sdk.task import Task, TaskConfigError

_LOCK = threading.RLock()
_LOADING: set[str] = set()  # references being loaded now (a nested load of one is a loop)
_LOADED: dict[str, Task] = {}  # reference -> Task: a factory runs once per process


def is_reference(name: str) -> bool:
    """Whether ``name`` names a user's Task (``module:attr`` or ``file.py:attr``)."""
    target, sep, attr = name.rpartition(":")
    return bool(sep and target and attr) and (
        target.endswith(".py") or "/" in target or "\\" in target or _is_module_path(target)
    )


def _is_module_path(target: str) -> bool:
    return all(part.isidentifier() for part in target.split("."))


def load_task(reference: str) -> Task:
    """The Task ``reference`` names (cached: the same object for the same reference)."""
    with _LOCK:
        if reference not in _LOADED:
            if reference in _LOADING:
                raise TaskConfigError(
                    f"task {reference!r} loads itself while loading (a script that calls "
                    "pollen on import: guard it with `if __name__ == '__main__':`)"
                )
            _LOADING.add(reference)
            try:
                _LOADED[reference] = _load(reference)
            finally:
                _LOADING.discard(reference)
        return _LOADED[reference]


def absolute_reference(reference: str) -> str:
    """``reference`` with a file path made absolute (against the working directory), so that
    another process started elsewhere (a Ray worker) finds the same file."""
    target, _, attr = reference.rpartition(":")
    if not _is_file_target(target):
        return reference
    path = _find_file(target)
    return f"{path}:{attr}"


def _is_file_target(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def _load(reference: str) -> Task:
    target, _, attr = reference.rpartition(":")
    module = _import_file(target) if _is_file_target(target) else _import_module(target)
    value: Any = module
    for part in attr.split("."):
        if not hasattr(value, part):
            raise TaskConfigError(
                f"task {reference!r}: {target!r} has no attribute {attr!r}; "
                "name a Task or a function returning one"
            )
        value = getattr(value, part)
    if callable(value) and not isinstance(value, Task):
        try:
            value = value()
        except TaskConfigError:
            raise
        except Exception as err:  # noqa: BLE001 - the user's factory: say which and why
            raise TaskConfigError(
                f"task {reference!r}: calling {attr}() failed: {type(err).__name__}: {err}"
            ) from None
    if not isinstance(value, Task):
        raise TaskConfigError(
            f"task {reference!r}: {attr} is a {type(value).__name__}, not a client_sdk.Task "
            "(or a zero-argument function returning one)"
        )
    return value


def _import_module(target: str):
    cwd = str(Path.cwd())
    if cwd not in sys.path and "" not in sys.path:  # as `python -m` would (uvicorn does too)
        sys.path.append(cwd)
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as err:
        if err.name and target.startswith(err.name):
            raise TaskConfigError(
                f"task {target!r}: no module named {err.name!r} (is it installed or on "
                "PYTHONPATH? a file can be named as path/to/file.py:attr)"
            ) from None
        raise TaskConfigError(f"task {target!r}: importing it failed: {err}") from None
    except Exception as err:  # noqa: BLE001 - the user's module: say which and why
        raise TaskConfigError(
            f"task {target!r}: importing it failed: {type(err).__name__}: {err}"
        ) from None


def _find_file(target: str) -> Path:
    path = Path(target).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path]
    if not path.is_absolute():
        candidates += [Path(entry or ".") / path for entry in sys.path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise TaskConfigError(f"task file {target!r} does not exist (looked in {Path.cwd()})")


def _import_file(target: str):
    path = _find_file(target)
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    name = f"pollen_user_task_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TaskConfigError(f"task file {target!r} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # the file's own directory on the path, so it can import its neighbours
    folder = str(path.parent)
    if folder not in sys.path:  # appended: a neighbour never shadows an installed package
        sys.path.append(folder)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - the user's file: say which and why
        del sys.modules[name]
        raise TaskConfigError(
            f"task file {target!r} failed to load: {type(err).__name__}: {err}"
        ) from None
    return module


IN_PROCESS = "__pollen_in_process__"  # the module part of a Task known to this process only


def reference_to(task: Task) -> str:
    """A name :func:`load_task` resolves to ``task`` (a Task object from Python code).

    Where the Task is an attribute of an importable module it is ``module:attr`` (a task file's
    path), which other processes (Ray workers) resolve too; otherwise (a script's own Task, or
    one made in a function) it is an in-process name only this process knows (the batched
    engine runs it; Flower's engine would re-run a script in every worker).
    """
    found = _module_attribute(task)
    with _LOCK:
        if found is None:  # named after the Task, so a resumed run in a new process matches
            stem = "".join(c if c.isalnum() else "_" for c in task.name) or "task"
            found, n = f"{IN_PROCESS}:{stem}", 1
            while _LOADED.get(found, task) is not task:
                n += 1
                found = f"{IN_PROCESS}:{stem}_{n}"
        _LOADED[found] = task
    return found


def _module_attribute(task: Task) -> str | None:
    for name, module in list(sys.modules.items()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        attr = next((a for a, v in list(namespace.items()) if v is task), None)
        if attr is None:
            continue
        if name in ("__main__", "__mp_main__"):  # importing a script elsewhere runs it again
            continue
        path = getattr(module, "__file__", None)
        if name.startswith("pollen_user_task_"):
            if path:
                return f"{Path(path).resolve()}:{attr}"
            continue
        return f"{name}:{attr}"
    return None
