"""`pollen server start|status|stop` read server.toml and server.json as hostile input: every
wrong type, non-UTF-8 byte or corrupt state is one line naming the file (and key), exit 2,
before any process is started or signalled."""

import json
import os

import pytest
from typer.testing import CliRunner

from pollen.cli import app

INSECURE = "[superlink]\ninsecure = true\nnode-auth = false\n"


def _server(*args):
    result = CliRunner().invoke(app, ["server", *args])
    return result, result.output.strip().splitlines()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("run = 5\n", "run must be a table ([run]), got 5"),
        ("superlink = 5\n", "superlink must be a table"),
        ("[superlink]\ncerts = 5\n", "[superlink] certs must be a folder path (string), got 5"),
        ("[superlink]\ndatabase = 7\n", "[superlink] database must be a file path"),
        ('[superlink]\nnode-keys = "a string"\n', "[superlink] node-keys must be a list"),
        ("[superlink]\nnode-keys = [1, 2]\n", "[superlink] node-keys must be a list"),
        ('[superlink]\nnode-keys = [""]\n', "[superlink] node-keys must be a list"),
        ("[superlink]\nport = true\n", "[superlink] port must be a int, got True"),
        ("[superlink]\nport = 8000.0\n", "[superlink] port must be a int, got 8000.0"),
        ("[superlink]\nhost = 5\n", "[superlink] host must be a string"),
        ('[superlink]\nnode-auth = "yes"\n', "[superlink] node-auth must be a bool"),
        ("[superlink]\ninsecure = 1\n", "[superlink] insecure must be a bool"),
        ('[superlink]\ncerts = "a\\u0000b"\n', "[superlink] certs holds a NUL character"),
        ("[superlink]\nport = 1979-05-27\n", "[superlink] port must be a int"),
        ("[run]\nseed = true\n", "[run] seed: expected int, got True"),
        ("[run]\nserver-lr = nan\n", "[run] server-lr: must be a finite number"),
        ("[run]\nattack-scale = 1e38\n", "[run] attack-scale: must be in"),
        ("[run]\nnum-server-rounds = [1]\n", "[run] num-server-rounds: expected int"),
        ("x = " + "[" * 5000 + "]" * 5000 + "\n", ""),  # too deep: refused, never a traceback
    ],
)
def test_hostile_server_toml_values_are_one_line_naming_file_and_key(tmp_path, text, says):
    path = tmp_path / "server.toml"
    path.write_text(text)
    result, lines = _server("start", "--config", str(path), "--state-dir", str(tmp_path / "s"))
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("pollen server start: error: "), lines
    assert str(path) in lines[0] and says in lines[0], lines[0]
    assert not (tmp_path / "s").exists()  # nothing was started


def test_a_non_utf8_server_toml_is_named_with_the_byte(tmp_path):
    path = tmp_path / "server.toml"
    path.write_bytes(b'[superlink]\nhost = "caf\xe9"\n')
    result, lines = _server("start", "--config", str(path))
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert f"server config {path} is not UTF-8 text (byte 23 is b'\\xe9')" in lines[0]


def test_a_folder_or_huge_file_as_server_toml_is_refused(tmp_path):
    result, lines = _server("start", "--config", str(tmp_path))
    assert result.exit_code == 2 and "is not a file" in lines[0]
    huge = tmp_path / "huge.toml"
    huge.write_bytes(b"# " + b"x" * (2 << 20) + b"\n")
    result, lines = _server("start", "--config", str(huge))
    assert result.exit_code == 2 and "is larger than" in lines[0]


