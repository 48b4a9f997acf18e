"""One download job's bookkeeping, and the hook that feeds it huggingface_hub's byte counts.

huggingface_hub 0.36's ``hf_hub_download`` takes no ``tqdm_class``; every file it fetches over HTTP
opens a progress bar through ``file_download._get_progress_bar_context``. ``install_hook`` replaces
that factory, once per process, with one that hands out a ``_Bar`` of the ``DownloadJob`` bound to
the calling thread (``bind``) and defers to the original for any other caller. ``_Bar.update`` counts
the chunk into the job and raises ``StopJob`` when a stop was requested: huggingface_hub calls it
*before* writing the chunk, so the ``.incomplete`` file always ends on whole chunks it can resume.

The hook also makes this process download over plain HTTP (``HF_HUB_DISABLE_XET``, no
``hf_transfer``) because only that path resumes partial files, and reads in ``CHUNK_BYTES`` pieces
(instead of 10 MiB) so that progress and cancels are noticed often.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import huggingface_hub.constants as hf_constants
from huggingface_hub import file_download

from agent.errors import AgentError
from agent.hub import RemoteFile
from agent.model_kinds import Kind
from agent.variants import VariantKey
from ipc.messages import DownloadInfo, DownloadProgress, Event

PROGRESS_INTERVAL_S = 0.2
CHUNK_BYTES = 256 * 1024
"""Read size per chunk: how often progress is counted and a cancel is noticed."""
_RATE_WINDOW_S = 5.0


class StopJob(Exception):
    """Raised inside the download thread (from the progress hook) to stop a cancelled job."""


# --------------------------------------------------------------------------- progress hook

_local = threading.local()
_hook_lock = threading.Lock()
_original_bar: Callable[..., Any] | None = None


def install_hook() -> None:
    """Route huggingface_hub's per-file progress bars to the job running on the current thread."""
    global _original_bar
    with _hook_lock:
        hf_constants.HF_HUB_DISABLE_XET = True
        hf_constants.HF_HUB_ENABLE_HF_TRANSFER = False
        hf_constants.DOWNLOAD_CHUNK_SIZE = min(hf_constants.DOWNLOAD_CHUNK_SIZE, CHUNK_BYTES)
        if _original_bar is not None:
            return
        _original_bar = getattr(file_download, "_get_progress_bar_context")  # noqa: B009 - private hook

        def hooked(*, _tqdm_bar: Any = None, **kwargs: Any) -> Any:
            job = getattr(_local, "job", None)
            if job is None or _tqdm_bar is not None:
                assert _original_bar is not None
                return _original_bar(_tqdm_bar=_tqdm_bar, **kwargs)
            return job.open_bar(int(kwargs.get("initial") or 0))

        setattr(file_download, "_get_progress_bar_context", hooked)  # noqa: B010


class _Bar:
    """The tqdm stand-in huggingface_hub writes to: counts bytes into the job, stops it if cancelled."""

    def __init__(self, job: DownloadJob) -> None:
        self.job = job

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: float | None = 1) -> None:
        self.job.add_bytes(int(n or 0))

    def close(self) -> None:
        return None


def new_job_id() -> str:
    return "dl-" + secrets.token_hex(4)


def bind(job: DownloadJob | None) -> None:
    """Route the current thread's huggingface_hub progress bars to ``job`` (None: back to tqdm)."""
    _local.job = job


# --------------------------------------------------------------------------- one job


