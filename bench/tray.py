"""Tray benchmark: what the tray and its worker cost while idle, and how fast they come up.

Runs ``hflocal tray`` in the same headless desktop the tests use (Xvfb, session D-Bus, trayer,
dunst; ``tests/support/desktop.py``) on a temporary home with free ports and no model, and measures:

- time from starting ``hflocal tray`` to its icon being in the tray (a mapped window in trayer's
  panel), to ``/health`` answering, and to the menu being complete (the green "ready" badge on
  screen); median and all values over ``--starts`` cold starts;
- time from SIGTERM (= Quit) to both processes gone;
- RSS and CPU of the tray process and of the worker (no model loaded) over ``--idle-seconds``.

Writes ``bench/results/tray.json``. Run on purpose: ``.venv/bin/python bench/tray.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.desktop import Desktop, TrayProcess, color_near, missing_tools, start_tray
from tests.support.tray import configure_ports, health
from ui.icons import COLORS


def _badge_ready(desktop: Desktop, icon: int) -> bool:
    x, y, w, h = desktop.geometry(icon)
    shot = desktop.screenshot(desktop.root / "probe.png", region=(x + w // 2, y + h // 2, w - w // 2, h - h // 2))
    return color_near(shot, COLORS["ready"], tolerance=30)


def cold_start(desktop: Desktop, home: Path, http: int, timeout: float = 120.0) -> tuple[TrayProcess, dict[str, float]]:
    started = time.monotonic()
    tray = start_tray(desktop, home)
    times: dict[str, float] = {}
    deadline = started + timeout
    icon = None
    while time.monotonic() < deadline and len(times) < 3:
        if "icon_s" not in times:
            windows = [w for w in desktop.windows() if desktop.geometry(w)[1] < 32 and desktop.geometry(w)[2] > 4]
            if windows:
                icon = windows[0]
                times["icon_s"] = time.monotonic() - started
        if "health_s" not in times and health(http, timeout=1.0):
            times["health_s"] = time.monotonic() - started
        if icon is not None and "health_s" in times and "menu_ready_s" not in times and _badge_ready(desktop, icon):
            times["menu_ready_s"] = time.monotonic() - started
        time.sleep(0.02)
    if len(times) < 3:
        tray.stop()
        raise RuntimeError(f"the tray did not come up in {timeout:.0f} s: {times}\n{tray.output()}")
    return tray, times


def quit_time(tray: TrayProcess) -> float:
    workers = tray.worker_pids()
    started = time.monotonic()
    tray.proc.send_signal(signal.SIGTERM)
    tray.proc.wait(60)
    for pid in workers:
        while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            if time.monotonic() - started > 60:
                raise RuntimeError("the worker outlived the tray")
            time.sleep(0.01)
    return time.monotonic() - started


def idle_cost(tray: TrayProcess, seconds: float) -> dict[str, Any]:
    procs = {"tray": psutil.Process(tray.proc.pid), "worker": psutil.Process(tray.worker_pids()[0])}
    cpu0 = {name: sum(p.cpu_times()[:2]) for name, p in procs.items()}
    rss: dict[str, list[int]] = {name: [] for name in procs}
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        for name, p in procs.items():
            rss[name].append(p.memory_info().rss)
        time.sleep(1.0)
    wall = time.monotonic() - started
    result: dict[str, Any] = {"seconds": round(wall, 1)}
    for name, p in procs.items():
        cpu = sum(p.cpu_times()[:2]) - cpu0[name]
        result[name] = {
            "cpu_percent": round(100 * cpu / wall, 3),
            "cpu_seconds": round(cpu, 3),
            "rss_mb_mean": round(statistics.mean(rss[name]) / 2**20, 1),
            "rss_mb_max": round(max(rss[name]) / 2**20, 1),
            "threads": p.num_threads(),
        }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "tray.json")
    args = parser.parse_args()
    missing = missing_tools()
    if missing:
        print(f"missing desktop tools: {', '.join(missing)} (see scripts/apt-packages.txt)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="hflocal-bench-tray-") as tmp:
        root = Path(tmp)
        desktop = Desktop(root / "desktop")
        try:
            desktop.start()
            starts: list[dict[str, float]] = []
            quits: list[float] = []
            idle: dict[str, Any] = {}
            for i in range(args.starts):
                home = root / f"home-{i}"
                http, _, _ = configure_ports(home)
                tray, times = cold_start(desktop, home, http)
                try:
                    starts.append(times)
                    print(f"start {i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in times.items()), flush=True)
                    if i == args.starts - 1:
                        idle = idle_cost(tray, args.idle_seconds)
                        print(f"idle: {idle}", flush=True)
                    quits.append(quit_time(tray))
                finally:
                    tray.stop()
        finally:
            desktop.stop()
    keys = ("icon_s", "health_s", "menu_ready_s")
    result = {
        "benchmark": "tray",
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": psutil.cpu_count(), "ram_gb": round(psutil.virtual_memory().total / 2**30, 1)},
        "backend": "gtk (Gtk.StatusIcon in trayer under Xvfb)",
        "startup": {k: {"median": round(statistics.median(s[k] for s in starts), 3),
                        "all": [round(s[k], 3) for s in starts]} for k in keys},
        "quit_s": {"median": round(statistics.median(quits), 3), "all": [round(q, 3) for q in quits]},
        "idle_no_model": idle,
        "notes": "icon_s: hflocal tray started -> icon mapped in the tray; health_s: -> GET /health answers; "
                 "menu_ready_s: -> green badge on screen (worker up and its models read); quit_s: SIGTERM -> tray "
                 "and worker gone. Idle: no model loaded, nothing running, CPU = user+system over the window.",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
