"""A real, headless desktop for the tray tests and bench/tray.py: Xvfb, a session D-Bus, trayer as
the tray host, dunst as the notification server (a rule whose script appends every notification to a file), xdotool to
click and type, ImageMagick's ``import`` for screenshots. Everything is started by ``Desktop.start``
and stopped by ``Desktop.stop`` through its own process handle.

``start_tray`` runs ``hflocal tray`` inside that desktop, as a user would.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from PIL import Image

from tests.support.worker import wait_until

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("Xvfb", "dbus-daemon", "trayer", "dunst", "dunstctl", "xdotool", "import", "xwininfo", "xdpyinfo", "xclip")
SCREEN = (1024, 768)
PANEL_HEIGHT = 32

DUNSTRC = """\
[global]
    font = DejaVu Sans 9
    offset = 10x40
    width = 360
    origin = top-right
    max_icon_size = 32
[log_everything]
    summary = "*"
    script = {script}
"""

BUS_CONFIG = """\
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <!-- A session bus without service activation: nobody else's dunst (or notification daemon) is
       started behind our back when a client calls org.freedesktop.Notifications first. -->
  <type>session</type>
  <listen>unix:tmpdir={tmp}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""

LOG_SCRIPT = """\
#!/bin/sh
# dunst passes: appname summary body icon urgency
printf '%s\\t%s\\t%s\\n' "$1" "$2" "$(printf '%s' "$3" | tr '\\n\\t' '  ')" >> "{log}"
"""


