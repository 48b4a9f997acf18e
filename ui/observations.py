"""What the tray learns, besides the worker's own replies and events: the inputs of ``ui.state.reduce``.

The supervisor reports the worker's life (starting, up, down, restarting, gave up); the tray's own
work reports switches it asked for, actions that failed, and the start-at-login setting. Together with
``ipc.messages`` replies (``StatusResult``, ``InstalledResult``) and events they are everything the
snapshot is built from.
"""

from __future__ import annotations

from dataclasses import dataclass

from ipc.connection import ConnectionInfo


@dataclass(frozen=True, slots=True)
class WorkerStarting:
    """A worker process was started (``attempt`` counts starts since the tray began)."""

    pid: int
    attempt: int


@dataclass(frozen=True, slots=True)
class WorkerUp:
    """The worker answers pings. ``attached``: it is an agent the tray did not start (headless)."""

    info: ConnectionInfo
    attached: bool = False


@dataclass(frozen=True, slots=True)
class WorkerDown:
    """The worker is gone. ``crashed`` is False for an exit the user asked for (or a clean exit)."""

    reason: str
    crashed: bool


@dataclass(frozen=True, slots=True)
class WorkerRestarting:
    delay_s: float
    crashes: int


@dataclass(frozen=True, slots=True)
class WorkerGaveUp:
    """Repeated crashes: no more automatic restarts until "Restart runtime"."""

    reason: str
    crashes: int
    window_s: float


@dataclass(frozen=True, slots=True)
class WorkerStopping:
    """The tray is stopping the worker (Quit or Restart runtime)."""


@dataclass(frozen=True, slots=True)
class SwitchRequested:
    """The tray asked the worker to activate ``key``; ``job_id`` is on its ``model.*`` events."""

    key: str
    job_id: str


@dataclass(frozen=True, slots=True)
class ActionFailed:
    """A menu action could not be done; ``what`` says which (``switch``, ``cancel``, ``autostart``...)."""

    what: str
    message: str
    key: str | None = None


@dataclass(frozen=True, slots=True)
class AutostartChanged:
    enabled: bool


Observation = (
    WorkerStarting
    | WorkerUp
    | WorkerDown
    | WorkerRestarting
    | WorkerGaveUp
    | WorkerStopping
    | SwitchRequested
    | ActionFailed
    | AutostartChanged
)

__all__ = [
    "ActionFailed",
    "AutostartChanged",
    "Observation",
    "SwitchRequested",
    "WorkerDown",
    "WorkerGaveUp",
    "WorkerRestarting",
    "WorkerStarting",
    "WorkerStopping",
    "WorkerUp",
]
