"""Start at login: the files are checked by the tools that will read them, and by round trips.

Every test writes under ``tmp_path`` (``XDG_CONFIG_HOME``/``HOME`` passed in ``env``), never in the
real user's config. Paths contain spaces, ``%`` and ``$`` on purpose.
"""

from __future__ import annotations

import json
import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from installers.autostart import (
    AutostartError,
    Locations,
    apply,
    desktop_entry,
    hidden_desktop_entry,
    launch_agent,
    systemd_unit,
)
from installers.commands import WINDOWS_RUN_MAX, desktop_exec, hflocal_argv, systemd_exec, windows_run_value
from tests.support.agentproc import cli

ODD_HOME = "/tmp/my data/100% $HOME `x` \"q\" 'a' back\\slash"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (scripts/apt-packages.txt lists it)")
    return path


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "HOME": str(tmp_path / "user home"),
        "XDG_CONFIG_HOME": str(tmp_path / "config dir"),
        "XDG_CONFIG_DIRS": str(tmp_path / "etc xdg"),
        **extra,
    }


# --------------------------------------------------------------------------- command building


def test_hflocal_argv_names_the_interpreter_and_the_home() -> None:
    assert hflocal_argv("tray", python="/py") == ["/py", "-m", "cli.main", "tray"]
    assert hflocal_argv("serve", home="/a b", python="/py") == ["/py", "-m", "cli.main", "--home", "/a b", "serve"]
    with pytest.raises(ValueError):
        hflocal_argv("chat")


def test_desktop_exec_quoting_round_trips_through_glib(tmp_path: Path) -> None:
    """GLib reads Exec the way desktop environments do: unescape the string, then split it."""
    gi = pytest.importorskip("gi")
    gi.require_version("Gio", "2.0")
    from gi.repository import Gio, GLib

    argv = [sys.executable, "-m", "cli.main", "--home", ODD_HOME, "tray"]
    path = tmp_path / "t.desktop"
    path.write_text(desktop_entry(argv, icon="x"))
    info = Gio.DesktopAppInfo.new_from_filename(str(path))
    assert info is not None
    ok, parsed = GLib.shell_parse_argv(info.get_commandline().replace("%%", "%"))
    assert ok and parsed == argv


def test_desktop_exec_plain_words_stay_unquoted_and_percent_is_doubled() -> None:
    assert desktop_exec(["/usr/bin/python3", "-m", "cli.main", "tray"]) == "/usr/bin/python3 -m cli.main tray"
    assert desktop_exec(["/a b/python", "100%"]) == '"/a b/python" 100%%'
    with pytest.raises(ValueError):
        desktop_exec(["a\nb"])


def test_systemd_exec_escapes_specifiers_and_variables() -> None:
    assert systemd_exec(["/usr/bin/python3", "a b", "50%", "$HOME", 'q"uote']) == (
        '"/usr/bin/python3" "a b" "50%%" "$$HOME" "q\\"uote"'
    )


def test_windows_run_value_quotes_like_the_msvc_runtime_and_respects_the_limit() -> None:
    argv = [r"C:\Program Files\Python311\pythonw.exe", "-m", "cli.main", "--home", r"C:\Users\A B\data", "tray"]
    assert windows_run_value(argv) == (
        r'"C:\Program Files\Python311\pythonw.exe" -m cli.main --home "C:\Users\A B\data" tray'
    )
    assert windows_run_value(["a", 'say "hi"']) == r'a "say \"hi\""'
    with pytest.raises(ValueError, match="260"):
        windows_run_value(["x" * WINDOWS_RUN_MAX, "tray"])


# --------------------------------------------------------------------------- files checked by real tools