class DownloadJob:
    """One variant being downloaded. Read ``state``, ``done_bytes``, ``info()``; ``wait()`` for the end.

    ``state``: ``running`` → ``finished`` | ``failed`` | ``cancelled`` | ``stopped`` (shutdown).
    ``error`` holds the ``AgentError`` of a failed job.
    """

    def __init__(
        self, key: VariantKey, revision: str, emit: Callable[[Event], None], job_id: str | None = None
    ) -> None:
        self.job_id = job_id or new_job_id()
        """``dl-`` and 8 hex digits; a download resumed after a restart keeps the id it had."""
        self.key = str(key)
        self.model_id, self.quantization, self.device = key.model_id, key.quantization, key.device
        self.revision = revision
        self.commit = ""
        self.kind: Kind = "chat"
        """``chat`` or ``embed``, from the repo's listing (what the store records)."""
        self.files: list[RemoteFile] = []
        self.total_bytes = 0
        self.resumed_bytes = 0
        self.fetched_bytes = 0
        self.current_file = ""
        self.state = "running"
        self.error: AgentError | None = None
        self.started = time.monotonic()
        self._emit = emit
        self._done: dict[str, int] = {}
        self._stop = threading.Event()
        self.stop_reason = ""
        """Why a stop was requested: ``cancel`` or ``shutdown`` (empty while none was)."""
        self._ended = threading.Event()
        self._lock = threading.Lock()
        self._last_publish = 0.0
        self._samples: deque[tuple[float, int]] = deque()
        self.thread: threading.Thread | None = None
        self.joined = False

    # ---- reading ----

    @property
    def done_bytes(self) -> int:
        with self._lock:
            return sum(self._done.values())

    def rate_and_eta(self) -> tuple[float, float | None]:
        with self._lock:
            now = time.monotonic()
            samples = [s for s in self._samples if now - s[0] <= _RATE_WINDOW_S]
            rate = 0.0
            if samples and now - samples[0][0] > 0.05:
                rate = (self.fetched_bytes - samples[0][1]) / (now - samples[0][0])
        left = max(self.total_bytes - self.done_bytes, 0)
        return rate, (left / rate if rate > 0 else (0.0 if left == 0 else None))

    def info(self) -> DownloadInfo:
        rate, eta = self.rate_and_eta()
        return DownloadInfo(
            job_id=self.job_id, key=self.key, model_id=self.model_id, quantization=self.quantization,
            done_bytes=self.done_bytes, total_bytes=self.total_bytes, rate_bps=rate, eta_s=eta,
            current_file=self.current_file, state=self.state,
        )

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ended; False if ``timeout`` passed first."""
        return self._ended.wait(timeout)

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    # ---- control (any thread) ----

    def request_stop(self, reason: str) -> None:
        """Ask the download thread to stop at its next chunk (the first reason given sticks)."""
        self.stop_reason = self.stop_reason or reason
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def sleep_unless_stopped(self, seconds: float) -> None:
        """Sleep (a retry backoff); raise ``StopJob`` at once if a stop is requested meanwhile."""
        if self._stop.wait(seconds):
            raise StopJob()

    def mark_ended(self, state: str) -> None:
        self.state = state
        self._ended.set()

    # ---- called from the download thread ----

    def open_bar(self, initial: int) -> _Bar:
        if self._stop.is_set():
            raise StopJob()
        with self._lock:
            self._done[self.current_file] = initial
        return _Bar(self)

    def add_bytes(self, n: int) -> None:
        if self._stop.is_set():
            raise StopJob()
        now = time.monotonic()
        with self._lock:
            self._done[self.current_file] = self._done.get(self.current_file, 0) + n
            self.fetched_bytes += n
            self._samples.append((now, self.fetched_bytes))
            while self._samples and now - self._samples[0][0] > _RATE_WINDOW_S:
                self._samples.popleft()
            due = now - self._last_publish >= PROGRESS_INTERVAL_S
            if due:
                self._last_publish = now
        if due:
            self.publish_progress()

    def publish_progress(self) -> None:
        rate, eta = self.rate_and_eta()
        self._emit(DownloadProgress(
            job_id=self.job_id, key=self.key, done_bytes=self.done_bytes, total_bytes=self.total_bytes,
            rate_bps=rate, eta_s=eta, current_file=self.current_file,
        ))

    def set_file_done(self, path: str, size: int) -> None:
        with self._lock:
            self._done[path] = size
