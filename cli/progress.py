"""Waiting on a job from the CLI: events drive a progress bar; ``status`` polling is the safety net.

PUB/SUB may drop events (a subscriber that joined late, a restarted worker), so the CLI never relies
on them alone: while no event arrives it asks the agent for the job's state every few seconds.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from tqdm import tqdm

from cli.commands import CliError, call, cancel, emit_json
from cli.output import human_bytes, human_seconds
from ipc.client import Client
from ipc.connection import pid_alive
from ipc.events import EventSubscriber
from ipc.messages import (
    Activate,
    Download,
    DownloadCancelled,
    DownloadFailed,
    DownloadFinished,
    DownloadProgress,
    DownloadStarted,
    ImportFailed,
    ImportFinished,
    ImportModel,
    ImportProgress,
    InstalledResult,
    JobAccepted,
    ListInstalled,
    ModelFailed,
    ModelReady,
    Status,
    StatusResult,
)

POLL_EVERY = 2.0


def _terminal_columns() -> int:
    """Columns of the terminal on stderr; 0 when it does not say (a pty nobody sized)."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError):
        return 0


def _bar(total: int, desc: str, disable: bool) -> tqdm[Any]:
    sized = _terminal_columns() > 0  # tqdm draws nothing at all on a terminal of width 0
    return tqdm(
        total=total or None,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1000,
        file=sys.stderr,
        dynamic_ncols=sized,
        ncols=None if sized else 80,
        mininterval=0.2,
        disable=disable or not sys.stderr.isatty(),
        leave=True,
    )


def follow_download(client: Client, request: Download, *, detach: bool, as_json: bool) -> int:
    with EventSubscriber(client.connection.event_endpoint, ("download.",), key=client.connection.event_key) as events:
        accepted: JobAccepted = call(client, request, timeout=max(client.timeout, 120))
        if detach:
            if as_json:
                emit_json(accepted)
            else:
                print(f"downloading {accepted.key} (job {accepted.job_id}); `hflocal status` shows progress")
            return 0
        if not as_json:
            joined = " (already downloading; following it)" if accepted.existing else ""
            print(f"pulling {accepted.key}{joined}", file=sys.stderr)
        bar = _bar(0, request.model_id.split("/")[-1], as_json)
        last_poll = time.monotonic()
        try:
            while True:
                event = events.recv(0.5)
                if event is not None and getattr(event, "job_id", None) == accepted.job_id:
                    if isinstance(event, (DownloadStarted, DownloadProgress)):
                        total = event.total_bytes
                        done = event.done_bytes if isinstance(event, DownloadProgress) else event.resumed_bytes
                        if total and bar.total != total:
                            bar.total = total
                        bar.n = done
                        bar.refresh()
                    elif isinstance(event, DownloadFinished):
                        bar.n = bar.total or event.size_bytes
                        bar.close()
                        return _done(accepted, event.size_bytes, event.elapsed_s, as_json)
                    elif isinstance(event, DownloadFailed):
                        bar.close()
                        raise CliError(f"download of {accepted.key} failed: {event.message}", code=event.code)
                    elif isinstance(event, DownloadCancelled):
                        bar.close()
                        raise CliError(f"download of {accepted.key} was cancelled; `hflocal pull` again resumes it",
                                       code="cancelled")
                    continue
                if time.monotonic() - last_poll >= POLL_EVERY:
                    last_poll = time.monotonic()
                    outcome = _poll_download(client, accepted)
                    if outcome is not None:
                        bar.close()
                        return _done(accepted, outcome, None, as_json)
        except KeyboardInterrupt:
            bar.close()
            cancel(client, accepted.job_id)
            print(
                f"\ncancelled {accepted.key}; the bytes fetched are kept and `hflocal pull {request.model_id}` resumes",
                file=sys.stderr,
            )
            return 130


def _check_alive(client: Client, what: str) -> None:
    """Fail at once, saying so, if the agent process is gone (rather than after a call's deadline)."""
    pid = client.connection.pid
    if not pid_alive(pid):
        raise CliError(f"the agent (pid {pid}) stopped; start it again with `hflocal serve` and {what}")


def _poll_download(client: Client, accepted: JobAccepted) -> int | None:
    """The installed size if the job ended well, ``None`` if it still runs; raises if it failed."""
    _check_alive(client, "the download resumes")
    status: StatusResult = call(client, Status())
    if any(d.job_id == accepted.job_id for d in status.downloads):
        return None
    installed: InstalledResult = call(client, ListInstalled())
    for model in installed.models:
        if model.key == accepted.key:
            if model.status == "ready":
                return model.size
            if model.status == "error":
                raise CliError(f"download of {accepted.key} failed: {model.error}")
            return None
    raise CliError(f"download of {accepted.key} was cancelled; `hflocal pull` again resumes it")


