"""End to end: ``hflocal tray`` in a real (virtual) desktop, driven with the mouse and keyboard.

Xvfb + session D-Bus + trayer + dunst (``tests/support/desktop.py``). The tray runs as a user would
start it, on a temp home with two tiny models installed from the local test hub; what it shows is
checked on screen (screenshots kept in ``test-artifacts/``), at dunst (notifications) and through
the worker's own API (``/health``, ZeroMQ).
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipc.client import Client
from ipc.connection import AgentNotRunning, pid_alive, read_connection
from ipc.messages import Download, ListInstalled, Status
from tests.hubserver import HubRepos, HubServer
from tests.support.agentproc import AgentProcess, start_agent
from tests.support.desktop import Desktop, TrayProcess, color_near, missing_tools, start_tray
from tests.support.tray import configure_ports, health, port_free, publish_tiny
from ui.icons import COLORS

pytestmark = pytest.mark.desktop

MODELS = ("onnx-community/tiny-a", "onnx-community/tiny-b")
EXTRA = "onnx-community/tiny-c"


@pytest.fixture(scope="module")
def desktop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desktop]:
    missing = missing_tools()
    if missing:
        pytest.skip(f"desktop tools missing: {', '.join(missing)} (scripts/apt-packages.txt lists their packages)")
    d = Desktop(tmp_path_factory.mktemp("desktop"))
    try:
        yield d.start()
    finally:
        d.stop()


@pytest.fixture
def hub_models(hub: HubServer, hub_repos: HubRepos, hf_env: Path, tmp_path: Path) -> HubServer:
    for i, model_id in enumerate(MODELS):
        publish_tiny(hub_repos, model_id, tmp_path / "repos" / model_id.split("/")[1], reply=f"I am model {i}.")
    # The one downloaded while the tray watches carries a 12 MiB external-data file: the client reads
    # 10 MiB at a time, and a download notices a cancel between reads.
    publish_tiny(hub_repos, EXTRA, tmp_path / "repos" / "tiny-c", reply="I am model 2.",
                 extra={"onnx/model_q4.onnx_data": random.Random(7).randbytes(12 * 2**20)})
    return hub


def install_models(home: Path, model_ids: tuple[str, ...]) -> list[str]:
    """Install through a short-lived headless agent (the real download path); returns the keys."""
    agent = start_agent(home)
    try:
        keys = []
        with Client(home, timeout=30) as client:
            for model_id in model_ids:
                key = client.call(Download(model_id=model_id)).key
                keys.append(key)
                Desktop.wait(lambda key=key: any(m.key == key and m.status == "ready"
                                                 for m in client.call(ListInstalled()).models), 60, f"{model_id} installed")
        return keys
    finally:
        assert agent.stop() == 0


@pytest.fixture
def tray_home(hermetic_home: Path, hub_models: HubServer) -> tuple[Path, list[str], tuple[int, int, int]]:
    keys = install_models(hermetic_home, MODELS)
    ports = configure_ports(hermetic_home)
    return hermetic_home, keys, ports


@pytest.fixture
def trays() -> Iterator[list[TrayProcess]]:
    started: list[TrayProcess] = []
    yield started
    for tray in started:
        tray.stop()


def fake_programs(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A browser (``BROWSER``) and an ``xdg-open`` on ``PATH`` that record what they were asked to open."""
    bin_dir = tmp_path / "fake bin"
    bin_dir.mkdir()
    record = tmp_path / "opened.txt"
    for name in ("fake-browser", "xdg-open"):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nprintf "{name} %s\\n" "$1" >> "{record}"\n')
        script.chmod(0o755)
    env = {"BROWSER": str(bin_dir / "fake-browser"), "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "XDG_CONFIG_HOME": str(tmp_path / "config home")}
    return env, record


def icon_shows(desktop: Desktop, icon: int, badge: str) -> bool:
    x, y, w, h = desktop.geometry(icon)
    shot = desktop.screenshot(desktop.root / "icon-probe.png", region=(x + w // 2, y + h // 2, w - w // 2, h - h // 2))
    return color_near(shot, COLORS[badge], tolerance=30)


def wait_ready(desktop: Desktop, tray: TrayProcess, http: int, timeout: float = 90) -> int:
    """The icon is in the tray, the API answers and the badge is green (the tray knows it all)."""
    icon = desktop.tray_icon(timeout)
    desktop.wait(lambda: health(http), timeout, f"/health on port {http}\n{tray.output()}")
    desktop.wait(lambda: icon_shows(desktop, icon, "ready"), timeout, f"the green badge\n{tray.output()}")
    return icon


def menu_region(desktop: Desktop, icon: int) -> tuple[int, int, int, int]:
    boxes = [desktop.geometry(w) for w in [icon, *desktop.menus(icon)]]
    left = max(0, min(b[0] for b in boxes) - 10)
    bottom = max(b[1] + b[3] for b in boxes) + 10
    return left, 0, 1024 - left, min(768, bottom)


@pytest.mark.parametrize("backend", ["auto", "appindicator"])
def test_tray_switches_models_downloads_restarts_and_quits(
    desktop: Desktop, tray_home: tuple[Path, list[str], tuple[int, int, int]], trays: list[TrayProcess],
    artifacts_dir: Path, tmp_path: Path, backend: str,
) -> None:
    """``auto`` picks GTK's status icon under trayer (an XEmbed tray, no StatusNotifier host);
    ``appindicator`` is what StatusNotifier desktops get, here in its XEmbed fallback."""
    home, keys, (http, req, pub) = tray_home
    env, _ = fake_programs(tmp_path)
    if backend != "auto":
        env["PYSTRAY_BACKEND"] = backend
    tray = start_tray(desktop, home, env=env)
    trays.append(tray)
    icon = wait_ready(desktop, tray, http)
    assert health(http)["model"] is None
    first_worker = read_connection(home / "agent.json").pid
    assert tray.worker_pids() == [first_worker]

    # the icon, its tooltip and the open menu, as a person sees them
    x, _, w, h = desktop.geometry(icon)
    desktop.screenshot(artifacts_dir / f"tray-{backend}-icon.png", region=(x - 4, 0, w + 8, h + 2))
    if backend == "auto":  # GTK's status icon has a tooltip; StatusNotifier hosts show the title instead
        desktop.xdotool("mousemove", "--window", str(icon), "8", "8")
        tip = desktop.wait(lambda: desktop.menus(icon), 30, "the tooltip")[0]
        desktop.screenshot(artifacts_dir / "tray-auto-tooltip.png", region=menu_region(desktop, icon))
        _, _, tw, th = desktop.geometry(tip)
        assert tw > 100 and th > 20  # several lines: model and address
        desktop.xdotool("mousemove", "0", "700")
        desktop.wait(lambda: not desktop.menus(icon), 30, "the tooltip to go")
    desktop.open_menu(icon)
    desktop.screenshot(artifacts_dir / f"tray-{backend}-menu.png", region=menu_region(desktop, icon))

    # Model ▸ tiny-b: Down selects "Model" (the status line is not selectable), Right opens it
    desktop.key("Down", "Right")
    desktop.wait(lambda: len(desktop.menus(icon)) >= 2, 10, "the Model submenu")
    desktop.screenshot(artifacts_dir / f"tray-{backend}-menu-models.png", region=menu_region(desktop, icon))
    desktop.key("Down", "Return")
    ready = desktop.wait(lambda: (hh := health(http)) and hh["model"] == keys[1] and hh["model_state"] == "ready" and hh,
                         60, f"/health to report {keys[1]}")
    assert ready["loaded"] == [keys[1]]
    desktop.close_menus(icon)
    if backend == "auto":  # the menu after the switch: tiny-b checked, named in the status line
        desktop.wait(lambda: icon_shows(desktop, icon, "ready"), 30, "the green badge after the switch")
        desktop.open_menu(icon)
        desktop.key("Down", "Right")
        desktop.wait(lambda: len(desktop.menus(icon)) >= 2, 10, "the Model submenu")
        desktop.screenshot(artifacts_dir / "tray-auto-menu-switched.png", region=menu_region(desktop, icon))
        desktop.close_menus(icon)

    # a download started over ZeroMQ ends in a "Download finished" notification at dunst
    with Client(home, timeout=30) as client:
        job = client.call(Download(model_id=EXTRA))
        notice = desktop.wait_notification("Download finished", 90, contains="tiny-c")
        assert notice.app == "hflocal" and "(q4)" in notice.body
        installed = {m.key: m.status for m in client.call(ListInstalled()).models}
        assert installed[job.key] == "ready"
    desktop.screenshot(artifacts_dir / f"tray-{backend}-notification.png", region=(1024 - 420, 0, 420, 200))

    # kill -9 the worker: the tray starts another, the API comes back, dunst hears about it
    os.kill(first_worker, signal.SIGKILL)
    desktop.wait(lambda: not pid_alive(first_worker), 10, "the killed worker to be gone")

    def new_worker() -> int | None:
        try:
            pid = read_connection(home / "agent.json").pid
        except AgentNotRunning:
            return None
        return pid if pid != first_worker else None

    second_worker = desktop.wait(new_worker, 90, f"a restarted worker\n{tray.output()}")
    back = desktop.wait(lambda: health(http), 60, "/health after the restart")
    assert back["status"] == "ok"
    desktop.wait_notification("hflocal runtime restarted", 60, contains="SIGKILL")
    assert tray.worker_pids() == [second_worker]
    desktop.wait(lambda: health(http)["model"] == keys[1], 60, "the active model to be remembered")

    # Quit from the menu: Up wraps round to the last item
    desktop.wait(lambda: icon_shows(desktop, icon, "ready"), 60, "the green badge after the restart")
    desktop.open_menu(icon)
    desktop.key("Up", "Return")
    assert tray.proc.wait(60) == 0, tray.output()
    assert not pid_alive(second_worker)
    assert not (home / "agent.json").exists()
    assert all(port_free(p) for p in (http, req, pub))
    assert "Traceback" not in tray.output(), tray.output()


def read_connection_pid(home: Path) -> int | None:
    try:
        return read_connection(home / "agent.json").pid
    except AgentNotRunning:
        return None


def test_menu_items_settings_copy_logs_login_cancel_restart(
    desktop: Desktop, tray_home: tuple[Path, list[str], tuple[int, int, int]], trays: list[TrayProcess], tmp_path: Path,
    artifacts_dir: Path, hub_models: HubServer,
) -> None:
    home, _, (http, _, _) = tray_home
    env, opened = fake_programs(tmp_path)
    tray = start_tray(desktop, home, env=env)
    trays.append(tray)
    icon = wait_ready(desktop, tray, http)
    info = read_connection(home / "agent.json")

    def click(downs: int) -> None:
        desktop.open_menu(icon)
        desktop.key(*(["Down"] * downs), "Return")
        desktop.wait(lambda: not desktop.menus(icon), 10, "the menu to close")

    # sensitive items from the top: Model 1, Downloads 2, Settings 3, Copy API URL 4, Start at login 5,
    # Restart runtime 6, Open logs 7, Quit 8
    click(3)
    desktop.wait(lambda: opened.exists() and f"fake-browser {info.http_url}/?token={info.token}" in opened.read_text(),
                 20, "the settings page to be opened with the token")
    click(4)
    clip = desktop.wait(lambda: desktop._run(["xclip", "-o", "-selection", "clipboard"]).stdout, 20, "the clipboard")
    assert clip == f"{info.http_url}/v1"
    click(7)
    desktop.wait(lambda: f"xdg-open {home / 'logs'}" in opened.read_text(), 20, "the logs folder to be opened")

    entry = Path(env["XDG_CONFIG_HOME"]) / "autostart" / "hflocal.desktop"
    assert not entry.exists()  # off by default
    click(5)
    desktop.wait(entry.exists, 20, "the autostart entry")
    assert str(home) in entry.read_text()
    desktop.open_menu(icon)
    desktop.screenshot(artifacts_dir / "tray-menu-start-at-login.png", region=menu_region(desktop, icon))
    desktop.close_menus(icon)
    click(5)
    desktop.wait(lambda: not entry.exists(), 20, "the autostart entry to be removed")

    # a slow download shows its progress under Downloads, and Cancel there stops it
    hub_models.control.add_fault(f"{EXTRA}/onnx/*", rate_limit_bytes_per_s=1_000_000, times=-1)
    with Client(home, timeout=30) as client:
        job = client.call(Download(model_id=EXTRA))
        desktop.wait(lambda: client.call(Status()).downloads, 60, "the download to run")
        desktop.wait(lambda: icon_shows(desktop, icon, "downloading"), 30, "the blue download badge")
        x, _, w, h = desktop.geometry(icon)
        desktop.screenshot(artifacts_dir / "tray-icon-downloading.png", region=(x - 4, 0, w + 8, h + 2))
        desktop.open_menu(icon)
        desktop.key("Down", "Down", "Right")  # Downloads ▸ (its first row is selected)
        desktop.wait(lambda: len(desktop.menus(icon)) >= 2, 10, "the Downloads submenu")
        desktop.key("Right")  # the row's submenu: the details line is not selectable, Cancel is
        desktop.wait(lambda: len(desktop.menus(icon)) >= 3, 10, "the download's submenu")
        desktop.screenshot(artifacts_dir / "tray-menu-download.png", region=menu_region(desktop, icon))
        desktop.key("Return")
        desktop.wait(lambda: not client.call(Status()).downloads, 30, "the download to be cancelled")
        assert {m.key: m.status for m in client.call(ListInstalled()).models}.get(job.key) != "ready"
    hub_models.control.clear_faults()
    desktop.close_menus(icon)
    assert not [n for n in desktop.notifications() if n.summary == "Download failed"]

    # Restart runtime: a new worker, the same API
    click(6)
    desktop.wait(lambda: (pid := read_connection_pid(home)) is not None and pid != info.pid, 60, "a new worker")
    desktop.wait(lambda: health(http), 60, "/health after Restart runtime")
    assert not pid_alive(info.pid)
    info = read_connection(home / "agent.json")

    # SIGTERM is Quit: the worker stops politely (agent.json removed) and the tray exits 0
    worker = info.pid
    tray.proc.send_signal(signal.SIGTERM)
    assert tray.proc.wait(60) == 0, tray.output()
    assert not pid_alive(worker) and not (home / "agent.json").exists()


def test_tray_attaches_to_a_headless_agent(
    desktop: Desktop, hermetic_home: Path, trays: list[TrayProcess], agents: list[AgentProcess],
) -> None:
    agent = start_agent(hermetic_home)
    agents.append(agent)
    tray = start_tray(desktop, hermetic_home)
    trays.append(tray)
    http = int(agent.http_url.rsplit(":", 1)[1])
    icon = wait_ready(desktop, tray, http)
    assert icon and tray.worker_pids() == []  # no second worker
    tray.proc.send_signal(signal.SIGINT)  # Ctrl-C is Quit too
    assert tray.proc.wait(60) == 0, tray.output()
    assert agent.proc.poll() is None and health(http)["status"] == "ok"  # the headless agent keeps running


def test_second_tray_for_the_same_home_says_so(
    desktop: Desktop, hermetic_home: Path, trays: list[TrayProcess],
) -> None:
    configure_ports(hermetic_home)
    first = start_tray(desktop, hermetic_home)
    trays.append(first)
    desktop.tray_icon(60)
    second = start_tray(desktop, hermetic_home)
    trays.append(second)
    assert second.proc.wait(60) == 1
    assert "a tray is already running" in second.output()


def test_xorg_backend_says_what_is_missing_and_still_supervises(
    desktop: Desktop, hermetic_home: Path, trays: list[TrayProcess],
) -> None:
    """Only the xorg backend (no PyGObject): a clear message, the icon with its state, a worker."""
    http, _, _ = configure_ports(hermetic_home)
    tray = start_tray(desktop, hermetic_home, env={"PYSTRAY_BACKEND": "xorg"})
    trays.append(tray)
    desktop.wait(lambda: "has no menu" in tray.output(), 60, f"the xorg message\n{tray.output()}")
    desktop.wait(lambda: health(http), 60, "/health")
    # (whether pystray's xorg icon docks into the tray is pystray's business, and unreliable)
    tray.proc.send_signal(signal.SIGTERM)
    assert tray.proc.wait(60) == 0, tray.output()
    assert not (hermetic_home / "agent.json").exists()


def test_worker_exits_by_itself_when_the_tray_is_killed(
    desktop: Desktop, hermetic_home: Path, trays: list[TrayProcess],
) -> None:
    http, req, pub = configure_ports(hermetic_home)
    tray = start_tray(desktop, hermetic_home)
    trays.append(tray)
    desktop.wait(lambda: health(http), 60, "/health")
    worker = read_connection(hermetic_home / "agent.json").pid
    assert tray.worker_pids() == [worker]
    tray.proc.kill()
    tray.proc.wait(10)
    desktop.wait(lambda: not pid_alive(worker), 60, "the orphaned worker to stop")
    assert all(port_free(p) for p in (http, req, pub))


def test_a_failed_switch_is_notified_and_the_model_stays(
    desktop: Desktop, hermetic_home: Path, trays: list[TrayProcess], hub: HubServer, hub_repos: HubRepos,
    hf_env: Path, tmp_path: Path, artifacts_dir: Path,
) -> None:
    publish_tiny(hub_repos, "onnx-community/tiny-a", tmp_path / "a", reply="A.")
    publish_tiny(hub_repos, "onnx-community/tiny-broken", tmp_path / "broken", reply="B.",
                 extra={"onnx/model_q4.onnx": b"this is not an onnx graph"})
    keys = install_models(hermetic_home, ("onnx-community/tiny-a", "onnx-community/tiny-broken"))
    http, _, _ = configure_ports(hermetic_home)
    tray = start_tray(desktop, hermetic_home)
    trays.append(tray)
    icon = wait_ready(desktop, tray, http)

    desktop.open_menu(icon)
    desktop.key("Down", "Right")
    desktop.wait(lambda: len(desktop.menus(icon)) >= 2, 10, "the Model submenu")
    desktop.key("Down", "Return")  # tiny-broken
    notice = desktop.wait_notification("Model switch failed", 60, contains="tiny-broken")
    assert "tiny-broken (q4)" in notice.body
    desktop.screenshot(artifacts_dir / "tray-switch-failed.png", region=(1024 - 420, 0, 420, 200))
    assert health(http)["model"] is None  # nothing replaced the (absent) active model
    desktop.wait(lambda: icon_shows(desktop, icon, "ready"), 30, "the badge back to ready")
    assert keys[1].startswith("huggingface-local/onnx-community/tiny-broken")
