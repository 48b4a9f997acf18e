"""The data root: one rule for every process, so a client finds the agent the agent would.

In ``ipc`` because both processes (and the CLI) import it and it imports no framework.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "hflocal"


def default_home() -> Path:
    """``$HFLOCAL_HOME`` if set (``~`` expanded, made absolute), else the platform's user data dir
    (e.g. ``~/.local/share/hflocal``). ``HFLOCAL_HOME`` relocates all state, so tests are hermetic."""
    env = os.environ.get("HFLOCAL_HOME")
    if env:
        return Path(env).expanduser().resolve()
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)).resolve()


def resolve_home(home: str | os.PathLike[str] | None) -> Path:
    """``home`` as given, or ``default_home()`` when it is ``None``: the agent's rule and its clients'."""
    return Path(home) if home is not None else default_home()
