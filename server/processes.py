"""The processes a SuperLink start leaves behind, found and stopped (Linux ``/proc``).

``flower-superlink`` runs in a process group of its own (``start_new_session``), and starts
``flower-superexec`` in another session, which starts the ServerApp: signalling the SuperLink's
group alone leaves those running for a while (shared/FLOWER_NOTES.md), so ``stop_group`` signals
the groups of every descendant too, TERM first and KILL after ``timeout_s``.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux ``/proc``; empty elsewhere). The SuperLink starts
    ``flower-superexec`` in a session of its own, and that one the ServerApp, so signalling the
    SuperLink's process group alone leaves them running for a while."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(entry.read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop_group(pid: int, timeout_s: float = 15.0) -> None:
    """TERM, then KILL, the SuperLink's process group and the groups of its descendants."""
    groups = [pid]
    for child in descendants(pid):
        try:
            if (group := os.getpgid(child)) not in groups:
                groups.append(group)
        except ProcessLookupError:
            pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for group in groups[1:]:
            try:
                os.killpg(group, sig)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            except ChildProcessError:  # not our child (stopped from another `pollen` call)
                if not alive(pid):
                    return
            time.sleep(0.2)


def launched_for(state_dir: Path) -> list[int]:
    """Our child processes started for ``state_dir`` (their environment names its FLWR_HOME)."""
    marker = f"FLWR_HOME={state_dir / 'flwr-home'}".encode()
    found = []
    for pid in descendants(os.getpid()):
        try:
            if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.append(pid)
        except OSError:
            pass
    return found