@pytest.mark.parametrize(
    ("state", "says"),
    [
        (b"{not json", "is not valid JSON"),
        (b"\xff\xfe{}", "is not UTF-8 text"),
        (b"[1, 2]", "is not a JSON object"),
        (b"{}", "has no 'pid'"),
        (b'{"pid": "12345", "address": "127.0.0.1:9"}', "'pid' is '12345'"),
        (b'{"pid": true, "address": "127.0.0.1:9"}', "'pid' is True"),
        (b'{"pid": 1.5, "address": "127.0.0.1:9"}', "'pid' is 1.5"),
        (b'{"pid": 0, "address": "127.0.0.1:9"}', "'pid' 0 is not a SuperLink process id"),
        (b'{"pid": 1, "address": "127.0.0.1:9"}', "'pid' 1 is not a SuperLink process id"),
        (b'{"pid": -1, "address": "127.0.0.1:9"}', "'pid' -1 is not"),
        (b'{"pid": 99999999999, "address": "127.0.0.1:9"}', "is not a SuperLink process id"),
        (b'{"pid": 12345, "address": 5}', "'address' is 5"),
        (b'{"pid": 12345, "address": "a", "nodes": []}', "'nodes' is []"),
        (b'{"pid": 12345, "address": "a", "ca_cert": 3}', "'ca_cert' is 3"),
        (b'{"pid": 12345, "address": "a", "run_id": "7"}', "'run_id' is '7'"),
        (b"[" * 100000 + b"]" * 100000, "is not valid JSON"),
    ],
)
@pytest.mark.parametrize("command", ["status", "stop", "start"])
def test_a_corrupt_server_json_is_one_line_and_signals_nothing(tmp_path, command, state, says):
    (tmp_path / "server.json").write_bytes(state)
    config = tmp_path / "server.toml"
    config.write_text(INSECURE)
    extra = ["--config", str(config), "--app", str(tmp_path)] if command == "start" else []
    result, lines = _server(command, "--state-dir", str(tmp_path), *extra)
    assert result.exit_code == 2, result.output
    error = [line for line in lines if "warning" not in line]
    assert len(error) == 1 and error[0].startswith(f"pollen server {command}: error: "), lines
    assert f"server state {tmp_path / 'server.json'}" in error[0] and says in error[0], error


def test_our_own_pid_in_server_json_is_never_signalled(tmp_path):
    state = {"pid": os.getpid(), "address": "127.0.0.1:9", "ca_cert": "", "nodes": {}}
    (tmp_path / "server.json").write_text(json.dumps(state))
    result, lines = _server("stop", "--state-dir", str(tmp_path))
    assert result.exit_code == 2 and "is not a SuperLink process id" in lines[0]


def test_insecure_in_server_toml_warns_as_the_insecure_flag_does(tmp_path):
    """C3: `insecure = true` in the file prints the --insecure warning, naming its source.
    The app folder has no pyproject.toml, so the start stops right after (nothing starts)."""
    config = tmp_path / "server.toml"
    config.write_text(INSECURE)
    state = ["--state-dir", str(tmp_path / "s"), "--app", str(tmp_path)]
    from_file, file_lines = _server("start", "--config", str(config), *state)
    from_flag, flag_lines = _server("start", "--insecure", *state)
    for result, lines in ((from_file, file_lines), (from_flag, flag_lines)):
        assert result.exit_code == 2 and len(lines) == 2, result.output
        assert "has no pyproject.toml" in lines[1]
    assert flag_lines[0] == "pollen server start: warning: --insecure: updates travel unencrypted"
    assert file_lines[0] == flag_lines[0].replace("--insecure", f"insecure = true in {config}")


def test_run_keys_are_checked_against_the_apps_serverapp(tmp_path):
    """Pollen's own (simulated) App takes partition in [run]; an App registering the
    deployment ServerApp, server.app:app, refuses it in one line naming the key."""
    config = tmp_path / "server.toml"
    config.write_text('[run]\npartition = "iid"\nattack = "bogus"\n')
    args = ["start", "--config", str(config), "--state-dir", str(tmp_path / "s")]
    result, lines = _server(*args)  # --app .: the simulated App checks the value
    assert result.exit_code == 2 and len(lines) == 1 and "[run] attack: must be one of" in lines[0]
    app_dir = tmp_path / "device_app"
    app_dir.mkdir()
    components = '[tool.flwr.app.components]\nserverapp = "server.app:app"\n'
    (app_dir / "pyproject.toml").write_text(components)
    config.write_text('[run]\npartition = "iid"\n')
    result, lines = _server(*args, "--app", str(app_dir))
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "[run] partition: unknown key" in lines[0]
    assert not (tmp_path / "s").exists()  # nothing was started
