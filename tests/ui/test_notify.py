"""Notifications never crash the tray: no bus, or a bus without a notification service, falls back."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.desktop import start_session_bus
from ui.notify import Notifier
from ui.state import Notice

NOTICE = Notice("download_finished", "Download finished", "tiny-a (q4), 1.0 MB")


@pytest.fixture
def bus_without_notifications(tmp_path: Path) -> Iterator[str]:
    """A real session bus on which nobody owns org.freedesktop.Notifications."""
    if shutil.which("dbus-daemon") is None:
        pytest.skip("dbus-daemon is not installed (scripts/apt-packages.txt lists it)")
    proc, address = start_session_bus(tmp_path)
    try:
        yield address
    finally:
        proc.terminate()
        proc.wait(10)


def deliver(notifier: Notifier) -> list[tuple[str, Notice]]:
    notifier.notify(NOTICE)
    notifier.close()
    return notifier.sent


def test_no_bus_at_all_uses_the_fallback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")
    shown: list[tuple[str, str]] = []
    sent = deliver(Notifier(use_dbus=True, fallback=lambda title, body: shown.append((title, body))))
    assert sent == [("fallback", NOTICE)]
    assert shown == [("Download finished", "tiny-a (q4), 1.0 MB")]


def test_bus_without_a_notification_service_and_a_failing_fallback_only_logs(
    monkeypatch: pytest.MonkeyPatch, bus_without_notifications: str
) -> None:
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", bus_without_notifications)

    def broken(title: str, body: str) -> None:
        raise RuntimeError("this backend cannot notify")

    assert deliver(Notifier(use_dbus=True, fallback=broken)) == [("log", NOTICE)]


def test_without_dbus_the_fallback_is_used_directly() -> None:
    shown: list[str] = []
    assert deliver(Notifier(use_dbus=False, fallback=lambda t, b: shown.append(t))) == [("fallback", NOTICE)]
    assert shown == ["Download finished"]
