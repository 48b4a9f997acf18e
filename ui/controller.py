"""The tray's brain, without a toolkit: snapshot, worker I/O and menu actions.

``Controller`` owns the ``Snapshot`` and is the only place it changes (``observe`` → ``reduce``).
Inputs come from three threads: the supervisor (worker life), the event thread (the worker's
``ipc`` events, resubscribed whenever a new worker comes up) and one work thread that runs menu
actions and re-reads ``status``/``list_installed`` when an event says the truth moved. The toolkit
side is a ``View``: it is told the new snapshot and the notifications to show, and must only
schedule work on its own thread. Menu callbacks call ``submit`` and return at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import msgspec

from ipc.client import CallTimeout, Client, RemoteError
from ipc.connection import ConnectionInfo
from ipc.events import EventSubscriber
from ipc.messages import Activate, Event, JobAccepted, ListInstalled, Status
from ipc.messages import CancelDownload as CancelRequest
from ui import desktop_open
from ui.menu import (
    Action,
    CancelDownload,
    CopyApiUrl,
    OpenLogs,
    OpenSettings,
    Quit,
    RestartRuntime,
    SetAutostart,
    SwitchModel,
)
from ui.observations import ActionFailed, AutostartChanged, Observation, SwitchRequested, WorkerUp
from ui.state import Notice, Snapshot, needs_refresh, reduce
from ui.supervisor import Supervisor

log = logging.getLogger("hflocal.tray")

EVENT_POLL_S = 1.0


class View(Protocol):
    """What the controller needs from the toolkit. Every method may be called from any thread."""

    def show(self, snapshot: Snapshot) -> None: ...

    def notify(self, notice: Notice) -> None: ...

    def copy_text(self, text: str) -> bool: ...

    def stop(self) -> None: ...


class Autostart(Protocol):
    def apply(self, action: str, *, headless: bool = False, modes: Sequence[str] | None = None) -> dict[str, Any]: ...


class Controller:
    def __init__(
        self,
        home: Path,
        view: View,
        *,
        supervisor: Callable[[Callable[[Observation], None]], Supervisor] | None = None,
        autostart: Autostart | None = None,
    ) -> None:
        self.home = Path(home)
        self.view = view
        self.autostart = autostart
        self.snapshot = Snapshot()
        self._lock = threading.RLock()
        self._work = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hflocal-tray-work")
        self._client: Client | None = None
        self._client_session: str | None = None
        self._refresh_pending: tuple[bool, bool] = (False, False)
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._events_changed = threading.Event()
        self._connection: ConnectionInfo | None = None
        self.supervisor = (supervisor or (lambda report: Supervisor(self.home, report)))(self.observe)
        self._events = threading.Thread(target=self._event_loop, name="hflocal-tray-events", daemon=True)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._events.start()
        self.supervisor.start()
        if self.autostart is not None:
            self._submit(self._read_autostart)

    def quit(self) -> None:
        """Stop everything (the worker politely), then the view. Safe from any thread, returns at once."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        threading.Thread(target=self._shutdown, name="hflocal-tray-quit", daemon=False).start()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def _shutdown(self) -> None:
        try:
            self.supervisor.stop()
            self._events_changed.set()
            self._events.join(EVENT_POLL_S + 5)
            self._work.shutdown(wait=True, cancel_futures=True)
            if self._client is not None:
                self._client.close()
        except Exception:
            log.exception("error while quitting")
        finally:
            self._stopped.set()
            self.view.stop()

    # ------------------------------------------------------------------ state

    def observe(self, obs: object) -> None:
        """Feed one observation (reply, event or ``ui.observations``). Safe from any thread."""
        with self._lock:
            before = self.snapshot
            after, notices = reduce(before, obs)
            status, installed = needs_refresh(before, obs)
            self.snapshot = after
            if isinstance(obs, WorkerUp):
                self._connection = obs.info
                self._events_changed.set()
            # Under the lock, so views see snapshots in order; views only schedule work, never block.
            if after != before:
                self.view.show(after)
            for notice in notices:
                log.info("notify: %s: %s", notice.title, notice.body)
                self.view.notify(notice)
        if status or installed:
            self._request_refresh(status, installed)

    def _request_refresh(self, status: bool, installed: bool) -> None:
        with self._lock:
            pending = self._refresh_pending
            self._refresh_pending = (pending[0] or status, pending[1] or installed)
            if pending != (False, False):
                return  # one refresh is already queued; it will read both
        self._submit(self._refresh)

    def _refresh(self) -> None:
        with self._lock:
            status, installed = self._refresh_pending
            self._refresh_pending = (False, False)
        client = self._worker_client()
        if client is None:
            return
        try:
            if installed:
                self.observe(client.call(ListInstalled()))
            if status:
                self.observe(client.call(Status()))
        except (CallTimeout, RemoteError, OSError) as exc:
            log.info("refresh failed: %s", exc)

    # ------------------------------------------------------------------ actions

    def submit(self, action: Action) -> None:
        """Run a menu action on the work thread; returns at once (menu callbacks call this)."""
        if isinstance(action, Quit):
            self.quit()
            return
        self._submit(self._do, action)

    def _submit(self, fn: Callable[..., None], *args: object) -> None:
        if self._stopping.is_set():
            return
        try:
            self._work.submit(self._guarded, fn, *args)
        except RuntimeError:
            pass  # shutting down

    @staticmethod
    def _guarded(fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("tray action failed")

    def _worker_client(self) -> Client | None:
        info = self._connection
        if info is None or self.snapshot.runtime != "ready":
            return None
        if self._client is None or self._client_session != info.session:
            if self._client is not None:
                self._client.close()
            self._client = Client(connection=info, timeout=10.0)
            self._client_session = info.session
        return self._client

    def _do(self, action: Action) -> None:
        snap = self.snapshot
        match action:
            case SwitchModel(key=key):
                if key == snap.active and not snap.activating:
                    return
                client = self._worker_client()
                if client is None:
                    self.observe(ActionFailed("switch", "the runtime is not running", key))
                    return
                try:
                    accepted: JobAccepted = client.call(Activate(key=key))
                except (CallTimeout, RemoteError) as exc:
                    self.observe(ActionFailed("switch", str(exc), key))
                    return
                self.observe(SwitchRequested(key=accepted.key, job_id=accepted.job_id))
            case CancelDownload(job_id=job_id):
                client = self._worker_client()
                if client is None:
                    return
                try:
                    client.call(CancelRequest(job_id=job_id))
                except (CallTimeout, RemoteError) as exc:
                    self.observe(ActionFailed("cancel", str(exc)))
            case OpenSettings():
                if snap.settings_url:
                    desktop_open.open_url(snap.settings_url)
            case CopyApiUrl():
                if snap.api_url and not self.view.copy_text(snap.api_url):
                    self.observe(ActionFailed("copy", f"no clipboard available; the API is at {snap.api_url}"))
            case SetAutostart(enable=enable):
                self._set_autostart(enable)
            case RestartRuntime():
                self.supervisor.restart()
            case OpenLogs():
                desktop_open.open_path(self.home / "logs")

    def _read_autostart(self) -> None:
        assert self.autostart is not None
        try:
            result = self.autostart.apply("status")
        except Exception as exc:
            log.warning("cannot read start-at-login: %s", exc)
            return
        self.observe(AutostartChanged(enabled=bool(result.get("tray"))))

    def _set_autostart(self, enable: bool) -> None:
        if self.autostart is None:
            return
        try:
            if enable:
                self.autostart.apply("enable")
            else:
                self.autostart.apply("disable", modes=("tray",))  # a headless unit stays as it is
        except Exception as exc:  # an unwritable config dir is a message, not a crash
            self.observe(ActionFailed("start at login", str(exc)))
        self._read_autostart()

    # ------------------------------------------------------------------ events

    def _event_loop(self) -> None:
        sub: EventSubscriber | None = None
        session: str | None = None
        try:
            while not self._stopping.is_set():
                info = self._connection
                if self._events_changed.is_set() or (info is not None and info.session != session):
                    self._events_changed.clear()
                    if sub is not None:
                        sub.close()
                        sub = None
                    session = None
                    if info is not None:
                        sub = EventSubscriber(info.event_endpoint, key=info.event_key)
                        session = info.session
                if sub is None:
                    self._events_changed.wait(EVENT_POLL_S)
                    continue
                event = sub.recv(EVENT_POLL_S)
                if event is None or event.session != session:
                    continue
                self._on_event(event)
        finally:
            if sub is not None:
                sub.close()

    def _on_event(self, event: Event) -> None:
        try:
            self.observe(event)
        except Exception:
            log.exception("could not apply event %s", msgspec.structs.asdict(event))


__all__ = ["Autostart", "Controller", "View"]
