"""The runtime worker: one process that owns the store, the loaded models and both servers.

``run_worker`` is what ``hflocal serve`` (and the tray, as a child process) runs. Start-up order
matters for clients: the single-instance lock, then the sockets (so a busy port fails before
anything is written), then ``agent.json`` — written last, so a client that can read it can connect.
Shutdown (SIGTERM, SIGINT, a ``shutdown`` request, or the parent tray dying) leaves downloads
resumable and removes ``agent.json``.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import logging.handlers
import os
import re
import secrets
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import msgspec
import zmq
import zmq.asyncio

from agent import __version__
from agent.log_records import CappedFormatter, log_thread_errors
from agent.paths import Paths, default_home
from agent.settings import Settings, SettingsError, load_settings
from ipc.connection import ConnectionInfo, pid_alive, read_connection, remove_connection, write_connection
from ipc.events import EventPublisher
from ipc.loopback import is_loopback
from ipc.messages import WorkerStatus
from ipc.server import BindError, RequestServer

log = logging.getLogger("hflocal.worker")

HEARTBEAT_S = 2.0


@dataclass(frozen=True)
class WorkerOptions:
    """Command-line overrides of settings.toml."""

    host: str | None = None
    port: int | None = None
    zmq_request: str | None = None
    zmq_events: str | None = None
    parent_pid: int | None = None
    default_model: bool = False
    """Make sure a real model is installed and active (``agent.quickstart``)."""


class StartupError(RuntimeError):
    """The worker cannot start; the message is one line for the user."""


def _apply_options(settings: Settings, options: WorkerOptions) -> Settings:
    http = settings.http
    if options.host is not None:
        http = msgspec.structs.replace(http, host=options.host)
    if options.port is not None:
        if not 0 <= options.port <= 65535:
            raise StartupError(f"--port {options.port} is not a port number (0-65535)")
        http = msgspec.structs.replace(http, port=options.port)
    zmq_settings = settings.zmq
    for flag, value in (("--zmq-request", options.zmq_request), ("--zmq-events", options.zmq_events)):
        if value and not _ENDPOINT.match(value):
            raise StartupError(f"{flag} {value!r} is not a ZeroMQ endpoint such as tcp://127.0.0.1:9232 or ipc:///path")
    if options.zmq_request:
        zmq_settings = msgspec.structs.replace(zmq_settings, request=options.zmq_request)
    if options.zmq_events:
        zmq_settings = msgspec.structs.replace(zmq_settings, events=options.zmq_events)
    if zmq_settings.request == zmq_settings.events and not zmq_settings.request.endswith(":0"):  # :0 = any free port
        raise StartupError(f"the ZeroMQ request and event endpoints must differ (both are {zmq_settings.request})")
    return msgspec.structs.replace(settings, http=http, zmq=zmq_settings)


_ENDPOINT = re.compile(r"^(tcp://[^\s:]+:\d{1,5}|ipc://\S+)$")
"""What ``--zmq-request``/``--zmq-events`` accept (the same rule as settings.toml's [zmq])."""


def _check_exposure(settings: Settings) -> None:
    """Binding beyond loopback is opt-in and then requires an API key."""
    host = settings.http.host
    if is_loopback(host):
        return
    if not settings.http.allow_non_loopback:
        raise StartupError(
            f"refusing to listen on {host}: set http.allow_non_loopback = true and http.api_key in settings.toml "
            "to serve other machines"
        )
    if not (settings.http.api_key or os.environ.get("HFLOCAL_API_KEY")):
        raise StartupError(f"listening on {host} requires an API key: set http.api_key or HFLOCAL_API_KEY")


def _take_lock(paths: Paths) -> IO[str]:
    """Hold ``agent.lock`` for the life of the process: one worker per home."""
    handle = open(paths.lock, "a+")  # held until exit
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        detail = ""
        try:
            info = read_connection(paths.connection)
            detail = f" (pid {info.pid}, {info.http_url})"
        except Exception:  # an unreadable agent.json: the message goes without the details
            pass
        raise StartupError(
            f"another hflocal agent is already running for {paths.home}{detail}; stop it with `hflocal stop`"
        ) from None
    return handle


def _bind_http(host: str, port: int) -> socket.socket:
    """Bind the HTTP socket ourselves so a busy port is a clear error and port 0 works."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"HTTP port {port} on {host} is already in use (another hflocal agent or another program); "
                "choose another with `hflocal serve --port N` or http.port in settings.toml"
            ) from None
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _setup_logging(paths: Paths) -> None:
    root = logging.getLogger()
    if any(getattr(h, "_hflocal", False) for h in root.handlers):
        return
    fmt = CappedFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")  # one record <= 64 KiB
    file_handler = logging.handlers.RotatingFileHandler(
        paths.logs / "agent.log", maxBytes=5_000_000, backupCount=3, encoding="utf-8"
    )
    file_handler.setFormatter(fmt)
    file_handler._hflocal = True  # type: ignore[attr-defined]
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    stream.setLevel(logging.WARNING)
    stream._hflocal = True  # type: ignore[attr-defined]
    root.addHandler(file_handler)
    root.addHandler(stream)
    root.setLevel(logging.INFO)
    for noisy in ("hypercorn.access", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    log_thread_errors()


def run_worker(options: WorkerOptions | None = None, home: Path | None = None) -> int:
    """Run until stopped; returns the process exit status (0 clean, 1 could not start)."""
    options = options or WorkerOptions()
    paths0 = Paths.for_home(home or default_home())
    try:
        settings = _apply_options(load_settings(paths0.settings), options)
        _check_exposure(settings)
        paths = Paths.for_home(paths0.home, settings.cache_dir)
        paths.ensure()
        lock = _take_lock(paths)
    except (SettingsError, StartupError) as exc:
        print(f"hflocal: {exc}", file=sys.stderr)
        return 1
    _setup_logging(paths)
    try:
        return asyncio.run(_main(paths, settings, options))
    except StartupError as exc:
        print(f"hflocal: {exc}", file=sys.stderr)
        return 1
    finally:
        lock.close()


async def _main(paths: Paths, settings: Settings, options: WorkerOptions) -> int:
    from agent.runtime import Runtime

    session = uuid.uuid4().hex[:12]
    token = secrets.token_urlsafe(32)
    started = time.time()
    http_sock = _bind_http(settings.http.host, settings.http.port)
    port = http_sock.getsockname()[1]
    url_host = f"[{settings.http.host}]" if ":" in settings.http.host else settings.http.host
    http_url = f"http://{url_host}:{port}"

    ctx = zmq.asyncio.Context()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    publisher: EventPublisher | None = None
    runtime: Runtime | None = None
    try:
        try:
            publisher = EventPublisher(ctx, settings.zmq.events, session)
            runtime = Runtime(paths, settings, publisher.events, session=session, http_url=http_url, started=started,
                              stop=stop)
            server = RequestServer(ctx, settings.zmq.request, token, runtime.handle)
        except BindError as exc:
            raise StartupError(str(exc)) from None
        tasks = [
            asyncio.ensure_future(server.run(stop)),
            asyncio.ensure_future(runtime.serve_http(http_sock, stop)),
            asyncio.ensure_future(_heartbeat(runtime.worker_status, publisher.publish, stop)),
        ]
        if options.parent_pid:
            tasks.append(asyncio.ensure_future(_watch_parent(options.parent_pid, stop)))
        info = ConnectionInfo(
            http_url=http_url,
            request_endpoint=server.endpoint,
            event_endpoint=publisher.endpoint,
            token=token,
            pid=os.getpid(),
            session=session,
            version=__version__,
            home=str(paths.home),
            started_at=started,
            event_key=publisher.key,
        )
        write_connection(paths.connection, info)
        log.info("agent ready: %s, zmq %s / %s, home %s", http_url, server.endpoint, publisher.endpoint, paths.home)
        print(f"hflocal agent ready: API {http_url}/v1 (home {paths.home})", file=sys.stderr, flush=True)
        runtime.started_serving(default_model=options.default_model)
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        crashed = not stop.is_set()  # a server ended without being asked to: the worker cannot go on
        stop.set()
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("a server task failed", exc_info=task.exception())
        await asyncio.gather(*tasks, return_exceptions=True)
        if crashed:
            # Non-zero, so that a supervisor (the tray, systemd) restarts it.
            print(f"hflocal: the agent stopped after an internal error (see {paths.logs / 'agent.log'})",
                  file=sys.stderr, flush=True)
            return 1
        return 0
    finally:
        remove_connection(paths.connection, os.getpid())
        if runtime is not None:
            if publisher is not None:
                publisher.publish(WorkerStatus(pid=os.getpid(), state="stopping", http_url=http_url))
            await runtime.close()
        if publisher is not None:
            publisher.close(linger_ms=500)
        http_sock.close()
        ctx.term()
        log.info("agent stopped")


async def _heartbeat(status: Callable[[], WorkerStatus], publish: Callable[[WorkerStatus], None],
                     stop: asyncio.Event) -> None:
    """``publish(status())`` every ``HEARTBEAT_S`` until ``stop``."""
    while not stop.is_set():
        try:
            publish(status())
        except Exception:  # a heartbeat bug must not take the worker down
            log.exception("heartbeat failed")
        try:
            await asyncio.wait_for(stop.wait(), HEARTBEAT_S)
        except TimeoutError:
            pass


async def _watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    """Exit when the tray that started us is gone (its pid dies or we are re-parented)."""
    while not stop.is_set():
        if os.getppid() != parent_pid or not pid_alive(parent_pid):
            log.warning("parent process %s is gone; shutting down", parent_pid)
            stop.set()
            return
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass
