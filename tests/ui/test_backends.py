"""Which pystray backend the tray picks on Linux, decided against a real session bus."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.desktop import start_session_bus

REPO = Path(__file__).resolve().parents[2]

OWN_WATCHER = """
import sys
from gi.repository import Gio, GLib
bus = Gio.bus_get_sync(Gio.BusType.SESSION, None)
def acquired(*_):
    print("owned", flush=True)
Gio.bus_own_name_on_connection(bus, "org.kde.StatusNotifierWatcher", Gio.BusNameOwnerFlags.NONE, acquired, None)
GLib.MainLoop().run()
"""

CHOOSE = "from ui.app import choose_linux_backend; print(choose_linux_backend())"


@pytest.fixture
def session_bus(tmp_path: Path) -> Iterator[str]:
    if shutil.which("dbus-daemon") is None:
        pytest.skip("dbus-daemon is not installed (scripts/apt-packages.txt lists it)")
    proc, address = start_session_bus(tmp_path)
    try:
        yield address
    finally:
        proc.terminate()
        proc.wait(10)


def choose(env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "PYSTRAY_BACKEND"}
    result = subprocess.run([sys.executable, "-c", CHOOSE], env={**clean, **env}, capture_output=True, text=True,
                            timeout=60, cwd=REPO, check=True)
    return result.stdout.strip()


def test_xembed_tray_gets_the_gtk_status_icon(session_bus: str) -> None:
    assert choose({"DBUS_SESSION_BUS_ADDRESS": session_bus}) == "gtk"


def test_status_notifier_host_gets_appindicator(session_bus: str) -> None:
    pytest.importorskip("gi")
    env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": session_bus}
    owner = subprocess.Popen([sys.executable, "-c", OWN_WATCHER], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "owned"
        assert choose({"DBUS_SESSION_BUS_ADDRESS": session_bus}) == "appindicator"
    finally:
        owner.terminate()
        owner.wait(10)


def test_no_bus_leaves_the_choice_to_pystray(tmp_path: Path) -> None:
    assert choose({"DBUS_SESSION_BUS_ADDRESS": f"unix:path={tmp_path}/none"}) == "None"


def test_an_explicit_backend_wins(session_bus: str) -> None:
    assert choose({"DBUS_SESSION_BUS_ADDRESS": session_bus, "PYSTRAY_BACKEND": "xorg"}) == "xorg"