def start_session_bus(root: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """A private session bus (``BUS_CONFIG``: no service activation); returns it and its address."""
    config = root / "session-bus.conf"
    config.write_text(BUS_CONFIG.format(tmp=root))
    proc = subprocess.Popen(["dbus-daemon", f"--config-file={config}", "--nofork", "--nopidfile", "--print-address=1"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    address = proc.stdout.readline().decode().strip()
    if not address:
        proc.kill()
        proc.wait(10)
        raise RuntimeError("dbus-daemon printed no address")
    return proc, address


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


@dataclass(frozen=True)
class Notification:
    app: str
    summary: str
    body: str


@dataclass
class Desktop:
    root: Path
    display: str = ""
    bus_address: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 30.0) -> Desktop:
        self.root.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # -displayfd can race with another X server starting at the same moment
            self._start_xvfb(timeout)
            self.wait(lambda: self._display_answers() or self.procs["xvfb"].poll() is not None, timeout, "Xvfb")
            if self._display_answers():
                break
            self.stop()
        else:
            raise RuntimeError(f"Xvfb did not start: {(self.root / 'xvfb.log').read_text(errors='replace')}")
        self._start_bus()
        self._start_trayer(timeout)
        script = self.root / "log-notification.sh"
        script.write_text(LOG_SCRIPT.format(log=self.notifications_log))
        script.chmod(0o755)
        rc = self.root / "dunstrc"
        rc.write_text(DUNSTRC.format(script=script))
        self.notifications_log.touch()
        self._spawn("dunst", ["dunst", "-config", str(rc)])
        self.wait(lambda: self._run(["dunstctl", "is-paused"]).returncode == 0, timeout, "dunst on the session bus")
        return self

    def _trayer_up(self) -> bool:
        return bool(self.xdotool("search", "--onlyvisible", "--class", "trayer", check=False).strip())

    def _start_trayer(self, timeout: float) -> None:
        for _ in range(3):
            self._spawn("trayer", ["trayer", "--edge", "top", "--align", "right", "--widthtype", "pixel", "--width", "240",
                                   "--heighttype", "pixel", "--height", str(PANEL_HEIGHT), "--SetDockType", "true",
                                   "--expand", "false", "--transparent", "false", "--tint", "0xdddddd"])
            self.wait(lambda: self._trayer_up() or self.procs["trayer"].poll() is not None, timeout, "trayer")
            if self._trayer_up():
                return
        raise RuntimeError(f"trayer did not start: {(self.root / 'trayer.log').read_text(errors='replace')}")

    def stop(self) -> None:
        for name in ("dunst", "trayer", "dbus", "xvfb"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def _start_xvfb(self, timeout: float) -> None:
        read_fd, write_fd = os.pipe()
        proc = subprocess.Popen(
            ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", f"{SCREEN[0]}x{SCREEN[1]}x24", "-nolisten", "tcp",
             "-noreset"],  # without it the server resets whenever its last client leaves
            pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=open(self.root / "xvfb.log", "wb"),
        )
        os.close(write_fd)
        self.procs["xvfb"] = proc
        with os.fdopen(read_fd, "rb") as pipe:
            number = b""
            deadline = time.monotonic() + timeout
            while not number.endswith(b"\n") and time.monotonic() < deadline:
                chunk = pipe.read(1)
                if not chunk:
                    break
                number += chunk
        if not number.strip():
            raise RuntimeError(f"Xvfb did not start: {(self.root / 'xvfb.log').read_text(errors='replace')}")
        self.display = f":{int(number)}"

    def _display_answers(self) -> bool:
        return self.procs["xvfb"].poll() is None and self._run(["xdpyinfo"], timeout=10).returncode == 0

    def _start_bus(self) -> None:
        self.procs["dbus"], self.bus_address = start_session_bus(self.root, self.env())

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / f"{name}.log", "wb")  # closed with the process
        self.procs[name] = subprocess.Popen(argv, env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        log.close()

    # ------------------------------------------------------------------ environment and tools

    def env(self, **extra: str) -> dict[str, str]:
        """An environment inside this desktop (no ``PYSTRAY_BACKEND``: the tray picks its own)."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYSTRAY_BACKEND", "WAYLAND_DISPLAY")}
        env.update(DISPLAY=self.display, NO_AT_BRIDGE="1", GTK_A11Y="none", XDG_SESSION_TYPE="x11")
        if self.bus_address:
            env["DBUS_SESSION_BUS_ADDRESS"] = self.bus_address
        env.update(extra)
        return env

    def _run(self, argv: list[str], timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env=self.env(), capture_output=True, text=True, timeout=timeout, check=False)

    def xdotool(self, *args: str, check: bool = True) -> str:
        result = self._run(["xdotool", *args])
        if check and result.returncode != 0:
            raise RuntimeError(f"xdotool {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def key(self, *keys: str) -> None:
        for k in keys:
            self.xdotool("key", k)
            time.sleep(0.15)  # let GTK move the selection before the next key

    @staticmethod
    def wait(predicate, timeout: float, what: str, interval: float = 0.1):  # type: ignore[no-untyped-def]
        return wait_until(predicate, timeout, what, interval)

    # ------------------------------------------------------------------ windows

    def windows(self, cls: str = "hflocal") -> list[int]:
        out = self.xdotool("search", "--onlyvisible", "--class", cls, check=False)
        return [int(w) for w in out.split()]

    def geometry(self, window: int) -> tuple[int, int, int, int]:
        out = self._run(["xwininfo", "-id", str(window)]).stdout
        values = {}
        for line in out.splitlines():
            line = line.strip()
            for name in ("Absolute upper-left X", "Absolute upper-left Y", "Width", "Height"):
                if line.startswith(name + ":"):
                    values[name] = int(line.split(":")[1])
        return (values["Absolute upper-left X"], values["Absolute upper-left Y"], values["Width"], values["Height"])

    def tray_icon(self, timeout: float = 60.0) -> int:
        """The tray icon's window: an ``hflocal`` window embedded in trayer's panel."""

        def find() -> int | None:
            for window in self.windows():
                x, y, w, h = self.geometry(window)
                if y < PANEL_HEIGHT and w > 4 and h > 4 and x > SCREEN[0] // 2:
                    return window
            return None

        return int(self.wait(find, timeout, "the tray icon inside trayer"))

    def menus(self, icon: int) -> list[int]:
        return [w for w in self.windows() if w != icon and self.geometry(w)[1] >= PANEL_HEIGHT - 2]

    def open_menu(self, icon: int, button: int = 3, timeout: float = 10.0) -> int:
        """Click the icon and return the menu's window once it is on screen."""
        self.xdotool("mousemove", "--window", str(icon), "8", "8", "click", str(button))

        def first_menu() -> int | None:
            menus = self.menus(icon)
            return menus[0] if menus else None

        return int(self.wait(first_menu, timeout, "the tray menu"))

    def close_menus(self, icon: int, timeout: float = 10.0) -> None:
        for _ in range(4):
            if not self.menus(icon):
                return
            self.xdotool("key", "Escape")
            time.sleep(0.2)
        self.wait(lambda: not self.menus(icon), timeout, "the menu to close")

    # ------------------------------------------------------------------ pictures

    def screenshot(self, path: Path, window: int | None = None, region: tuple[int, int, int, int] | None = None) -> Image.Image:
        """Save a PNG of the screen (or a window, or an ``x, y, w, h`` region of the screen)."""
        full = self.root / f"shot-{time.monotonic_ns()}.png"
        target = str(window) if window is not None else "root"
        result = self._run(["import", "-window", target, str(full)], timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"import failed: {result.stderr}")
        with Image.open(full) as img:
            img.load()
            shot = img.convert("RGBA")
        if region is not None:
            x, y, w, h = region
            shot = shot.crop((x, y, x + w, y + h))
        shot.save(path)
        return shot

    # ------------------------------------------------------------------ notifications

    @property
    def notifications_log(self) -> Path:
        return self.root / "notifications.log"

    def notifications(self) -> list[Notification]:
        rows = []
        for line in self.notifications_log.read_text(errors="replace").splitlines():
            parts = (line.split("\t") + ["", "", ""])[:3]
            rows.append(Notification(*parts))
        return rows

    def wait_notification(self, summary: str, timeout: float, contains: str = "") -> Notification:
        def find() -> Notification | None:
            for n in self.notifications():
                if n.summary == summary and contains in n.body:
                    return n
            return None

        return self.wait(find, timeout, f"a {summary!r} notification at dunst (saw {self.notifications()!r}; "
                                        f"dunst said: {(self.root / 'dunst.log').read_text(errors='replace')[-2000:]})")

    def reset_notifications(self) -> None:
        """Close what dunst shows and forget what it logged (each test sees only its own)."""
        self._run(["dunstctl", "close-all"])
        self.notifications_log.write_text("")


@dataclass
class TrayProcess:
    proc: subprocess.Popen[bytes]
    log: Path
    workers: set[int] = field(default_factory=set)

    def worker_pids(self) -> list[int]:
        """The tray's worker children now (remembered, so the test can make sure they end)."""
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []
        pids = [c.pid for c in children if "serve" in c.cmdline()]
        self.workers.update(pids)
        return pids

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (the tray's Quit), then SIGKILL; leftover workers are killed too."""
        self.worker_pids()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for pid in self.workers:
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        return self.proc.returncode


def start_tray(desktop: Desktop, home: Path, *, env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> TrayProcess:
    desktop.reset_notifications()
    log = home.parent / f"tray-{time.monotonic_ns()}.log"
    # XDG_CONFIG_HOME: "Start at login" reads (and may write) the autostart entry there, never the real one
    base = {"HFLOCAL_HOME": str(home), "PYTHONUNBUFFERED": "1", "XDG_CONFIG_HOME": str(home.parent / "xdg-config")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "tray", *args],
            env=desktop.env(**{**base, **(env or {})}),
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
        )
    return TrayProcess(proc=proc, log=log)


def color_near(img: Image.Image, color: tuple[int, int, int, int], tolerance: int = 40) -> bool:
    """Whether some pixel of ``img`` is within ``tolerance`` (per channel) of ``color``."""
    rgb = img.convert("RGB")
    target = color[:3]
    for _, c in rgb.getcolors(rgb.width * rgb.height) or []:
        assert isinstance(c, tuple)
        if all(abs(a - b) <= tolerance for a, b in zip(c, target, strict=True)):
            return True
    return False


__all__ = ["Desktop", "Notification", "TrayProcess", "color_near", "missing_tools", "start_tray"]
