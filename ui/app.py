"""``hflocal tray``: put the icon up, run and supervise the agent, quit cleanly.

pystray's ``run()`` owns the main thread. SIGTERM and SIGINT do what Quit does (stop the worker
politely, then leave the loop); with the GTK backends the handlers are installed from inside the
GLib loop, because pystray resets SIGINT when its loop starts. One tray per home (``tray.lock``).
"""

from __future__ import annotations

import fcntl
import logging
import logging.handlers
import os
import signal
import sys
from pathlib import Path
from typing import IO, Any

from ipc.client import agent_json_path

log = logging.getLogger("hflocal.tray")

XORG_MESSAGE = (
    "hflocal: only pystray's xorg backend is available here, which has no menu: the icon shows the "
    "agent's state; manage it from the settings page or the hflocal CLI. For the full menu install PyGObject "
    "with GTK 3 (and AyatanaAppIndicator3): `pip install 'hflocal[tray]'` after the system packages listed in "
    "the README."
)


class TrayError(RuntimeError):
    """The tray cannot start; the message is one line for the user."""


def _setup_logging(home: Path) -> None:
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handler = logging.handlers.RotatingFileHandler(
        logs / "tray.log", maxBytes=2_000_000, backupCount=2, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    stream = logging.StreamHandler(sys.stderr)
    stream.setLevel(logging.WARNING)
    stream.setFormatter(logging.Formatter("hflocal tray: %(message)s"))
    root.addHandler(stream)
    root.setLevel(logging.INFO)


def _take_lock(home: Path) -> IO[str]:
    handle = open(home / "tray.lock", "a+")  # held for the life of the tray
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise TrayError(f"a tray is already running for {home}") from None
    return handle


def _name_the_app() -> None:
    """Give GTK windows the class ``hflocal`` (tray hosts, and tests, find the icon by it)."""
    try:
        import gi

        gi.require_version("GLib", "2.0")
        from gi.repository import GLib

        GLib.set_prgname("hflocal")
        GLib.set_application_name("hflocal")
    except (ImportError, ValueError):
        pass


def run_tray(home: Path | None = None) -> int:
    home = Path(home) if home is not None else agent_json_path(None).parent
    home.mkdir(parents=True, exist_ok=True)
    try:
        lock = _take_lock(home)
    except TrayError as exc:
        print(f"hflocal: {exc}", file=sys.stderr)
        return 1
    try:
        return _run(home)
    finally:
        lock.close()


def _has_status_notifier_host() -> bool | None:
    """Whether a StatusNotifier (AppIndicator) host is on the session bus; ``None`` if unknown."""
    try:
        import gi

        gi.require_version("Gio", "2.0")
        from gi.repository import Gio, GLib

        bus = Gio.bus_get_sync(Gio.BusType.SESSION, None)
        reply = bus.call_sync(
            "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "NameHasOwner",
            GLib.Variant("(s)", ("org.kde.StatusNotifierWatcher",)), GLib.VariantType("(b)"),
            Gio.DBusCallFlags.NONE, 2000, None,
        )
        return bool(reply.unpack()[0])
    except Exception:  # no gi, no bus: let pystray choose
        return None


def _appindicator_available() -> bool:
    import gi

    for name in ("AyatanaAppIndicator3", "AppIndicator3"):
        try:
            gi.require_version(name, "0.1")
            return True
        except ValueError:
            continue
    return False


def choose_linux_backend() -> str | None:
    """AppIndicator where a StatusNotifier host shows it (GNOME with the extension, KDE, XFCE...),
    else GTK's status icon for XEmbed trays (trayer, stalonetray, older panels), which also tells us
    the exact icon size so the icon is drawn for it rather than scaled. ``PYSTRAY_BACKEND`` wins."""
    if os.environ.get("PYSTRAY_BACKEND"):
        return os.environ["PYSTRAY_BACKEND"]
    has_host = _has_status_notifier_host()
    if has_host is None:
        return None
    backend = "appindicator" if has_host and _appindicator_available() else "gtk"
    os.environ["PYSTRAY_BACKEND"] = backend
    return backend


def _import_pystray() -> Any:
    """pystray picks its backend at import; without a display that fails with Xlib's own errors."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise TrayError("no graphical session (DISPLAY is not set); run the agent headless with `hflocal serve`")
    if sys.platform.startswith("linux"):
        choose_linux_backend()
    try:
        import pystray
    except Exception as exc:  # ImportError, or Xlib's DisplayNameError/DisplayConnectionError
        raise TrayError(
            f"no tray backend is usable here ({exc}); run the agent headless with `hflocal serve`"
        ) from None
    return pystray


def _run(home: Path) -> int:
    _setup_logging(home)
    _name_the_app()
    try:
        pystray = _import_pystray()
    except TrayError as exc:
        print(f"hflocal: {exc}", file=sys.stderr)
        return 1

    import assets
    from installers import autostart
    from ui.controller import Controller
    from ui.icons import IconState, render
    from ui.menu import OpenSettings
    from ui.notify import Notifier
    from ui.tray import ICON_SIZE, PystrayView, backend_name, uses_glib

    backend = backend_name()
    log.info("tray starting with the %s backend for %s", backend, home)
    default = None
    if backend == "xorg":
        print(XORG_MESSAGE, file=sys.stderr)
    if backend in ("xorg", "gtk"):
        default = OpenSettings()  # a plain click on these icons runs the default item (bold in the menu)

    icon = pystray.Icon("hflocal", render(IconState("starting"), ICON_SIZE), "hflocal: starting")

    def fallback(title: str, body: str) -> None:
        if not icon.HAS_NOTIFICATION:
            raise RuntimeError(f"the {backend} backend cannot show notifications")
        icon.notify(body, title)

    notifier = Notifier(icon_path=assets.path("logo-64.png"), fallback=fallback)
    holder: dict[str, Controller] = {}
    view = PystrayView(icon, lambda action: holder["c"].submit(action), notifier, default=default)
    controller = Controller(home, view, autostart=autostart)
    holder["c"] = controller
    view.apply(controller.snapshot)
    view.follow_icon_size()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("signal %s: quitting", signal.Signals(signum).name)
        controller.quit()

    def install_handlers() -> bool:
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        return False

    if uses_glib(backend):
        from gi.repository import GLib

        GLib.idle_add(install_handlers)  # runs on the main thread once the loop is up
    else:
        install_handlers()

    def setup(icon: Any) -> None:
        icon.visible = True
        controller.start()

    try:
        icon.run(setup=setup)
    finally:
        controller.quit()
        controller.wait_stopped(60)
        notifier.close()
        log.info("tray stopped")
    return 0


__all__ = ["XORG_MESSAGE", "TrayError", "run_tray"]
