"""The pystray side: turns snapshots into the icon, its tooltip and its menu.

``PystrayView`` implements ``ui.controller.View``. It redraws the icon only when its ``IconState``
changes and rebuilds the menu only when ``menu_entries`` change; updates are coalesced so a burst
of progress events costs at most a few redraws a second. Menu callbacks only call ``submit``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pystray

from ui.icons import IconState, icon_state, render
from ui.menu import Action, Entry, Item, Separator, menu_entries, title_text
from ui.notify import Notifier
from ui.state import Notice, Snapshot

log = logging.getLogger("hflocal.tray")

ICON_SIZE = 64
MIN_UPDATE_INTERVAL_S = 0.25
MENU_OPEN_RETRY_S = 0.5
XORG_EXIT_GRACE_S = 3.0


def _exit_now() -> None:
    log.info("tray stopped (xorg backend)")
    logging.shutdown()
    os._exit(0)


def backend_name() -> str:
    """Which pystray backend this process got: ``appindicator``, ``gtk``, ``xorg``, ``darwin``..."""
    name = pystray.Icon.__module__.rsplit("._", 1)[-1]
    return "dummy" if name == "base" else name  # the dummy backend re-exports the base Icon


def uses_glib(backend: str | None = None) -> bool:
    return (backend or backend_name()) in ("appindicator", "gtk")


def to_pystray(
    items: tuple[Item, ...], submit: Callable[[Action], None], default: Action | None = None
) -> pystray.Menu:
    """pystray menu for ``items``; a click only calls ``submit(action)``. ``default``: the action
    that a plain click on the icon runs where the backend has no menu (xorg)."""

    def convert(item: Item) -> Any:
        if isinstance(item, Separator):
            return pystray.Menu.SEPARATOR
        assert isinstance(item, Entry)
        if item.submenu is not None:
            return pystray.MenuItem(item.text, pystray.Menu(*(convert(i) for i in item.submenu)), enabled=item.enabled)
        action = item.action

        def on_click(icon: Any, menu_item: Any) -> None:
            if action is not None:
                submit(action)

        checked = None if item.checked is None else (lambda _i, value=item.checked: value)
        return pystray.MenuItem(
            item.text,
            on_click,
            checked=checked,
            radio=item.radio,
            enabled=item.enabled,
            default=default is not None and action == default,
        )

    return pystray.Menu(*(convert(i) for i in items))


def copy_with_command(text: str, platform: str = sys.platform) -> bool:
    """Clipboard without a toolkit: pbcopy, clip, wl-copy, xclip or xsel, whichever exists."""
    if platform == "darwin":
        candidates = [["pbcopy"]]
    elif platform == "win32":
        candidates = [["clip"]]
    else:
        candidates = [["wl-copy"], ["xclip", "-selection", "clipboard"], ["xsel", "--clipboard", "--input"]]
    for command in candidates:
        if shutil.which(command[0]) is None:
            continue
        try:
            subprocess.run(command, input=text.encode(), timeout=5, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return True
        except (OSError, subprocess.SubprocessError):
            continue
    return False


class PystrayView:
    def __init__(
        self, icon: pystray.Icon, submit: Callable[[Action], None], notifier: Notifier, *,
        default: Action | None = None,
    ) -> None:
        self.icon = icon
        self.submit = submit
        self.notifier = notifier
        self.default = default
        self.backend = backend_name()
        self._lock = threading.Lock()
        self._pending: Snapshot | None = None
        self._timer: threading.Timer | None = None
        self._last_apply = 0.0
        self._entries: tuple[Item, ...] | None = None
        self._icon_state: IconState | None = None
        self._title: str | None = None
        self.menu_builds = 0
        self.size = ICON_SIZE
        self._latest: Snapshot | None = None

    # ------------------------------------------------------------------ View

    def show(self, snapshot: Snapshot) -> None:
        with self._lock:
            self._latest = snapshot
            self._pending = snapshot
            if self._timer is not None:
                return
            delay = max(0.0, self._last_apply + MIN_UPDATE_INTERVAL_S - time.monotonic())
            self._timer = threading.Timer(delay, self._flush)
            self._timer.daemon = True
            self._timer.start()

    def notify(self, notice: Notice) -> None:
        self.notifier.notify(notice)

    def copy_text(self, text: str) -> bool:
        if uses_glib(self.backend):
            return self._copy_gtk(text)
        return copy_with_command(text)

    def stop(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
        self.icon.stop()
        if self.backend == "xorg":
            # pystray's xorg loop waits for an X event that stop() from another thread never sends;
            # everything is already shut down by now, so end the process if the loop does not.
            timer = threading.Timer(XORG_EXIT_GRACE_S, _exit_now)
            timer.daemon = True
            timer.start()

    def follow_icon_size(self) -> bool:
        """With GTK's status icon, redraw the icon at the size the tray gives it (crisp, not scaled)."""
        status_icon = getattr(self.icon, "_status_icon", None)  # pystray's gtk backend
        if status_icon is None:
            return False

        def on_size(_status_icon: Any, size: int) -> bool:
            self.set_size(int(size))
            return False  # GTK scales the current image until ours arrives

        status_icon.connect("size-changed", on_size)
        return True

    def set_size(self, size: int) -> None:
        size = max(16, min(256, size))
        with self._lock:
            if size == self.size:
                return
            self.size = size
            state = self._icon_state
        log.info("the tray gives the icon %d px", size)
        if state is not None:
            self.icon.icon = render(state, size)

    # ------------------------------------------------------------------ applying

    def _flush(self) -> None:
        with self._lock:
            snapshot, self._pending, self._timer = self._pending, None, None
            self._last_apply = time.monotonic()
        if snapshot is not None:
            try:
                self.apply(snapshot)
            except Exception:
                log.exception("could not update the tray icon")

    def apply(self, snapshot: Snapshot) -> None:
        """Bring icon, tooltip and menu in line with ``snapshot``, touching only what changed
        (on the GTK thread where the backend has one)."""
        if uses_glib(self.backend):
            from gi.repository import GLib

            GLib.idle_add(self._apply_now, snapshot)
        else:
            self._apply_now(snapshot)

    def _menu_open(self) -> bool:
        """Whether the user has the menu open now (GTK backends; called on the GTK thread)."""
        handle = getattr(self.icon, "_menu_handle", None)
        try:
            return bool(handle is not None and handle.get_visible())
        except Exception:  # a backend without GTK menus
            return False

    def _apply_now(self, snapshot: Snapshot) -> bool:
        try:
            self._update(snapshot)
        except Exception:
            log.exception("could not update the tray icon")
        return False

    def _update(self, snapshot: Snapshot) -> None:
        state = icon_state(snapshot)
        if state != self._icon_state:
            self._icon_state = state
            self.icon.icon = render(state, self.size)
        title = title_text(snapshot)
        if self.backend == "xorg":  # WM_NAME is Latin-1 there
            title = title.replace("\u2026", "...").replace("\u2014", "-").encode("latin-1", "replace").decode("latin-1")
        if title != self._title:
            self._title = title
            self.icon.title = title
            status_icon = getattr(self.icon, "_status_icon", None)  # gtk: the title is not the tooltip
            if status_icon is not None:
                status_icon.set_tooltip_text(title)
        entries = menu_entries(snapshot)
        if entries != self._entries:
            if self._menu_open():
                # Replacing an open menu would close it under the user's pointer: its labels wait
                # (download percentages freeze) until it closes.
                timer = threading.Timer(MENU_OPEN_RETRY_S, self._retry)
                timer.daemon = True
                timer.start()
                return
            self._entries = entries
            self.menu_builds += 1
            self.icon.menu = to_pystray(entries, self.submit, self.default)

    def _retry(self) -> None:
        latest = self._latest
        if latest is not None:
            self.show(latest)

    def _copy_gtk(self, text: str) -> bool:
        from gi.repository import Gdk, GLib, Gtk

        def set_clipboard() -> bool:
            clipboard = Gtk.Clipboard.get(Gdk.SELECTION_CLIPBOARD)
            clipboard.set_text(text, -1)
            clipboard.store()
            return False

        GLib.idle_add(set_clipboard)
        return True


__all__ = ["PystrayView", "backend_name", "copy_with_command", "to_pystray", "uses_glib"]
