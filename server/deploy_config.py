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

[run]                     # Pollen's run config (the ServerApp's RunSettings keys)
num-server-rounds = 10
min-available-nodes = 2
```

Relative paths are read against the config file's folder.
"""

from __future__ import annotations

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
            RunSettings.from_run_config(self.run_config)
        except RunConfigError as err:
            raise DeploymentError(f"[run] {err.key}: {err.why}") from None


def load_server_config(path: Path | None, **overrides: Any) -> ServerConfig:
    """Read ``path`` (optional) and apply flag ``overrides`` (None values are ignored)."""
    raw: dict[str, Any] = {}
    base = Path(".")
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text())
        except OSError as err:
            raise DeploymentError(f"cannot read server config {path}: {err.strerror}") from None
        except tomllib.TOMLDecodeError as err:
            raise DeploymentError(f"server config {path} is not valid TOML: {err}") from None
        base = path.parent
    if unknown := set(raw) - {"superlink", "run"}:
        raise DeploymentError(f"unknown table(s) {sorted(unknown)}; use [superlink] and [run]")
    link: Mapping[str, Any] = raw.get("superlink", {})
    if unknown := set(link) - _LINK_KEYS:
        raise DeploymentError(
            f"[superlink] unknown key(s) {sorted(unknown)}; known: {sorted(_LINK_KEYS)}"
        )
    values: dict[str, Any] = {k.replace("-", "_"): v for k, v in link.items()}

    def path_of(value: Any) -> Path | None:  # file values are relative to the file's folder
        if value in (None, ""):
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else base / p

    for key in ("certs", "database"):
        if key in values:
            values[key] = path_of(values[key])
    if "node_keys" in values:
        values["node_keys"] = tuple(path_of(v) for v in values["node_keys"])
    values.update({k: v for k, v in overrides.items() if v is not None})  # flags: as given
    run = dict(raw.get("run", {}))
    try:
        config = ServerConfig(**values, run_config=run)
    except TypeError as err:
        raise DeploymentError(f"[superlink]: {err}") from None
    for key, kind in (("port", int), ("host", str), ("node_auth", bool), ("insecure", bool)):
        if not isinstance(getattr(config, key), kind):
            raise DeploymentError(f"[superlink] {key.replace('_', '-')} must be a {kind.__name__}")
    return config
