"""The tray's picture of the agent: an immutable ``Snapshot`` and the pure ``reduce`` that moves it on.

Everything the tray shows is derived from a ``Snapshot``; the snapshot changes only through
``reduce(snapshot, observation)``, fed by worker replies (``StatusResult``, ``InstalledResult``),
worker events and the supervisor's ``ui.observations``. ``reduce`` also says which notifications an
observation deserves, so "what is worth telling the user" is tested without a desktop.

Events are hints (PUB/SUB may drop them); a ``StatusResult`` is the truth and overrides them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import msgspec

from ipc.messages import (
    DownloadCancelled,
    DownloadFailed,
    DownloadFinished,
    DownloadInfo,
    DownloadProgress,
    DownloadStarted,
    InstalledResult,
    ModelActivated,
    ModelFailed,
    ModelLoading,
    ModelReady,
    ModelUnloaded,
    StatusResult,
    WorkerStatus,
)
from ui.observations import (
    ActionFailed,
    AutostartChanged,
    SwitchRequested,
    WorkerDown,
    WorkerGaveUp,
    WorkerRestarting,
    WorkerStarting,
    WorkerStopping,
    WorkerUp,
)

Runtime = str
"""``starting`` | ``ready`` | ``restarting`` | ``stopping`` | ``stopped`` (asked to) | ``failed`` (gave up)."""


@dataclass(frozen=True, slots=True)
class Variant:
    """One installed variant, as the Model menu lists it."""

    key: str
    model_id: str
    quantization: str
    status: str = "ready"
    error: str | None = None
    size: int = 0


@dataclass(frozen=True, slots=True)
class Notice:
    """A desktop notification to show. ``kind`` names why (tests and logs match on it)."""

    kind: str
    title: str
    body: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    runtime: Runtime = "starting"
    pid: int | None = None
    attached: bool = False
    http_url: str | None = None
    token: str | None = None
    active: str | None = None
    activating: str | None = None
    model_state: str = "none"
    model_error: str | None = None
    provider: str | None = None
    installed: tuple[Variant, ...] = ()
    downloads: tuple[DownloadInfo, ...] = ()
    error: str | None = None
    """Why the runtime is down (a crash, or the reason the supervisor gave up)."""
    crash: str | None = None
    """A crash whose "restarted" notice is due when the worker is back up."""
    switch_job: str | None = None
    autostart: bool | None = None
    """Start at login: ``None`` until it has been read."""
    synced: bool = False
    """The installed models of the current worker have been read (the menu is complete)."""

    @property
    def api_url(self) -> str | None:
        return f"{self.http_url}/v1" if self.http_url else None

    @property
    def settings_url(self) -> str | None:
        """The settings page, with the token that lets the browser in (exchanged for a cookie)."""
        if not self.http_url or not self.token:
            return None
        base = self.http_url.rstrip("/").replace("//0.0.0.0:", "//127.0.0.1:").replace("//[::]:", "//[::1]:")
        return f"{base}/?token={self.token}"


# --------------------------------------------------------------------------- naming


def split_key(key: str) -> tuple[str, str, str]:
    """``huggingface-local/org/name::q4::cpu`` → ``("org/name", "q4", "cpu")`` (lenient)."""
    parts = key.split("::")
    model = parts[0].removeprefix("huggingface-local/")
    quant = parts[1] if len(parts) > 1 else ""
    device = parts[2] if len(parts) > 2 else ""
    return model, quant, device


def short_name(model_id: str) -> str:
    return model_id.rsplit("/", 1)[-1]


def variant_label(key: str) -> str:
    """``name (q4)``: how a person recognises a variant in a menu."""
    model, quant, _ = split_key(key)
    return f"{short_name(model)} ({quant})" if quant else short_name(model)


def human_bytes(n: float) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


# --------------------------------------------------------------------------- reducer


def _without(rows: tuple[DownloadInfo, ...], job_id: str) -> tuple[DownloadInfo, ...]:
    return tuple(r for r in rows if r.job_id != job_id)


def _find(rows: tuple[DownloadInfo, ...], job_id: str, key: str) -> DownloadInfo:
    for row in rows:
        if row.job_id == job_id:
            return row
    model, quant, _ = split_key(key)
    return DownloadInfo(job_id=job_id, key=key, model_id=model, quantization=quant)


def _upsert(rows: tuple[DownloadInfo, ...], row: DownloadInfo) -> tuple[DownloadInfo, ...]:
    if any(r.job_id == row.job_id for r in rows):
        return tuple(row if r.job_id == row.job_id else r for r in rows)
    return (*rows, row)


Result = tuple[Snapshot, tuple[Notice, ...]]


def reduce(s: Snapshot, obs: object) -> Result:
    """The snapshot after ``obs``, and the notifications it deserves. Unknown inputs change nothing."""
    match obs:
        # ---- the supervisor
        case WorkerStarting(pid=pid):
            return replace(s, runtime="starting", pid=pid), ()
        case WorkerUp(info=info, attached=attached):
            notices: tuple[Notice, ...] = ()
            if s.crash is not None:
                again = f"It had stopped unexpectedly ({s.crash}) and is running again."
                notices = (Notice("restarted", "hflocal runtime restarted", again),)
            return replace(s, runtime="ready", pid=info.pid, attached=attached, http_url=info.http_url,
                           token=info.token, error=None, crash=None, synced=False), notices
        case WorkerDown(reason=reason, crashed=crashed):
            return replace(
                s,
                runtime="restarting" if crashed else "stopped",
                pid=None,
                error=reason if crashed else None,
                crash=reason if crashed else None,
                downloads=(),
                activating=None,
                switch_job=None,
                model_state="none",
                provider=None,
            ), ()
        case WorkerRestarting():
            return replace(s, runtime="restarting"), ()
        case WorkerGaveUp(reason=reason, crashes=crashes, window_s=window):
            body = (f"It stopped {crashes} times within {window:.0f} s: {reason}. "
                    "Use \u201cRestart runtime\u201d to try again.")
            gave_up = Notice("gave_up", "hflocal runtime stopped", body)
            return replace(s, runtime="failed", error=reason, crash=None), (gave_up,)
        case WorkerStopping():
            return replace(s, runtime="stopping"), ()
        # ---- the tray's own work
        case SwitchRequested(key=key, job_id=job_id):
            return replace(s, activating=key if key != s.active else None, switch_job=job_id), ()
        case ActionFailed(what="switch", message=message, key=key):
            label = variant_label(key) if key else "the model"
            failed = Notice("switch_failed", "Model switch failed", f"{label}: {message}")
            return replace(s, activating=None, switch_job=None), (failed,)
        case ActionFailed(what=what, message=message):
            return s, (Notice("action_failed", f"hflocal: {what} failed", message),)
        case AutostartChanged(enabled=enabled):
            return replace(s, autostart=enabled), ()
        # ---- replies (the truth)
        case StatusResult():
            return replace(
                s,
                active=obs.active,
                activating=obs.activating or (s.activating if s.switch_job else None),
                model_state=obs.model_state,
                model_error=obs.model_error,
                provider=obs.provider,
                downloads=tuple(obs.downloads),
                http_url=obs.http_url or s.http_url,
            ), ()
        case InstalledResult(models=models):
            installed = tuple(sorted(
                (Variant(key=m.key, model_id=m.model_id, quantization=m.quantization, status=m.status,
                         error=m.error, size=m.size) for m in models),
                key=lambda v: (v.model_id.lower(), v.quantization, v.key),
            ))
            return replace(s, installed=installed, synced=True), ()
        # ---- events (hints)
        case DownloadStarted():
            row = DownloadInfo(job_id=obs.job_id, key=obs.key, model_id=obs.model_id, quantization=obs.quantization,
                               done_bytes=obs.resumed_bytes, total_bytes=obs.total_bytes)
            return replace(s, downloads=_upsert(s.downloads, row)), ()
        case DownloadProgress():
            row = msgspec.structs.replace(_find(s.downloads, obs.job_id, obs.key), done_bytes=obs.done_bytes,
                                          total_bytes=obs.total_bytes, rate_bps=obs.rate_bps, eta_s=obs.eta_s,
                                          current_file=obs.current_file)
            return replace(s, downloads=_upsert(s.downloads, row)), ()
        case DownloadFinished():
            row = _find(s.downloads, obs.job_id, obs.key)
            body = f"{row.model_id} ({row.quantization}), {human_bytes(obs.size_bytes)}"
            finished = Notice("download_finished", "Download finished", body)
            return replace(s, downloads=_without(s.downloads, obs.job_id)), (finished,)
        case DownloadFailed():
            row = _find(s.downloads, obs.job_id, obs.key)
            body = f"{row.model_id} ({row.quantization}): {obs.message}"
            failed = Notice("download_failed", "Download failed", body)
            return replace(s, downloads=_without(s.downloads, obs.job_id)), (failed,)
        case DownloadCancelled():
            return replace(s, downloads=_without(s.downloads, obs.job_id)), ()
        case ModelLoading(key=key):
            if key == s.active:
                return replace(s, model_state="loading"), ()
            return replace(s, activating=key), ()
        case ModelReady(key=key, provider=provider):
            if key == s.active:
                return replace(s, model_state="ready", model_error=None, provider=provider or s.provider), ()
            return s, ()
        case ModelFailed(key=key, message=message, job_id=job_id):
            if key == s.activating or (job_id and job_id == s.switch_job):
                return replace(s, activating=None, switch_job=None), (
                    Notice("switch_failed", "Model switch failed", f"{variant_label(key)}: {message}"),)
            if key == s.active:
                return replace(s, model_state="failed", model_error=message), ()
            return s, ()
        case ModelActivated(key=key):
            return replace(s, active=key, activating=None if s.activating == key else s.activating,
                           switch_job=None, model_state="ready" if key else "none"), ()
        case ModelUnloaded(key=key):
            if key == s.active:
                return replace(s, model_state="unloaded"), ()
            return s, ()
        case WorkerStatus(active=active, model_state=model_state):
            if s.runtime != "ready":
                return s, ()
            return replace(s, active=active, model_state=model_state), ()
    return s, ()


def download_fraction(s: Snapshot) -> float | None:
    """Progress of all running downloads together (0..1), or ``None`` when none runs."""
    if not s.downloads:
        return None
    total = sum(r.total_bytes for r in s.downloads)
    done = sum(min(r.done_bytes, r.total_bytes) for r in s.downloads)
    return done / total if total > 0 else 0.0


def needs_refresh(s: Snapshot, obs: object) -> tuple[bool, bool]:
    """Which truths to re-read after ``obs``: ``(status, installed)``. Events are hints."""
    from ipc.messages import ImportFinished, ModelsChanged

    match obs:
        case WorkerUp():
            return True, True
        case ModelsChanged() | DownloadFinished() | ImportFinished():
            return True, True
        case ModelActivated() | ModelFailed() | DownloadFailed() | DownloadStarted():
            return True, False
        case WorkerStatus(active=active, model_state=state, downloads=count):
            if not s.synced:
                return True, True  # the first refresh failed or was missed: try again
            return (active != s.active or state != s.model_state or count != len(s.downloads)), False
    return False, False


__all__ = [
    "Notice",
    "Snapshot",
    "Variant",
    "download_fraction",
    "needs_refresh",
    "reduce",
    "short_name",
    "split_key",
    "variant_label",
]
