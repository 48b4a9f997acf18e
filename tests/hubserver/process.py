"""The hub in a subprocess, for tests that kill it (``kill -9`` mid-transfer) and restart it.

The data lives under ``root`` (``HubRepos``), so a restarted server — even on another port —
serves the same commits and ETags, and the client's partial ``.incomplete`` blobs still apply.
Faults and counters live in the process and start empty after a restart.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from .control import HubControl
from .server import DEFAULT_TOKEN

REPO_ROOT = Path(__file__).resolve().parents[2]


class HubProcess:
    """``python -m tests.hubserver`` run from the repository root; stderr goes to ``log_path``."""

    def __init__(
        self,
        root: Path,
        port: int = 0,
        *,
        tokens: Iterable[str] = (DEFAULT_TOKEN,),
        page_size: int = 3,
        start_timeout: float = 20.0,
    ) -> None:
        self.root = Path(root)
        self.requested_port = port
        self.tokens = tuple(tokens)
        self.page_size = page_size
        self.start_timeout = start_timeout
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / "hubserver.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def control(self) -> HubControl:
        return HubControl(self.url)

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self) -> HubProcess:
        """Start the server and wait until it has written its port (so it accepts connections)."""
        self.root.mkdir(parents=True, exist_ok=True)
        port_file = self.root / f"hubserver-{time.monotonic_ns()}.port"
        cmd = [sys.executable, "-m", "tests.hubserver", "--root", str(self.root), "--port", str(self.requested_port)]
        cmd += ["--port-file", str(port_file), "--page-size", str(self.page_size)]
        for token in self.tokens:
            cmd += ["--token", token]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + self.start_timeout
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"hub server did not start; see {self.log_path}:\n{self.log_path.read_text()}")
            time.sleep(0.02)
        self.port = int(port_file.read_text())
        port_file.unlink()
        self.requested_port = self.port  # a restart comes back on the same port
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash would: open transfers break without a clean close."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait; SIGKILL if it does not exit within ``timeout``."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            self.kill()

    def restart(self) -> HubProcess:
        """Kill (if running) and start again on the same port."""
        self.kill()
        return self.start()

    def __enter__(self) -> HubProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["HubProcess", "REPO_ROOT"]
