"""A user-level ``hflocal`` launcher, so the command works from any shell after the quickstart.

``scripts/quickstart`` installs hflocal into the checkout's ``.venv``, which no shell has on its
``PATH``. This writes ``~/.local/bin/hflocal`` (the XDG user bin folder that pipx, uv and most
distributions' ``~/.profile`` use): a two-line ``sh`` script that runs the venv's ``hflocal`` with
the arguments it was given. What a caller may rely on:

- The launcher names the venv's script by absolute path; when the quickstart ran with
  ``HFLOCAL_HOME`` set, the launcher sets that data root too, unless the caller's shell sets one.
- A file already there that this module did not write (another hflocal, say from pipx) is left
  alone and reported; one it wrote is replaced (the checkout moved, another ``HFLOCAL_HOME``).
- The result says whether the folder is on ``PATH`` and, if not, the exact line to add.

``python -m installers.launcher VENV_HFLOCAL [--bin-dir DIR] [--home HOME]`` prints one line per
fact for the quickstart; exit status 0 also when the launcher was left alone (not an error).
"""

from __future__ import annotations

import argparse
import os
import shlex
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

MARKER = "# written by hflocal's scripts/quickstart (installers/launcher.py)"


@dataclass(frozen=True)
class LauncherResult:
    path: Path
    written: bool
    """False when a file not written by hflocal was there and was kept."""
    on_path: bool
    path_line: str
    """The line to add to ``~/.profile`` (or ``~/.bashrc``) when ``on_path`` is false."""


def default_bin_dir(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    return Path(env.get("HOME") or Path.home()) / ".local" / "bin"


def launcher_script(target: Path, home: str | None = None) -> str:
    """The launcher's text: ``exec`` the venv's hflocal, with ``HFLOCAL_HOME`` defaulted to ``home``."""
    lines = ["#!/bin/sh", MARKER]
    if home:
        lines.append(f'HFLOCAL_HOME="${{HFLOCAL_HOME:-{_sh_double(home)}}}"; export HFLOCAL_HOME')
    lines.append(f'exec {shlex.quote(str(target))} "$@"')
    return "\n".join(lines) + "\n"


def _sh_double(text: str) -> str:
    """``text`` for the inside of a double-quoted ``sh`` word."""
    return "".join("\\" + c if c in '"$`\\' else c for c in text)


def on_path(folder: Path, path_var: str | None) -> bool:
    wanted = folder.resolve()
    for entry in (path_var or "").split(os.pathsep):
        if entry and Path(entry).expanduser().resolve() == wanted:
            return True
    return False


def install_launcher(
    target: Path, bin_dir: Path | None = None, *, home: str | None = None, path_var: str | None = None
) -> LauncherResult:
    """Write ``bin_dir/hflocal`` running ``target`` (see the module docstring)."""
    folder = bin_dir or default_bin_dir()
    launcher = folder / "hflocal"
    target = target.resolve()
    path_line = f'export PATH="{_sh_double(str(folder))}:$PATH"'
    visible = on_path(folder, os.environ.get("PATH") if path_var is None else path_var)
    if (launcher.exists() or launcher.is_symlink()) and not _ours(launcher):
        return LauncherResult(launcher, False, visible, path_line)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = launcher.with_name(".hflocal.tmp")
    tmp.write_text(launcher_script(target, home), encoding="utf-8")
    tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    os.replace(tmp, launcher)
    return LauncherResult(launcher, True, visible, path_line)


def _ours(path: Path) -> bool:
    try:
        return not path.is_symlink() and MARKER in path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m installers.launcher")
    parser.add_argument("target", type=Path, help="the venv's hflocal script")
    parser.add_argument("--bin-dir", type=Path, help="where to write the launcher (default ~/.local/bin)")
    parser.add_argument("--home", help="HFLOCAL_HOME the launcher defaults to")
    args = parser.parse_args(argv)
    try:
        result = install_launcher(args.target, args.bin_dir, home=args.home or None)
    except OSError as exc:
        print(f"could not write the hflocal launcher: {exc}; run {args.target} instead")
        return 1
    if not result.written:
        print(f"{result.path} exists and is not hflocal's launcher: left as it is; the venv's is {args.target}")
        return 0
    print(f"`hflocal` now runs {args.target.resolve()} (launcher {result.path})")
    if not result.on_path:
        print(f"{result.path.parent} is not on your PATH; add this line to ~/.profile (or ~/.bashrc), "
              f"then open a new shell:")
        print(f"  {result.path_line}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
