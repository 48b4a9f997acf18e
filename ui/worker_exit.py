"""How a worker process ended, in words the tray can show: its exit and its own last line of output."""

from __future__ import annotations

import signal
from pathlib import Path


def describe_exit(returncode: int) -> str:
    """``exit status 3`` or ``killed by SIGKILL``."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def last_line(path: Path, offset: int) -> str | None:
    """The last non-empty line written to ``path`` after ``offset`` (the worker's own last words)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            tail = f.read()[-4096:]
    except OSError:
        return None
    lines = [ln.strip() for ln in tail.decode("utf-8", "replace").splitlines() if ln.strip()]
    if not lines:
        return None
    line = lines[-1]
    return line.removeprefix("hflocal: ")