def test_desktop_entry_passes_desktop_file_validate(tmp_path: Path) -> None:
    validate = tool("desktop-file-validate")
    for content in (desktop_entry(hflocal_argv("tray", home=ODD_HOME)), hidden_desktop_entry()):
        path = tmp_path / "hflocal.desktop"
        path.write_text(content)
        result = subprocess.run([validate, str(path)], capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    unit = tmp_path / "units with space" / "hflocal.service"
    unit.parent.mkdir()
    unit.write_text(systemd_unit(hflocal_argv("serve", home=ODD_HOME)))
    result = subprocess.run(
        [analyze, "verify", "--user", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime), "XDG_CONFIG_HOME": str(tmp_path / "cfg")},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hflocal.service" not in result.stderr, result.stderr


def test_systemd_analyze_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a unit whose command does not exist is rejected."""
    analyze = tool("systemd-analyze")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    unit = tmp_path / "hflocal.service"
    unit.write_text(systemd_unit(["/nonexistent dir/python", "serve"]))
    result = subprocess.run([analyze, "verify", "--user", str(unit)], capture_output=True, text=True, timeout=60, check=False,
                            env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    assert result.returncode != 0


def test_launch_agent_plist_round_trips() -> None:
    argv = hflocal_argv("tray", home="/Users/a b/Library/Application Support/hflocal", python="/usr/bin/python3")
    for mode in ("tray", "serve"):
        data = plistlib.loads(launch_agent(mode, argv, "/Users/a b/log.txt"))
        assert data["ProgramArguments"] == argv
        assert data["RunAtLoad"] is True
        assert data["Label"].startswith("io.github.hflocal.")
        assert data["StandardErrorPath"] == "/Users/a b/log.txt"
    assert plistlib.loads(launch_agent("serve", argv))["KeepAlive"] == {"SuccessfulExit": False}


# --------------------------------------------------------------------------- enable / disable / status


def test_linux_enable_is_idempotent_and_disable_removes_what_it_wrote(tmp_path: Path) -> None:
    env = env_for(tmp_path, HFLOCAL_HOME=ODD_HOME)
    loc = Locations.from_env(env)
    before = apply("status", platform="linux", env=env)
    assert (before["tray"], before["headless"]) == (False, False)  # off by default

    first = apply("enable", platform="linux", env=env)
    content = loc.desktop_file.read_bytes()
    second = apply("enable", platform="linux", env=env)
    assert first["tray"] and second["tray"] and not second["headless"]
    assert loc.desktop_file.read_bytes() == content

    headless = apply("enable", headless=True, platform="linux", env=env)
    assert headless["tray"] and headless["headless"]
    assert apply("status", platform="linux", env=env)["files"] == [str(loc.desktop_file), str(loc.unit_file),
                                                                   str(loc.unit_link)]
    assert loc.unit_link.resolve() == loc.unit_file.resolve()
    assert apply("enable", headless=True, platform="linux", env=env)["files"] == headless["files"]

    # the tray's check item turns the tray off and leaves the headless unit alone
    only_tray = apply("disable", modes=("tray",), platform="linux", env=env)
    assert not only_tray["tray"] and only_tray["headless"]
    off = apply("disable", platform="linux", env=env)
    assert (off["tray"], off["headless"]) == (False, False)
    left = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file() or p.is_symlink())
    assert left == [], left
    assert apply("disable", platform="linux", env=env)["message"] == "start at login was already off"


def test_disable_masks_a_system_wide_entry_with_hidden(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    system = Path(env["XDG_CONFIG_DIRS"]) / "autostart" / "hflocal.desktop"
    system.parent.mkdir(parents=True)
    system.write_text(desktop_entry(["/usr/bin/hflocal", "tray"], icon="x"))
    result = apply("disable", platform="linux", env=env)
    user_file = Locations.from_env(env).desktop_file
    assert "Hidden=true" in user_file.read_text()
    assert result["tray"] is False


def test_macos_enable_and_disable(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    apply("enable", platform="darwin", env=env)
    apply("enable", headless=True, platform="darwin", env=env)
    agents = sorted((Path(env["HOME"]) / "Library" / "LaunchAgents").iterdir())
    assert [p.name for p in agents] == ["io.github.hflocal.agent.plist", "io.github.hflocal.tray.plist"]
    assert plistlib.loads(agents[0].read_bytes())["ProgramArguments"][-1] == "serve"
    assert apply("status", platform="darwin", env=env)["files"] == [str(p) for p in reversed(agents)]
    off = apply("disable", platform="darwin", env=env)
    assert (off["tray"], off["headless"]) == (False, False)
    assert list((Path(env["HOME"]) / "Library" / "LaunchAgents").iterdir()) == []


def test_unknown_action_and_platform_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(AutostartError):
        apply("toggle", platform="linux", env=env_for(tmp_path))
    with pytest.raises(AutostartError, match="not supported"):
        apply("status", platform="sunos5", env=env_for(tmp_path))


def test_cli_autostart_round_trip(tmp_path: Path, hermetic_home: Path) -> None:
    env = env_for(tmp_path)
    Path(env["HOME"]).mkdir()
    on = cli("autostart", "enable", home=hermetic_home, env=env, timeout=60)
    assert on.returncode == 0, on.stderr
    assert on.stdout.strip() == "the tray will start at login"
    entry = Path(env["XDG_CONFIG_HOME"]) / "autostart" / "hflocal.desktop"
    assert str(hermetic_home) in entry.read_text()  # the tray at login uses the same data root
    status = cli("autostart", "status", "--json", home=hermetic_home, env=env, timeout=60)
    assert json.loads(status.stdout) == {"tray": True, "headless": False, "files": [str(entry)],
                                         "message": "start at login: tray"}
    off = cli("autostart", "disable", home=hermetic_home, env=env, timeout=60)
    assert off.returncode == 0 and not entry.exists()
    assert json.loads(cli("autostart", "status", "--json", home=hermetic_home, env=env, timeout=60).stdout)["files"] == []
