"""The central server's deployment config: one TOML file (plus flags) for `pollen server start`.

```toml
[superlink]
host = "127.0.0.1"        # where the SuperLink listens (and is reached by this machine's CLI)
port = 8000
certs = "certs"           # from `pollen certs`: ca.crt, server.pem, server.key
database = "state.db"     # SuperLink state (runs, registered nodes) across restarts
node-auth = true          # SuperNode authentication (needs TLS)
node-keys = ["certs/node-0.pub", "certs/node-1.pub"]   # public keys to register
insecure = false          # plaintext, only when asked; a warning is printed

[run]                     # Pollen's run config (the keys of the App's ServerApp's settings)
num-server-rounds = 10
min-available-nodes = 2
```

Relative paths are read against the config file's folder.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.config import RunConfigError, RunSettings


class DeploymentError(ValueError):
    """The server cannot be started, reached or stopped as asked; the message says what to fix."""


_LINK_KEYS = {"host", "port", "certs", "database", "node-auth", "node-keys", "insecure"}


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    certs: Path | None = Path("certs")
    database: Path | None = Path("state.db")
    node_auth: bool = True
    node_keys: tuple[Path, ...] = ()
    insecure: bool = False
    run_config: dict[str, Any] = field(default_factory=dict)
    # the settings class the App's ServerApp reads its run config into (a simulated App's is wider)
    schema: type[RunSettings] = RunSettings

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def check(self) -> None:
        """Refuse impossible combinations and missing files before anything starts."""
        if not 0 < self.port < 65536:
            raise DeploymentError(f"port must be in 1..65535, got {self.port}")
        if self.insecure and self.node_auth:
            raise DeploymentError(
                "node authentication needs TLS: drop 'insecure' or set node-auth = false"
            )
        if not self.insecure:
            if self.certs is None:
                raise DeploymentError(
                    "give 'certs' (a folder from `pollen certs`) or insecure=true"
                )
            for name in ("ca.crt", "server.pem", "server.key"):
                if not (self.certs / name).is_file():
                    raise DeploymentError(
                        f"missing certificate {self.certs / name}; create them with "
                        f"`pollen certs --out {self.certs} --host {self.host}`"
                    )
        if self.node_auth and not self.node_keys:
            raise DeploymentError(
                "node-auth is on but no node-keys are listed; make keys with "
                "`pollen certs --nodes N` and list their .pub files"
            )
        for key in self.node_keys:
            if not key.is_file():
                raise DeploymentError(f"missing SuperNode public key {key}")
        try:
            self.schema.from_run_config(self.run_config)
        except RunConfigError as err:
            raise DeploymentError(f"[run] {err.key}: {err.why}") from None


MAX_CONFIG_BYTES = 1 << 20  # a server.toml or server.json is a few hundred bytes
MAX_NODE_KEYS = 100_000
# [superlink] key -> (type it must have, how the error names it)
_LINK_TYPES: dict[str, tuple[type, str]] = {
    "host": (str, "a string"),
    "port": (int, "a int"),
    "certs": (str, "a folder path (string)"),
    "database": (str, "a file path (string)"),
    "node-auth": (bool, "a bool"),
    "node-keys": (list, "a list of .pub file paths"),
    "insecure": (bool, "a bool"),
}


def _show(value: Any) -> str:
    """A hostile value, shown on one short line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_text_file(path: Path, what: str) -> str:
    """A small UTF-8 text file, or a :class:`DeploymentError` naming it: never a traceback for
    a folder, a device, a huge file or bytes that are not UTF-8."""
    try:
        if not path.is_file():
            raise DeploymentError(f"{what} {path} is not a file")
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise DeploymentError(f"cannot read {what} {path}: {err.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise DeploymentError(f"{what} {path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DeploymentError(
            f"{what} {path} is not UTF-8 text (byte {err.start} is "
            f"{data[err.start : err.start + 1]!r}); save it as UTF-8"
        ) from None


def load_server_config(
    path: Path | None, *, schema: type[RunSettings] = RunSettings, **overrides: Any
) -> ServerConfig:
    """Read ``path`` (optional) and apply flag ``overrides`` (None values are ignored); ``[run]``
    is checked as ``schema``, the settings class of the App's ServerApp.

    Every value of the file is type-checked before use (``bool`` is not a port, a string is not
    a list of keys); a bad one is a :class:`DeploymentError` naming the file and the key."""
    raw: dict[str, Any] = {}
    base = Path(".")
    where = "flags"
    if path is not None:
        text = read_text_file(path, "server config")
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise DeploymentError(f"server config {path} is not valid TOML: {err}") from None
        except RecursionError:
            raise DeploymentError(f"server config {path} nests too deeply") from None
        base = path.parent
        where = str(path)
    if unknown := set(raw) - {"superlink", "run"}:
        raise DeploymentError(
            f"{where}: unknown table(s) {_show(sorted(unknown))}; use [superlink] and [run]"
        )
    for table in ("superlink", "run"):
        if not isinstance(raw.get(table, {}), dict):
            raise DeploymentError(
                f"{where}: {table} must be a table ([{table}]), got {_show(raw[table])}"
            )
    link: Mapping[str, Any] = raw.get("superlink", {})
    if unknown := set(link) - _LINK_KEYS:
        raise DeploymentError(
            f"{where}: [superlink] unknown key(s) {_show(sorted(unknown))}; "
            f"known: {sorted(_LINK_KEYS)}"
        )
    for key, value in link.items():
        kind, what = _LINK_TYPES[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise DeploymentError(f"{where}: [superlink] {key} must be {what}, got {_show(value)}")
    values: dict[str, Any] = {k.replace("-", "_"): v for k, v in link.items()}

    def path_of(key: str, value: str) -> Path | None:  # relative to the file's folder
        if value == "":
            return None
        if "\x00" in value:
            raise DeploymentError(f"{where}: [superlink] {key} holds a NUL character")
        try:
            p = Path(value).expanduser()
        except RuntimeError:  # ~user that does not exist here
            raise DeploymentError(
                f"{where}: [superlink] {key}: cannot expand {_show(value)}"
            ) from None
        return p if p.is_absolute() else base / p

    for key in ("certs", "database"):
        if key in values:
            values[key] = path_of(key, values[key])
    if "node_keys" in values:
        keys = values["node_keys"]
        if len(keys) > MAX_NODE_KEYS or not all(isinstance(k, str) and k for k in keys):
            raise DeploymentError(
                f"{where}: [superlink] node-keys must be a list of .pub file paths, "
                f"got {_show(keys)}"
            )
        values["node_keys"] = tuple(path_of("node-keys", k) for k in keys)
    values.update({k: v for k, v in overrides.items() if v is not None})  # flags: as given
    run = dict(raw.get("run", {}))
    try:
        schema.from_run_config(run)
    except RunConfigError as err:
        raise DeploymentError(f"{where}: [run] {err.key}: {err.why}") from None
    config = ServerConfig(**values, run_config=run, schema=schema)
    for key, kind in (("port", int), ("host", str), ("node_auth", bool), ("insecure", bool)):
        value = getattr(config, key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise DeploymentError(f"{key.replace('_', '-')} must be a {kind.__name__}")
    return config


# server.json (written by `pollen server start`): key -> the types its value may have
_STATE_TYPES: dict[str, tuple[type, ...]] = {
    "pid": (int,),
    "address": (str,),
    "ca_cert": (str,),
    "nodes": (dict,),
    "run_id": (int, type(None)),
    "out_dir": (str,),
}


def read_server_state(path: Path) -> dict[str, Any] | None:
    """``server.json``, checked before anything acts on it (``stop`` signals its ``pid``'s
    process group: a pid of 0, 1, our own or a string must never get that far)."""
    if not path.exists():
        return None
    hint = "; if no server is running, delete it"
    text = read_text_file(path, "server state")
    try:
        state = json.loads(text)
    except (ValueError, RecursionError):
        raise DeploymentError(f"server state {path} is not valid JSON{hint}") from None
    if not isinstance(state, dict):
        raise DeploymentError(f"server state {path} is not a JSON object{hint}")
    for key in ("pid", "address"):
        if key not in state:
            raise DeploymentError(f"server state {path} has no {key!r}{hint}")
    for key, kinds in _STATE_TYPES.items():
        if key in state and (not isinstance(state[key], kinds) or isinstance(state[key], bool)):
            raise DeploymentError(f"server state {path}: {key!r} is {_show(state[key])}{hint}")
    pid = state["pid"]
    if not 1 < pid < 2**31 or pid in (os.getpid(), os.getpgrp()):
        raise DeploymentError(
            f"server state {path}: 'pid' {pid} is not a SuperLink process id{hint}"
        )
    return state
