"""Open a URL in the browser or a folder in the file manager, the way each OS does it.

Never blocks the caller for long and never raises: a desktop without a browser or file manager
gets a log line, not a crash. ``BROWSER`` is honoured (``webbrowser``).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import webbrowser
from pathlib import Path

log = logging.getLogger("hflocal.tray")


def open_url(url: str) -> bool:
    try:
        return bool(webbrowser.open(url))
    except Exception as exc:  # webbrowser can raise from odd BROWSER settings
        log.warning("cannot open a browser: %s", exc)
        return False


def opener_command(path: Path, platform: str = sys.platform) -> list[str] | None:
    """The command that shows ``path`` in the platform's file manager (None on Windows: startfile)."""
    if platform == "darwin":
        return ["open", str(path)]
    if platform == "win32":
        return None
    return ["xdg-open", str(path)]


def open_path(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if sys.platform == "win32":
        try:
            os.startfile(str(path))  # type: ignore[attr-defined]
            return True
        except OSError as exc:
            log.warning("cannot open %s: %s", path, exc)
            return False
    command = opener_command(path)
    assert command is not None
    if shutil.which(command[0]) is None:
        return open_url(path.as_uri())
    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError as exc:
        log.warning("cannot open %s: %s", path, exc)
        return False
    try:
        return proc.wait(10) == 0
    except subprocess.TimeoutExpired:
        return True  # a file manager that stays in the foreground: it opened


__all__ = ["open_path", "open_url", "opener_command"]
