"""The command lines that start hflocal at login, and how each OS wants them quoted. Pure functions.

- XDG desktop entries (``Exec=``): arguments with reserved characters are double-quoted, and inside
  the quotes ``"`` `` ` `` ``$`` ``\\`` are backslash-escaped; the value is then a desktop-entry string,
  so every ``\\`` is doubled again, and ``%`` (field codes) is written ``%%``.
- systemd units (``ExecStart=``): C-style double-quoted words; ``%`` is ``%%`` (specifiers) and
  ``$`` is ``$$`` (variable expansion).
- Windows Run values: ``subprocess.list2cmdline`` (the MSVC runtime's rules), at most 260 chars.
- macOS LaunchAgents take an argv array (``ProgramArguments``): no quoting at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

WINDOWS_RUN_MAX = 260

_EXEC_RESERVED = set(" \t\n\"'\\><~|&;$*?#()`")


def hflocal_argv(mode: str, *, home: str | None = None, python: str | None = None) -> list[str]:
    """``hflocal tray`` or ``hflocal serve`` as an argv that works from any directory at login.

    The interpreter is named explicitly (``python -m cli.main``) rather than a console script on
    ``PATH``, which a login session may not have. ``home`` adds ``--home`` (a custom data root).
    """
    if mode not in ("tray", "serve"):
        raise ValueError(f"unknown mode {mode!r}")
    argv = [python or sys.executable, "-m", "cli.main"]
    if home:
        argv += ["--home", home]
    argv.append(mode)
    return argv


def current_home() -> str | None:
    """The data root to pass on, if the user relocated it with ``HFLOCAL_HOME``."""
    env = os.environ.get("HFLOCAL_HOME")
    return str(Path(env).expanduser().resolve()) if env else None


def _exec_arg(arg: str) -> str:
    if arg and not (set(arg) & _EXEC_RESERVED):
        return arg
    escaped = "".join("\\" + c if c in '"`$\\' else c for c in arg)
    return f'"{escaped}"'


def desktop_exec(argv: Sequence[str]) -> str:
    """The ``Exec=`` value (after ``Exec=``) for ``argv``, per the Desktop Entry Specification."""
    if any("\n" in a or "\r" in a for a in argv):
        raise ValueError("a desktop entry command cannot contain a newline")
    line = " ".join(_exec_arg(a) for a in argv)
    return line.replace("\\", "\\\\").replace("%", "%%")


def systemd_exec(argv: Sequence[str]) -> str:
    """The ``ExecStart=`` value for ``argv``: every word double-quoted, specials escaped."""

    def word(arg: str) -> str:
        if any(c in arg for c in "\n\r"):
            raise ValueError("a systemd command cannot contain a newline")
        escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
        return f'"{escaped}"'

    return " ".join(word(a) for a in argv)


def windows_run_value(argv: Sequence[str]) -> str:
    """The Run-key command line for ``argv``; ``ValueError`` if Windows would truncate it."""
    line = subprocess.list2cmdline(list(argv))
    if len(line) > WINDOWS_RUN_MAX:
        raise ValueError(f"the start-at-login command is {len(line)} characters; Windows allows {WINDOWS_RUN_MAX}")
    return line


__all__ = ["WINDOWS_RUN_MAX", "current_home", "desktop_exec", "hflocal_argv", "systemd_exec", "windows_run_value"]
