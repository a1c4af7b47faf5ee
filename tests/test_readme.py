"""The README's SDK example runs and its ClientApp trains and uploads a wire payload."""

import re
from pathlib import Path

from flwr.app import Array, ArrayRecord, ConfigRecord, MessageType, RecordDict

from client_sdk import model_arrays, tensor_specs
from tests.messages import message, node_context
from wire import PAYLOAD_FIELD, UPDATE_RECORD_KEY, decode_update

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_sdk_example_builds_a_working_client_app():
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    assert len(code.strip().splitlines()) <= 20
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own documentation
    task, app = scope["task"], scope["app"]
    weights = model_arrays(task.build_model(seed=0))
    request = message(
        RecordDict(
            {
                "arrays": ArrayRecord({k: Array(v) for k, v in weights.items()}),
                "config": ConfigRecord({"server-round": 1}),
            }
        ),
        src=1,
        dst=7,
        message_type=MessageType.TRAIN,
    )
    reply = app(request, node_context(0, 1))
    payload = reply.content.config_records[UPDATE_RECORD_KEY][PAYLOAD_FIELD]
    update = decode_update(payload, expected=tensor_specs(weights), expected_round=1)
    assert reply.content.metric_records["metrics"]["num-examples"] == 500
    assert any(abs(t).max() > 0 for t in update.tensors)
    x, y = task.data.central_test(num_partitions=1, seed=0)
    assert len(x) == len(y) == 100


def test_readme_simulate_flags_exist():
    """Every flag the "Run simulations" section names is a real `pollen simulate` flag."""
    from typer.testing import CliRunner

    from pollen.cli import app

    help_text = CliRunner().invoke(app, ["simulate", "--help"], env={"COLUMNS": "200"}).output
    section = README.split("## Run simulations", 1)[1].split("\n## ", 1)[0]
    for flag in re.findall(r"`(--[a-z-]+)", section):
        assert flag in help_text or flag.startswith(("--stream", "--format", "--run-config")), flag


def _section(title: str) -> str:
    return README.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_bring_your_own_flags_and_python_api_run(tmp_path, monkeypatch):
    """Every flag the section names exists, and its Python example runs as written."""
    from typer.testing import CliRunner

    from pollen.cli import app

    section = _section("Bring your own model and data")
    help_text = CliRunner().invoke(app, ["simulate", "--help"], env={"COLUMNS": "200"}).output
    for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", section.split("```python")[0]):
        assert flag in help_text or flag == "--app", flag
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    code = code.replace('out="runs/api"', f'out="{tmp_path}"')
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own documentation
    assert scope["summary"]["rounds"] == 3 and scope["summary"]["primary_metric"] == "mse"
