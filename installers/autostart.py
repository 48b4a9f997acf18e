"""Start hflocal at login: ``hflocal autostart enable [--headless] | disable | status``.

Off by default; nothing here runs unless the user asks (CLI or the tray's "Start at login").

| OS      | tray (``hflocal tray``)                          | headless (``hflocal serve``)                        |
|---------|--------------------------------------------------|-----------------------------------------------------|
| Linux   | ``$XDG_CONFIG_HOME/autostart/hflocal.desktop``   | systemd user unit ``hflocal.service``, enabled in   |
|         |                                                  | ``default.target.wants`` (what ``systemctl enable`` |
|         |                                                  | writes, without needing a running user manager)     |
| macOS   | ``~/Library/LaunchAgents/io.github.hflocal.tray.plist`` | ``…/io.github.hflocal.agent.plist``          |
| Windows | ``HKCU\\…\\Run`` value ``hflocal``                 | ``HKCU\\…\\Run`` value ``hflocal-agent``              |

Enabling twice writes the same bytes; disabling removes exactly what enabling wrote (and, on Linux,
masks a system-wide ``hflocal.desktop`` with ``Hidden=true`` — the one reliable way to switch an
autostart entry off). The file contents are pure functions of the command (``installers.commands``),
so they are tested on any OS.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from installers.commands import current_home, desktop_exec, hflocal_argv, systemd_exec, windows_run_value

APP_ID = "hflocal"
DESKTOP_FILE = "hflocal.desktop"
UNIT_FILE = "hflocal.service"
MARKER = "X-hflocal-Managed"
MAC_LABELS = {"tray": "io.github.hflocal.tray", "serve": "io.github.hflocal.agent"}
WINDOWS_VALUES = {"tray": "hflocal", "serve": "hflocal-agent"}
RUN_KEY = r"Software\Microsoft\Windows\CurrentVersion\Run"
MODES = ("tray", "serve")


class AutostartError(RuntimeError):
    """Start at login cannot be changed; the message is one line for the user."""


# --------------------------------------------------------------------------- file contents


def _icon_path() -> str:
    try:
        import assets

        return str(assets.path("logo-256.png"))
    except ImportError:  # pragma: no cover - assets ships with the package
        return "utilities-terminal"


def desktop_entry(argv: Sequence[str], icon: str | None = None) -> str:
    """An XDG autostart entry that starts the tray (validates with ``desktop-file-validate``)."""
    return "\n".join([
        "[Desktop Entry]",
        "Type=Application",
        "Version=1.0",
        "Name=hflocal",
        "GenericName=Local AI models",
        "Comment=Run Hugging Face models locally behind an OpenAI-compatible API",
        f"Exec={desktop_exec(argv)}",
        f"Icon={icon or _icon_path()}",
        "Terminal=false",
        "Categories=Utility;",
        "X-GNOME-Autostart-enabled=true",
        f"{MARKER}=true",
        "",
    ])


def hidden_desktop_entry() -> str:
    """Masks a system-wide entry of the same name (``Hidden=true``)."""
    lines = ["[Desktop Entry]", "Type=Application", "Version=1.0", "Name=hflocal", "Hidden=true", f"{MARKER}=true", ""]
    return "\n".join(lines)


def systemd_unit(argv: Sequence[str]) -> str:
    """A user unit that runs the agent headless and restarts it if it crashes."""
    return "\n".join([
        "[Unit]",
        "Description=hflocal agent: local Hugging Face models behind an OpenAI-compatible API",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={systemd_exec(argv)}",
        "Restart=on-failure",
        "RestartSec=5",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ])


def launch_agent(mode: str, argv: Sequence[str], log_path: str | None = None) -> bytes:
    """A macOS LaunchAgent plist (XML) for ``mode``."""
    plist: dict[str, Any] = {
        "Label": MAC_LABELS[mode],
        "ProgramArguments": list(argv),
        "RunAtLoad": True,
        "ProcessType": "Interactive" if mode == "tray" else "Background",
    }
    if mode == "serve":
        plist["KeepAlive"] = {"SuccessfulExit": False}
    if log_path:
        plist["StandardOutPath"] = log_path
        plist["StandardErrorPath"] = log_path
    return plistlib.dumps(plist, fmt=plistlib.FMT_XML, sort_keys=True)


def windows_python(python: str) -> str:
    """``pythonw.exe`` beside ``python.exe`` (no console window at login), if it is there."""
    path = Path(python)
    if path.name.lower() == "python.exe":
        candidate = path.with_name("pythonw.exe")
        if candidate.exists():
            return str(candidate)
    return python


# --------------------------------------------------------------------------- where things go


@dataclass(frozen=True, slots=True)
class Locations:
    config_home: Path
    config_dirs: tuple[Path, ...]
    user_home: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Locations:
        env = os.environ if env is None else env
        user_home = Path(env.get("HOME") or Path.home())
        config_home = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else user_home / ".config"
        dirs = env.get("XDG_CONFIG_DIRS") or "/etc/xdg"
        config_dirs = tuple(Path(d) for d in dirs.split(":") if d)
        return cls(config_home=config_home, config_dirs=config_dirs, user_home=user_home)

    @property
    def desktop_file(self) -> Path:
        return self.config_home / "autostart" / DESKTOP_FILE

    @property
    def unit_file(self) -> Path:
        return self.config_home / "systemd" / "user" / UNIT_FILE

    @property
    def unit_link(self) -> Path:
        return self.config_home / "systemd" / "user" / "default.target.wants" / UNIT_FILE

    def launch_agent(self, mode: str) -> Path:
        return self.user_home / "Library" / "LaunchAgents" / f"{MAC_LABELS[mode]}.plist"

    def system_desktop_files(self) -> list[Path]:
        return [d / "autostart" / DESKTOP_FILE for d in self.config_dirs if (d / "autostart" / DESKTOP_FILE).exists()]


def _write(path: Path, data: bytes) -> bool:
    """Write ``data`` unless the file already holds it; True if something changed."""
    if path.exists() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True


def _remove(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def _ours(path: Path) -> bool:
    try:
        return f"{MARKER}=true" in path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


# --------------------------------------------------------------------------- Linux


def _linux_enabled(loc: Locations, mode: str) -> bool:
    if mode == "tray":
        if not loc.desktop_file.exists():
            return False
        return "Hidden=true" not in loc.desktop_file.read_text(encoding="utf-8", errors="replace")
    return loc.unit_file.exists() and loc.unit_link.is_symlink()


def _systemctl_reload() -> None:
    """Tell a running user manager about the unit (best effort: there may be none)."""
    if shutil.which("systemctl") is None:
        return
    try:
        subprocess.run(["systemctl", "--user", "daemon-reload"], timeout=10, capture_output=True, check=False)
    except (OSError, subprocess.SubprocessError):
        pass


def _linux_enable(loc: Locations, mode: str, argv: Sequence[str]) -> list[Path]:
    if mode == "tray":
        _write(loc.desktop_file, desktop_entry(argv).encode())
        return [loc.desktop_file]
    changed = _write(loc.unit_file, systemd_unit(argv).encode())
    link = loc.unit_link
    if not (link.is_symlink() and os.readlink(link) == str(loc.unit_file)):
        link.parent.mkdir(parents=True, exist_ok=True)
        _remove(link)
        link.symlink_to(loc.unit_file)
        changed = True
    if changed:
        _systemctl_reload()
    return [loc.unit_file, link]


def _linux_disable(loc: Locations, mode: str) -> list[Path]:
    removed: list[Path] = []
    if mode == "tray":
        if loc.system_desktop_files():
            _write(loc.desktop_file, hidden_desktop_entry().encode())
            removed.append(loc.desktop_file)
        elif loc.desktop_file.exists() and _ours(loc.desktop_file) and _remove(loc.desktop_file):
            removed.append(loc.desktop_file)
        return removed
    for path in (loc.unit_link, loc.unit_file):
        if (path.is_symlink() or path.exists()) and _remove(path):
            removed.append(path)
    if removed:
        _systemctl_reload()
    return removed


# --------------------------------------------------------------------------- macOS


def _mac_enable(loc: Locations, mode: str, argv: Sequence[str], home: str | None) -> list[Path]:
    logs = Path(home) / "logs" / "launchd.log" if home else None
    path = loc.launch_agent(mode)
    _write(path, launch_agent(mode, argv, str(logs) if logs else None))
    return [path]


# --------------------------------------------------------------------------- Windows


def _winreg_get(name: str) -> str | None:  # pragma: no cover - Windows only
    if sys.platform != "win32":
        raise AutostartError("the Run key exists only on Windows")
    import winreg

    try:
        with winreg.OpenKey(winreg.HKEY_CURRENT_USER, RUN_KEY) as key:
            value, _ = winreg.QueryValueEx(key, name)
            return str(value)
    except FileNotFoundError:
        return None


def _winreg_set(name: str, value: str) -> None:  # pragma: no cover - Windows only
    if sys.platform != "win32":
        raise AutostartError("the Run key exists only on Windows")
    import winreg

    with winreg.CreateKey(winreg.HKEY_CURRENT_USER, RUN_KEY) as key:
        winreg.SetValueEx(key, name, 0, winreg.REG_SZ, value)


def _winreg_delete(name: str) -> bool:  # pragma: no cover - Windows only
    if sys.platform != "win32":
        raise AutostartError("the Run key exists only on Windows")
    import winreg

    try:
        with winreg.OpenKey(winreg.HKEY_CURRENT_USER, RUN_KEY, 0, winreg.KEY_SET_VALUE) as key:
            winreg.DeleteValue(key, name)
        return True
    except FileNotFoundError:
        return False


# --------------------------------------------------------------------------- the command


def _platform(platform: str | None) -> str:
    p = platform or sys.platform
    if p.startswith(("linux", "freebsd")):
        return "linux"
    if p in ("darwin", "win32"):
        return p
    raise AutostartError(f"start at login is not supported on {p}")


def status(*, platform: str | None = None, env: Mapping[str, str] | None = None) -> dict[str, bool]:
    """``{"tray": bool, "serve": bool}``: which start-at-login entries exist now."""
    p = _platform(platform)
    loc = Locations.from_env(env)
    if p == "linux":
        return {m: _linux_enabled(loc, m) for m in MODES}
    if p == "darwin":
        return {m: loc.launch_agent(m).exists() for m in MODES}
    return {m: _winreg_get(WINDOWS_VALUES[m]) is not None for m in MODES}  # pragma: no cover


def _entries(p: str, loc: Locations) -> list[Path]:
    """The start-at-login files in place now (``status`` lists them): the desktop entry (also a
    ``Hidden=true`` one that masks a system-wide entry), the systemd unit and its link, LaunchAgents."""
    if p == "linux":
        found = [f for f in (loc.desktop_file, loc.unit_file) if f.exists()]
        return found + ([loc.unit_link] if loc.unit_link.is_symlink() else [])
    if p == "darwin":
        return [loc.launch_agent(m) for m in MODES if loc.launch_agent(m).exists()]
    return []  # pragma: no cover - Windows: a registry value, not a file


def apply(
    action: str,
    *,
    headless: bool = False,
    modes: Sequence[str] | None = None,
    platform: str | None = None,
    env: Mapping[str, str] | None = None,
    python: str | None = None,
) -> dict[str, Any]:
    """Do ``action`` (``enable`` | ``disable`` | ``status``) and describe the result.

    ``enable`` turns on the tray, or with ``headless`` the agent alone. ``disable`` turns off both
    (only the agent with ``headless``; ``modes`` narrows it further, as the tray's check item does).
    Returns ``{"tray": bool, "headless": bool, "files": [...], "message": str}``: ``files`` are those
    written (enable), removed (disable), or in place now (status).
    """
    p = _platform(platform)
    loc = Locations.from_env(env)
    home = (env or {}).get("HFLOCAL_HOME") if env is not None else current_home()
    files: list[Path] = []
    if action == "enable":
        mode = "serve" if headless else "tray"
        argv = hflocal_argv(mode, home=home, python=python)
        try:
            if p == "linux":
                files = _linux_enable(loc, mode, argv)
            elif p == "darwin":
                files = _mac_enable(loc, mode, argv, home)
            else:  # pragma: no cover - Windows only
                argv[0] = windows_python(argv[0])
                _winreg_set(WINDOWS_VALUES[mode], windows_run_value(argv))
        except (OSError, ValueError) as exc:
            raise AutostartError(f"cannot enable start at login: {exc}") from None
        what = "the headless agent" if headless else "the tray"
        message = f"{what} will start at login"
    elif action == "disable":
        chosen = tuple(modes) if modes else (("serve",) if headless else MODES)
        try:
            for mode in chosen:
                if p == "linux":
                    files += _linux_disable(loc, mode)
                elif p == "darwin":
                    if _remove(loc.launch_agent(mode)):
                        files.append(loc.launch_agent(mode))
                else:  # pragma: no cover - Windows only
                    _winreg_delete(WINDOWS_VALUES[mode])
        except OSError as exc:
            raise AutostartError(f"cannot disable start at login: {exc}") from None
        message = "start at login is off" if files or p == "win32" else "start at login was already off"
    elif action == "status":
        files = _entries(p, loc)
        message = ""
    else:
        raise AutostartError(f"unknown action {action!r}: use enable, disable or status")
    now = status(platform=p, env=env)
    if action == "status":
        on = [name for name, mode in (("tray", "tray"), ("headless agent", "serve")) if now[mode]]
        message = "start at login: " + (", ".join(on) if on else "off")
    return {"tray": now["tray"], "headless": now["serve"], "files": [str(f) for f in files], "message": message}


__all__ = [
    "AutostartError",
    "Locations",
    "apply",
    "desktop_entry",
    "hidden_desktop_entry",
    "launch_agent",
    "status",
    "systemd_unit",
    "windows_python",
]
