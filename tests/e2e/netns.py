"""Two network namespaces joined by a veth pair, private to one test (Linux, root, iproute2).

``veth_namespaces()`` makes ``pollen-srv-<tag>`` and ``pollen-dev-<tag>``, a veth pair with one
end in each, and gives the ends private addresses (10.213.7.1/30 and 10.213.7.2/30) that exist
only inside those namespaces, so nothing a test sends there can leave the sandbox or reach another
engineer's processes; each namespace has its own loopback and its own ports. It skips the test,
with the reason, where namespaces cannot be made (no ``ip``, not root, EPERM in a container), and
always removes what it made: every process left in either namespace is killed, then the
namespaces are deleted (which deletes the veth pair with them).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

SERVER_IP, DEVICE_IP, PREFIX = "10.213.7.1", "10.213.7.2", 30


@dataclass(frozen=True)
class VethLink:
    server_ns: str
    device_ns: str
    server_ip: str = SERVER_IP
    device_ip: str = DEVICE_IP

    @property
    def in_server(self) -> list[str]:
        """Prefix that runs a command inside the server's namespace."""
        return ["ip", "netns", "exec", self.server_ns]

    @property
    def in_device(self) -> list[str]:
        return ["ip", "netns", "exec", self.device_ns]


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def _checked(*args: str) -> None:
    done = _ip(*args)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")


def _empty(namespace: str) -> None:
    """SIGKILL every process still inside ``namespace`` (a namespace outlives its name while
    one runs there)."""
    for pid in _ip("netns", "pids", namespace).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


@contextmanager
def veth_namespaces() -> Iterator[VethLink]:
    if shutil.which("ip") is None:
        pytest.skip("iproute2's `ip` is not installed: cannot make a network namespace")
    if os.geteuid() != 0:
        pytest.skip("making network namespaces needs root (`ip netns add`)")
    tag = secrets.token_hex(3)
    link = VethLink(server_ns=f"pollen-srv-{tag}", device_ns=f"pollen-dev-{tag}")
    made: list[str] = []
    try:
        first = _ip("netns", "add", link.server_ns)
        if first.returncode != 0:
            pytest.skip(f"cannot make a network namespace here: {first.stderr.strip()}")
        made.append(link.server_ns)
        _checked("netns", "add", link.device_ns)
        made.append(link.device_ns)
        server_end, device_end = f"pls{tag}", f"pld{tag}"  # interface names: <= 15 characters
        _checked(
            "link", "add", server_end, "netns", link.server_ns, "type", "veth",
            "peer", "name", device_end, "netns", link.device_ns,
        )  # fmt: skip
        for namespace, end, address in (
            (link.server_ns, server_end, link.server_ip),
            (link.device_ns, device_end, link.device_ip),
        ):
            _checked("-n", namespace, "addr", "add", f"{address}/{PREFIX}", "dev", end)
            _checked("-n", namespace, "link", "set", end, "up")
            _checked("-n", namespace, "link", "set", "lo", "up")
        yield link
    finally:
        for namespace in made:
            _empty(namespace)
        for namespace in made:
            _ip("netns", "del", namespace)


def namespace_exists(name: str) -> bool:
    return name in _ip("netns", "list").stdout.split()
