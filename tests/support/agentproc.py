"""Start real ``hflocal serve`` processes on free loopback ports, and always stop them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ipc.client import Client
from ipc.connection import ConnectionInfo, read_connection


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class AgentProcess:
    home: Path
    proc: subprocess.Popen[bytes]
    info: ConnectionInfo
    log: Path
    ports: tuple[int, int, int] = field(default=(0, 0, 0))

    @property
    def http_url(self) -> str:
        return self.info.http_url

    def client(self, timeout: float = 10.0) -> Client:
        return Client(self.home, timeout=timeout)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit in ``timeout`` seconds; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def signal(self, sig: int, timeout: float = 20.0) -> int:
        """Send ``sig`` and wait (bounded) for the exit; returns the exit code."""
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def wait(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def cli(*args: str, home: Path, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``hflocal ARGS`` as a user would (a separate process); returns the completed process."""
    full_env = {**os.environ, "HFLOCAL_HOME": str(home), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parents[2],
    )


def serve_args(ports: tuple[int, int, int]) -> list[str]:
    http, req, pub = ports
    return [
        sys.executable, "-m", "cli.main", "serve",
        "--port", str(http),
        "--zmq-request", f"tcp://127.0.0.1:{req}",
        "--zmq-events", f"tcp://127.0.0.1:{pub}",
    ]


def run_serve(
    home: Path,
    *,
    ports: tuple[int, int, int] | None = None,
    env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``hflocal serve`` expecting it to refuse to start; returns the completed process.

    If it starts after all, it is stopped (SIGTERM) so the test fails on its exit status, not a hang."""
    home.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "HFLOCAL_HOME": str(home), "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(
        [*serve_args(ports or (free_port(), free_port(), free_port())), *extra_args], env=full_env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[2],
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def start_agent(
    home: Path,
    *,
    env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
    ports: tuple[int, int, int] | None = None,
    timeout: float = 60.0,
) -> AgentProcess:
    """Start ``hflocal serve`` and wait (bounded) until it has written ``agent.json``."""
    home.mkdir(parents=True, exist_ok=True)
    http, req, pub = ports or (free_port(), free_port(), free_port())
    log = home / f"serve-{time.monotonic_ns()}.log"
    full_env = {**os.environ, "HFLOCAL_HOME": str(home), "PYTHONUNBUFFERED": "1", **(env or {})}
    args = [*serve_args((http, req, pub)), *extra_args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"hflocal serve exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            info = read_connection(home / "agent.json")
            if info.pid == proc.pid:
                return AgentProcess(home=home, proc=proc, info=info, log=log, ports=(http, req, pub))
        except Exception:  # not written yet
            pass
        time.sleep(0.05)
    proc.kill()
    proc.wait(10)
    raise RuntimeError(f"hflocal serve did not become ready in {timeout}s:\n{log.read_text(errors='replace')}")


OFFLINE_HUB_ENV = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1"}
"""A Hub that cannot be reached (port 9 on loopback refuses): agents that must work offline."""


@contextmanager
def offline_agent_serving(root: Path, folder: Path, key: str) -> Iterator[AgentProcess]:
    """An offline agent (its home under ``root``) that imported the model folder ``folder`` and made
    ``key`` active, stopped on exit: the agent real-client tests drive."""
    home = root / "home"
    started = start_agent(home, env=OFFLINE_HUB_ENV)
    try:
        for args in (("import", str(folder)), ("use", key)):
            result = cli(*args, home=home, env=OFFLINE_HUB_ENV)
            assert result.returncode == 0, result.stderr
        yield started
    finally:
        started.stop()