def _done(accepted: JobAccepted, size: int, elapsed: float | None, as_json: bool) -> int:
    if as_json:
        emit_json({"key": accepted.key, "job_id": accepted.job_id, "size_bytes": size, "status": "ready"})
    else:
        took = f" in {human_seconds(elapsed)}" if elapsed is not None else ""
        print(f"installed {accepted.key} ({human_bytes(size)}){took}")
        print(f"make it active with: hflocal use '{accepted.key}'")
    return 0


def follow_activation(client: Client, key: str, *, wait: bool, as_json: bool) -> int:
    with EventSubscriber(client.connection.event_endpoint, ("model.",), key=client.connection.event_key) as events:
        accepted: JobAccepted = call(client, Activate(key=key))
        key = accepted.key  # the agent's full key for what was asked (events and status use it)
        if not wait:
            if as_json:
                emit_json(accepted)
            else:
                print(f"{key} is now the active model (loading)")
            return 0
        last_poll = time.monotonic()
        while True:
            event = events.recv(0.5)
            if isinstance(event, ModelReady) and event.key == key:
                return _activated(key, event.provider, as_json)
            if isinstance(event, ModelFailed) and event.key == key:
                now: StatusResult = call(client, Status())
                raise CliError(f"{key} could not be loaded: {event.message}; {now.active or 'no model'} stays active",
                               code=event.code)
            if time.monotonic() - last_poll >= POLL_EVERY:
                last_poll = time.monotonic()
                _check_alive(client, f"`hflocal use {key}` again")
                status: StatusResult = call(client, Status())
                outcome = _activation_outcome(status, key, accepted.job_id)
                if outcome is not None:
                    return _activated(key, outcome, as_json)


def _activation_outcome(status: StatusResult, key: str, job_id: str) -> str | None:
    """The provider once ``key`` is active and loaded, ``None`` while its load goes on; raises once
    the job failed or another activation replaced it. ``active`` switches only after the load, so
    a model that loads for minutes is ``activating`` meanwhile, not "another model"."""
    failed = status.activation_failed
    if failed is not None and failed.key == key and failed.job_id == job_id:
        raise CliError(f"{key} could not be loaded: {failed.message}; {status.active or 'no model'} stays active",
                       code=failed.code)
    if status.activating == key:
        return None
    if status.active == key:
        if status.model_state == "failed":
            raise CliError(f"{key} could not be loaded: {status.model_error}", code="load_failed")
        return status.provider or "" if status.model_state in ("ready", "unloaded") else None
    if status.activating is not None:
        raise CliError(f"another model ({status.activating}) is being made active instead", code="conflict")
    if failed is not None and failed.key == key:
        raise CliError(f"{key} could not be loaded: {failed.message}", code=failed.code)
    raise CliError(f"another model ({status.active}) was made active meanwhile", code="conflict")


def _activated(key: str, provider: str, as_json: bool) -> int:
    if as_json:
        emit_json({"key": key, "state": "ready", "provider": provider})
    else:
        print(f"{key} is active and loaded ({provider or 'ready'})")
    return 0


def follow_import(client: Client, request: ImportModel, *, as_json: bool) -> int:
    with EventSubscriber(client.connection.event_endpoint, ("import.",), key=client.connection.event_key) as events:
        accepted: JobAccepted = call(client, request, timeout=max(client.timeout, 60))
        bar: tqdm[Any] | None = None
        stage = ""
        while True:
            event = events.recv(1.0)
            if event is None or getattr(event, "job_id", None) != accepted.job_id:
                continue
            if isinstance(event, ImportProgress):
                if bar is None or stage != event.stage:
                    if bar is not None:
                        bar.close()
                    stage = event.stage
                    bar = tqdm(total=event.total or None, desc=stage, file=sys.stderr,
                               disable=as_json or not sys.stderr.isatty())
                bar.n = event.done
                bar.refresh()
            elif isinstance(event, ImportFinished):
                if bar is not None:
                    bar.close()
                if as_json:
                    emit_json({"job_id": accepted.job_id, "keys": event.keys})
                else:
                    for key in event.keys:
                        print(f"installed {key}")
                return 0
            elif isinstance(event, ImportFailed):
                if bar is not None:
                    bar.close()
                raise CliError(f"import failed: {event.message}", code=event.code)
