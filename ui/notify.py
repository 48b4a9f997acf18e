"""Desktop notifications that never take the tray down.

On Linux they go over D-Bus with ``desktop-notifier`` (org.freedesktop.Notifications: dunst, GNOME,
KDE...); elsewhere, or when that fails, through the fallback the tray gives (pystray's
``Icon.notify``); when nothing can show them they are only logged. Sending happens on one background
thread with its own asyncio loop, so ``notify`` returns at once whatever D-Bus does.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from ui.state import Notice

log = logging.getLogger("hflocal.tray.notify")

SEND_TIMEOUT_S = 5.0
MAX_BODY_CHARS = 240
"""Notification servers show a few lines; the rest of a long error is in the logs."""
APP_NAME = "hflocal"

Fallback = Callable[[str, str], None]
"""``fallback(title, body)``: e.g. ``lambda t, b: icon.notify(b, t)``."""


class Notifier:
    def __init__(
        self, *, icon_path: Path | None = None, fallback: Fallback | None = None, use_dbus: bool | None = None
    ) -> None:
        self.icon_path = icon_path
        self.fallback = fallback
        self.use_dbus = sys.platform.startswith("linux") if use_dbus is None else use_dbus
        self._queue: queue.Queue[Notice | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="hflocal-notify", daemon=True)
        self._started = False
        self.sent: list[tuple[str, Notice]] = []
        """``(channel, notice)`` for every notice delivered: ``dbus``, ``fallback`` or ``log``."""

    def notify(self, notice: Notice) -> None:
        if len(notice.body) > MAX_BODY_CHARS:
            notice = Notice(notice.kind, notice.title, notice.body[: MAX_BODY_CHARS - 1] + "\u2026")
        if not self._started:
            self._started = True
            self._thread.start()
        self._queue.put(notice)

    def close(self, timeout: float = SEND_TIMEOUT_S + 1) -> None:
        if self._started:
            self._queue.put(None)
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        notifier = None
        try:
            while True:
                notice = self._queue.get()
                if notice is None:
                    return
                if self.use_dbus:
                    if notifier is None:
                        notifier = self._make_dbus()
                    if notifier is not None and loop.run_until_complete(self._send_dbus(notifier, notice)):
                        self.sent.append(("dbus", notice))
                        continue
                self._send_fallback(notice)
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def _make_dbus(self) -> object | None:
        logging.getLogger("desktop_notifier").setLevel(logging.ERROR)  # its failures are ours to report
        try:
            from desktop_notifier import DesktopNotifier, Icon

            icon = Icon(path=self.icon_path) if self.icon_path is not None else None
            return DesktopNotifier(app_name=APP_NAME, app_icon=icon)
        except Exception as exc:  # missing package or no D-Bus: fall back
            log.info("desktop notifications over D-Bus are unavailable: %s", exc)
            self.use_dbus = False
            return None

    async def _send_dbus(self, notifier: object, notice: Notice) -> bool:
        # desktop-notifier logs and swallows its own failures; ``on_dispatched`` runs only on success.
        dispatched: list[bool] = []
        try:
            await asyncio.wait_for(
                notifier.send(title=notice.title, message=notice.body,  # type: ignore[attr-defined]
                              on_dispatched=lambda: dispatched.append(True)),
                SEND_TIMEOUT_S,
            )
        except Exception as exc:  # no notification service is not an error for the tray
            log.info("D-Bus notification failed (%s); using the fallback", exc)
            return False
        if not dispatched:
            log.info("no D-Bus notification service took the notification; using the fallback")
        return bool(dispatched)

    def _send_fallback(self, notice: Notice) -> None:
        if self.fallback is not None:
            try:
                self.fallback(notice.title, notice.body)
                self.sent.append(("fallback", notice))
                return
            except Exception as exc:
                log.info("fallback notification failed: %s", exc)
        log.warning("notification: %s: %s", notice.title, notice.body)
        self.sent.append(("log", notice))


__all__ = ["Notifier"]
