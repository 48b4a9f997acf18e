"""Keeps a runtime worker running for the tray: start, watch, restart with backoff, stop politely.

One thread owns the worker process. It starts ``hflocal serve --parent-pid <tray pid>`` as a child
(the worker exits by itself if the tray dies), waits for it to write ``agent.json``, pings it, and
reports what happens as ``ui.observations`` through ``report``. When the worker dies (or stops
answering pings, and is then killed) ``ui.restart_policy.decide`` says how long to wait before the
next start, or to give up until the user asks again. Quit and "Restart runtime" stop it politely:
a ``shutdown`` request, then SIGTERM, then SIGKILL.

If an agent for the same home is already running (``hflocal serve``, a systemd unit), the
supervisor attaches to it instead of starting a second one; it never stops an agent it did not
start, except when the user asks to restart the runtime (the tray then starts its own). Desired
state ("should run") is kept apart from observed state (the process), as in ActivityWatch's aw-qt.

No pystray here: this module runs the same with or without a desktop.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ipc.client import CallTimeout, Client, RemoteError
from ipc.connection import AgentNotRunning, ConnectionInfo, read_connection
from ipc.messages import Ping, Shutdown
from ui.observations import (
    Observation,
    WorkerDown,
    WorkerGaveUp,
    WorkerRestarting,
    WorkerStarting,
    WorkerStopping,
    WorkerUp,
)
from ui.restart_policy import GiveUp, RestartPolicy, decide, recent_crashes
from ui.worker_exit import describe_exit, last_line

log = logging.getLogger("hflocal.tray.supervisor")


@dataclass(frozen=True, slots=True)
class Timeouts:
    start_s: float = 120.0
    """How long a new worker may take to write ``agent.json``."""
    ping_interval_s: float = 2.0
    ping_timeout_s: float = 5.0
    ping_failures: int = 3
    """Consecutive unanswered pings after which a worker counts as hung (and is killed)."""
    shutdown_s: float = 10.0
    """After the ``shutdown`` request, before SIGTERM."""
    terminate_s: float = 5.0
    """After SIGTERM, before SIGKILL."""
    poll_stopped_s: float = 2.0
    """How often to look for an agent started elsewhere while none runs."""


def default_worker_argv() -> list[str]:
    """How the tray starts a worker: this interpreter, ``cli.main serve``, our pid as its parent."""
    return [sys.executable, "-m", "cli.main", "serve", "--parent-pid", str(os.getpid())]


class Supervisor:
    def __init__(
        self,
        home: Path,
        report: Callable[[Observation], None],
        *,
        policy: RestartPolicy | None = None,
        timeouts: Timeouts | None = None,
        worker_argv: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.home = Path(home)
        self.report = report
        self.policy = policy or RestartPolicy()
        self.timeouts = timeouts or Timeouts()
        self.worker_argv = list(worker_argv) if worker_argv is not None else default_worker_argv()
        self.env = {**os.environ, **(env or {}), "HFLOCAL_HOME": str(self.home)}
        self._wake = threading.Event()
        self._quit = threading.Event()
        self._restart = threading.Event()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._connection: ConnectionInfo | None = None
        self._crashes: list[float] = []
        self._starts = 0
        self._thread = threading.Thread(target=self._main, name="hflocal-supervisor", daemon=True)

    # ------------------------------------------------------------------ public

    @property
    def child_pid(self) -> int | None:
        """The pid of the worker this tray started, while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def connection(self) -> ConnectionInfo | None:
        return self._connection

    def start(self) -> None:
        self._thread.start()

    def restart(self) -> None:
        """The user asked: stop the worker (even an attached one) and start a fresh one now."""
        self._restart.set()
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Quit: stop the worker this tray started (politely) and end the thread. Blocks until done."""
        self._quit.set()
        self._wake.set()
        if self._thread.is_alive():
            limit = timeout if timeout is not None else self.timeouts.shutdown_s + self.timeouts.terminate_s + 15
            self._thread.join(limit)
        proc = self._proc
        if proc is not None and proc.poll() is None:  # the thread was stuck: last resort
            proc.kill()
            proc.wait(10)

    # ------------------------------------------------------------------ the thread

    def _sleep(self, seconds: float) -> bool:
        """Wait up to ``seconds``; True if woken early (quit, restart or the process ended)."""
        woke = self._wake.wait(seconds)
        self._wake.clear()
        return woke

    def _main(self) -> None:
        try:
            self._loop()
        except Exception as exc:
            log.exception("supervisor failed")
            self.report(WorkerGaveUp(reason=f"internal error in the tray: {exc}", crashes=0, window_s=0))
        finally:
            self._connection = None

    def _loop(self) -> None:
        stopped = False
        while not self._quit.is_set():
            if self._restart.is_set():
                self._restart.clear()
                self._crashes.clear()
                stopped = False
                self._stop_external()
            external = self._find_agent()
            if external is not None:
                # It went away by itself: respect that, as for our own worker's clean exit (and
                # follow it if it comes back, as a systemd unit does).
                stopped = self._watch_external(external) or stopped
                continue
            if stopped:
                # Stopped on purpose, or gave up: wait for the user, or follow an agent started elsewhere.
                self._sleep(self.timeouts.poll_stopped_s)
                continue
            outcome = self._run_child()
            if outcome is None:  # we stopped it (quit or restart)
                continue
            returncode, reason = outcome
            if returncode == 0:
                self.report(WorkerDown(reason=reason, crashed=False))
                stopped = True
                continue
            if self._find_agent() is not None:
                continue  # another agent took the home (it won the lock): attach to it
            now = time.monotonic()
            self._crashes = recent_crashes([*self._crashes, now], now, self.policy)
            self.report(WorkerDown(reason=reason, crashed=True))
            decision = decide(self._crashes, now, self.policy)
            if isinstance(decision, GiveUp):
                log.error("worker crashed %d times in %.0f s; giving up: %s",
                          decision.crashes, decision.window_s, reason)
                self.report(WorkerGaveUp(reason=reason, crashes=decision.crashes, window_s=decision.window_s))
                stopped = True
                continue
            log.warning("worker stopped (%s); restarting in %.1f s", reason, decision.delay_s)
            self.report(WorkerRestarting(delay_s=decision.delay_s, crashes=decision.crashes))
            deadline = time.monotonic() + decision.delay_s
            while not (self._quit.is_set() or self._restart.is_set()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._sleep(remaining)

    # ------------------------------------------------------------------ attached agents

    def _find_agent(self) -> ConnectionInfo | None:
        """A live agent for this home that answers a ping, other than our own child."""
        try:
            info = read_connection(self.home / "agent.json")
        except AgentNotRunning:
            return None
        if self._proc is not None and info.pid == self._proc.pid:
            return None
        if self._ping(info) is None:
            return None
        return info

    def _ping(self, info: ConnectionInfo, client: Client | None = None) -> bool | None:
        own = client is None
        client = client or Client(connection=info, timeout=self.timeouts.ping_timeout_s)
        try:
            client.call(Ping())
            return True
        except (CallTimeout, RemoteError, OSError):
            return None
        finally:
            if own:
                client.close()

    def _watch_external(self, info: ConnectionInfo) -> bool:
        """Watch an agent we did not start; True if it went away (not quit, not restart)."""
        log.info("attached to the running agent (pid %s)", info.pid)
        self._connection = info
        self.report(WorkerUp(info=info, attached=True))
        client = Client(connection=info, timeout=self.timeouts.ping_timeout_s)
        failures = 0
        try:
            while not (self._quit.is_set() or self._restart.is_set()):
                self._sleep(self.timeouts.ping_interval_s)
                if self._quit.is_set() or self._restart.is_set():
                    return False
                try:
                    current = read_connection(self.home / "agent.json")
                except AgentNotRunning:
                    current = None
                if current is None or current.session != info.session:
                    break
                failures = 0 if self._ping(info, client) else failures + 1
                if failures >= self.timeouts.ping_failures:
                    break
        finally:
            client.close()
            self._connection = None
        if self._quit.is_set() or self._restart.is_set():
            return False
        self.report(WorkerDown(reason=f"the agent (pid {info.pid}) stopped", crashed=False))
        return True

    def _stop_external(self) -> None:
        """For "Restart runtime" while attached: ask the other agent to shut down, wait (bounded)."""
        info = self._find_agent()
        if info is None:
            return
        self.report(WorkerStopping())
        client = Client(connection=info, timeout=self.timeouts.ping_timeout_s)
        try:
            client.call(Shutdown())
        except (CallTimeout, RemoteError, OSError) as exc:
            log.warning("the running agent did not accept shutdown: %s", exc)
        finally:
            client.close()
        deadline = time.monotonic() + self.timeouts.shutdown_s + self.timeouts.terminate_s
        while time.monotonic() < deadline:
            try:
                read_connection(self.home / "agent.json")
            except AgentNotRunning:
                return
            time.sleep(0.1)

    # ------------------------------------------------------------------ our own worker

    def _spawn(self) -> tuple[subprocess.Popen[bytes], Path, int]:
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        out_path = logs / "worker.out"
        out: IO[bytes]
        with open(out_path, "ab") as out:
            offset = out.tell()
            proc = subprocess.Popen(
                self.worker_argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the tray's terminal is the tray's to handle
            )
        self._starts += 1
        threading.Thread(target=self._reap, args=(proc,), name="hflocal-worker-wait", daemon=True).start()
        return proc, out_path, offset

    def _reap(self, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        self._wake.set()

    def _run_child(self) -> tuple[int, str] | None:
        """Start a worker and watch it. Returns ``(returncode, reason)`` when it ended by itself,
        ``None`` when we stopped it (quit or restart)."""
        proc, out_path, offset = self._spawn()
        with self._lock:
            self._proc = proc
        log.info("started worker pid %s", proc.pid)
        self.report(WorkerStarting(pid=proc.pid, attempt=self._starts))

        def ended() -> tuple[int, str]:
            rc = proc.wait()
            why = last_line(out_path, offset)
            detail = describe_exit(rc)
            return rc, f"{why} ({detail})" if why and rc > 0 else detail

        info: ConnectionInfo | None = None
        deadline = time.monotonic() + self.timeouts.start_s
        while info is None:
            if self._quit.is_set() or self._restart.is_set():
                self._stop_child(proc, None)
                return None
            if proc.poll() is not None:
                return ended()
            try:
                found = read_connection(self.home / "agent.json")
                if found.pid == proc.pid:
                    info = found
                    break
            except AgentNotRunning:
                pass
            if time.monotonic() > deadline:
                self._kill(proc)
                return 1, f"the worker did not start within {self.timeouts.start_s:.0f} s"
            self._wake.wait(0.05)
            self._wake.clear()

        client = Client(connection=info, timeout=self.timeouts.ping_timeout_s)
        try:
            self._connection = info
            self.report(WorkerUp(info=info))
            failures = 0
            while True:
                self._sleep(self.timeouts.ping_interval_s)
                if self._quit.is_set() or self._restart.is_set():
                    self._stop_child(proc, client)
                    return None
                if proc.poll() is not None:
                    return ended()
                failures = 0 if self._ping(info, client) else failures + 1
                if failures >= self.timeouts.ping_failures:
                    log.error("worker pid %s stopped answering; killing it", proc.pid)
                    self._kill(proc)
                    return 1, f"the worker stopped answering for {failures * self.timeouts.ping_timeout_s:.0f} s"
        finally:
            client.close()
            self._connection = None

    def _stop_child(self, proc: subprocess.Popen[bytes], client: Client | None) -> None:
        """shutdown request → SIGTERM → SIGKILL, each step bounded."""
        if proc.poll() is not None:
            return
        self.report(WorkerStopping())
        if client is not None:
            try:
                client.call(Shutdown(), timeout=min(3.0, self.timeouts.shutdown_s))
            except (CallTimeout, RemoteError, OSError) as exc:
                log.warning("worker did not accept shutdown: %s", exc)
            try:
                proc.wait(self.timeouts.shutdown_s)
                return
            except subprocess.TimeoutExpired:
                log.warning("worker pid %s ignored the shutdown request; sending SIGTERM", proc.pid)
        self._kill(proc)

    def _kill(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(self.timeouts.terminate_s)
                return
            except subprocess.TimeoutExpired:
                log.warning("worker pid %s ignored SIGTERM; sending SIGKILL", proc.pid)
            proc.kill()
        proc.wait(10)


__all__ = ["Supervisor", "Timeouts", "default_worker_argv", "describe_exit", "last_line"]
