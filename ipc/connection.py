"""``agent.json``: how a client finds and authenticates to the running worker.

Written by the worker once its sockets are bound (atomically, mode 0600, removed on clean exit);
read by every client. A file whose pid is no longer alive is stale: clients treat it as "no agent".
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from ipc.files import atomic_write
from ipc.messages import PROTOCOL_VERSION


class ConnectionInfo(msgspec.Struct, frozen=True, kw_only=True):
    http_url: str
    request_endpoint: str
    event_endpoint: str
    token: str
    pid: int
    session: str
    protocol: int = PROTOCOL_VERSION
    version: str = ""
    home: str = ""
    started_at: float = 0.0
    event_key: str = ""
    """What every subscription to ``event_endpoint`` must start with (see ``ipc.events``)."""


class AgentNotRunning(RuntimeError):
    """No live worker for this home. The message says how to start one."""

    def __init__(self, home: Path, detail: str = "") -> None:
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"no hflocal agent is running for {home}{extra}; "
            "start one with `hflocal serve` (headless) or `hflocal tray`"
        )
        self.home = home


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        import psutil

        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except ImportError:  # pragma: no cover - psutil is a dependency; keep clients usable without it
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    except Exception:
        return False


def write_connection(path: Path, info: ConnectionInfo) -> None:
    """Atomically write ``agent.json`` readable by the user only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, msgspec.json.format(msgspec.json.encode(info)), mode=0o600)


def read_connection(path: Path, *, require_alive: bool = True) -> ConnectionInfo:
    """Read ``agent.json``; raise ``AgentNotRunning`` if it is missing, unreadable or stale."""
    home = path.parent
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise AgentNotRunning(home) from None
    except OSError as exc:
        raise AgentNotRunning(home, f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        info = msgspec.json.decode(raw, type=ConnectionInfo)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise AgentNotRunning(home, f"{path} is unreadable: {exc}") from None
    if require_alive and not pid_alive(info.pid):
        raise AgentNotRunning(home, f"stale {path.name}: pid {info.pid} is not running")
    return info


def remove_connection(path: Path, pid: int) -> None:
    """Remove ``agent.json`` if it is still ours (another worker may have replaced it)."""
    try:
        info = read_connection(path, require_alive=False)
    except AgentNotRunning:
        return
    if info.pid == pid:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
