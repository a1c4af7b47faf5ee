"""Clear errors before anything starts: config, certificates, keys, ports, reachability."""

import socket

import pytest
from typer.testing import CliRunner

from pollen.cli import app
from server.certs import create_certificates
from server.deploy_config import DeploymentError, ServerConfig, load_server_config
from server.launch import (
    _superlink_args,
    check_port_free,
    check_reachable,
    local_address,
    run_config_text,
    start_server,
    supernode_args,
)


def test_config_file_paths_are_read_against_its_folder_and_flags_override(tmp_path):
    (tmp_path / "s.toml").write_text(
        '[superlink]\nport = 9100\ncerts = "c"\nnode-keys = ["c/node-0.pub"]\n'
        "[run]\nnum-server-rounds = 4\n"
    )
    config = load_server_config(tmp_path / "s.toml", port=9200)
    assert config.port == 9200 and config.certs == tmp_path / "c"
    assert config.node_keys == (tmp_path / "c" / "node-0.pub",)
    assert config.run_config == {"num-server-rounds": 4}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[superlink]\nprot = 1\n", "unknown key"),
        ("[servers]\n", "unknown table"),
        ("[superlink\n", "not valid TOML"),
        ('[superlink]\nport = "80"\n', "port must be a int"),
    ],
)
def test_bad_config_files_say_what_is_wrong(tmp_path, text, match):
    (tmp_path / "s.toml").write_text(text)
    with pytest.raises(DeploymentError, match=match):
        load_server_config(tmp_path / "s.toml")


def test_missing_certificates_and_keys_point_to_pollen_certs(tmp_path):
    with pytest.raises(DeploymentError, match="pollen certs --out"):
        ServerConfig(certs=tmp_path / "none", node_keys=(tmp_path / "k.pub",)).check()
    paths = create_certificates(tmp_path / "certs", nodes=1)
    with pytest.raises(DeploymentError, match="no node-keys"):
        ServerConfig(certs=tmp_path / "certs").check()
    with pytest.raises(DeploymentError, match="missing SuperNode public key"):
        ServerConfig(certs=tmp_path / "certs", node_keys=(tmp_path / "other.pub",)).check()
    with pytest.raises(DeploymentError, match="needs TLS"):
        ServerConfig(insecure=True).check()
    with pytest.raises(DeploymentError, match=r"\[run\] num-server-round"):
        ServerConfig(
            certs=tmp_path / "certs", node_keys=(paths.node_keys[0][1],),
            run_config={"num-server-round": 3},
        ).check()  # fmt: skip
    ServerConfig(certs=tmp_path / "certs", node_keys=(paths.node_keys[0][1],)).check()


def test_busy_ports_and_unreachable_superlinks_are_named():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(DeploymentError, match=f"port {port} on 127.0.0.1 is in use"):
            check_port_free("127.0.0.1", port)
        check_reachable(f"127.0.0.1:{port}")
    with pytest.raises(DeploymentError, match="cannot reach the SuperLink"):
        check_reachable(f"127.0.0.1:{port}")
    with pytest.raises(DeploymentError, match="HOST:PORT"):
        check_reachable("localhost")


def test_client_start_refuses_before_exec(tmp_path):
    runner = CliRunner()
    out = runner.invoke(app, ["client", "start", "--superlink", "127.0.0.1:1"])
    assert out.exit_code == 2 and "--root-certificates" in out.output
    out = runner.invoke(app, ["client", "start", "--superlink", "127.0.0.1:1", "--insecure"])
    assert out.exit_code == 2 and "cannot reach" in out.output
    out = runner.invoke(
        app, ["client", "start", "--superlink", "127.0.0.1:1", "--root-certificates", "nope.crt"]
    )
    assert out.exit_code == 2 and "nope.crt does not exist" in out.output


def test_server_start_with_a_missing_cert_exits_2(tmp_path):
    out = CliRunner().invoke(
        app, ["server", "start", "--certs", str(tmp_path), "--state-dir", str(tmp_path)]
    )
    assert out.exit_code == 2 and "missing certificate" in out.output


def test_supernode_command_and_run_config_text():
    args = supernode_args(
        superlink="h:1", root_certificates=None, auth_key=None, partition_id=2,
        num_partitions=4, port=5, max_retries=3,
    )  # fmt: skip
    assert args[1:] == [
        "--superlink", "h:1", "--port", "5", "--insecure", "--max-retries", "3",
        "--node-config", "partition-id=2 num-partitions=4",
    ]  # fmt: skip
    assert run_config_text({"task": "digits", "resume": True, "lr": 0.1}) == (
        'task="digits" resume=true lr=0.1'
    )


def test_the_superlink_listens_on_the_host_from_server_toml(tmp_path):
    for host, connect in (
        ("10.20.30.40", "10.20.30.40:9100"),
        ("0.0.0.0", "127.0.0.1:9100"),
        ("::", "[::1]:9100"),
        ("::1", "[::1]:9100"),
    ):
        (tmp_path / "s.toml").write_text(
            f'[superlink]\nhost = "{host}"\nport = 9100\ninsecure = true\nnode-auth = false\n'
        )
        config = load_server_config(tmp_path / "s.toml")
        args = _superlink_args(config)
        assert args[args.index("--host") + 1] == host, args
        assert args[args.index("--port") + 1] == "9100"
        assert local_address(config.host, config.port) == connect  # this machine's CLI
    assert "--host" in _superlink_args(ServerConfig(insecure=True, node_auth=False))


def test_a_host_that_is_not_this_machines_is_named_not_called_busy():
    with pytest.raises(DeploymentError, match=r"cannot listen on 192\.0\.2\.1 port 9 .*0\.0\.0\.0"):
        check_port_free("192.0.2.1", 9)  # TEST-NET-1: on no interface here
    check_port_free("::1", 0)  # IPv6 hosts are bound as IPv6


def test_server_start_names_a_garbage_ca_before_starting_anything(tmp_path):
    paths = create_certificates(tmp_path / "certs", nodes=1)
    paths.ca_cert.write_bytes(b"garbage\n")
    (tmp_path / "s.toml").write_text(
        '[superlink]\ncerts = "certs"\nnode-keys = ["certs/node-0.pub"]\nport = 1\n'
    )
    config = load_server_config(tmp_path / "s.toml")
    with pytest.raises(DeploymentError, match=r"ca\.crt is not a PEM certificate") as caught:
        start_server(config, state_dir=tmp_path / "state", app_dir=tmp_path)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "state").exists()  # refused before anything was made or started


def test_a_port_whose_superlink_just_stopped_is_free_again():
    """Connections the server side closed first linger in TIME_WAIT for a minute; the SuperLink
    (uvicorn, SO_REUSEADDR) can listen there at once, so `pollen server start` must agree."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's does
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            accepted.close()  # server side first: its end goes to TIME_WAIT
            client.recv(1)
    check_port_free("127.0.0.1", port)
