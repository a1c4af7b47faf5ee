"""A user's own Task by reference: module:attr and path/file.py:attr, with one-line errors."""

import subprocess
import sys
import textwrap

import pytest

from client_sdk import Task, TaskConfigError
from client_sdk.tasks import get_task, natural_partition, portable_task_name
from client_sdk.tasks.references import is_reference

TASK_FILE = textwrap.dedent(
    """
    import numpy as np
    from torch import nn
    from client_sdk import OptimizerSpec, Task
    from client_sdk.tasks.pooled import Pool, PooledData

    def _load():
        rng = np.random.default_rng(0)
        x = rng.normal(size=(300, 8)).astype(np.float32)
        y = x[:, :3].argmax(axis=1).astype(np.int64)
        return Pool(x_train=x[60:], y_train=y[60:], x_test=x[:60], y_test=y[:60])

    def make_task():
        return Task(name="{name}", model_fn=lambda: nn.Linear(8, 3), data=PooledData(load=_load),
                    optimizer=OptimizerSpec(lr=0.1))

    task = make_task()
    not_a_task = 42

    def broken():
        raise RuntimeError("no data on this host")
    """
)


@pytest.fixture
def task_dir(tmp_path, monkeypatch):
    (tmp_path / "user_tasks_ref.py").write_text(TASK_FILE.format(name="mine"))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "other.py").write_text(TASK_FILE.format(name="other"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_file_and_module_references_resolve_to_the_users_task(task_dir):
    by_file = get_task("user_tasks_ref.py:task")
    assert isinstance(by_file, Task) and by_file.name == "mine"
    assert get_task("sub/other.py:make_task").name == "other"  # a factory is called
    assert get_task(str(task_dir / "sub" / "other.py") + ":task").name == "other"
    assert get_task("user_tasks_ref:task").name == "mine"  # an importable module
    assert get_task("user_tasks_ref.py:task") is by_file  # loaded once per process
    assert not natural_partition("user_tasks_ref.py:task") and natural_partition("synthetic")
    assert portable_task_name("sub/other.py:task") == f"{task_dir / 'sub' / 'other.py'}:task"
    assert portable_task_name("digits") == "digits"


@pytest.mark.parametrize(
    "ref, words",
    [
        ("missing.py:task", "does not exist"),
        ("user_tasks_ref.py:nope", "has no attribute 'nope'"),
        ("user_tasks_ref.py:not_a_task", "is a int, not a client_sdk.Task"),
        ("user_tasks_ref.py:broken", "broken() failed: RuntimeError: no data on this host"),
        ("no_such_pkg.mod:task", "no module named 'no_such_pkg'"),
        ("digits:7", "unknown task"),
        ("", "non-empty string"),
    ],
)
def test_a_bad_reference_is_one_line_naming_what_is_missing(task_dir, ref, words):
    with pytest.raises(TaskConfigError) as err:
        get_task(ref)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_a_file_that_fails_to_import_names_the_file(task_dir):
    (task_dir / "bad_syntax.py").write_text("def (:\n")
    with pytest.raises(TaskConfigError, match="bad_syntax.py' failed to load: SyntaxError"):
        get_task("bad_syntax.py:task")


def test_builtin_names_are_not_references():
    assert not is_reference("digits") and not is_reference("tutorial-cnn:50")
    assert is_reference("pkg.mod:task") and is_reference("a/b.py:t") and is_reference("t.py:x")


def test_another_process_resolves_the_portable_name(task_dir):
    """A Ray worker starts elsewhere: the absolute file reference still names the Task."""
    name = portable_task_name("user_tasks_ref.py:task")
    code = f"from client_sdk.tasks import get_task; print(get_task({name!r}).name)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True
    )
    assert out.stdout.strip() == "mine"


def test_a_file_that_loads_itself_on_import_is_one_error_not_a_hang(task_dir):
    (task_dir / "loops.py").write_text(
        "from client_sdk.tasks import get_task\ntask = get_task('loops.py:task')\n"
    )
    with pytest.raises(TaskConfigError, match="__name__"):
        get_task("loops.py:task")


def test_float_labels_of_a_cross_entropy_task_stay_labels():
    import numpy as np
    import torch.nn.functional as F

    from client_sdk.training import targets_tensor

    task = get_task("digits")
    assert targets_tensor(np.array([1.0, 2.0]), task).dtype.is_floating_point is False
    regression = Task(name="r", model_fn=task.model_fn, data=task.data, loss_fn=F.mse_loss)
    assert targets_tensor(np.array([1.5, 2.0]), regression).dtype.is_floating_point
