"""Download jobs: one background thread per variant, resumable, verified, with rate-limited progress.

What callers may rely on:

- ``start`` does the quick, failing-early part on the caller's thread (validate, list the repo's
  files, check free disk, record the entry as ``downloading``) and raises ``AgentError`` for anything
  wrong; then the job runs in its own thread and reports only through events:
  ``DownloadStarted`` → ``DownloadProgress``* (≤ 5/s, the last one with done == total) →
  ``DownloadFinished`` | ``DownloadFailed`` | ``DownloadCancelled``, each followed by ``ModelsChanged``.
- Starting a variant that is already downloading joins that job (``existing=True``). Starting one that
  is ``ready`` at the same commit runs a job that finds every file present and finishes at once.
- Each file goes through ``huggingface_hub.hf_hub_download`` into the HF cache. Bytes on disk are
  never fetched twice: a partial ``.incomplete`` blob left by a dropped connection, a cancel or a
  killed worker is continued with a Range request. Transient failures are retried
  ``settings.hub.retries`` times with backoff (the count resets whenever bytes arrived).
- Every LFS file is checked against the sha256 the Hub publishes; a mismatch deletes the blob and
  fails the job with ``integrity``. ENOSPC fails it with ``disk_full``. A failed job leaves its entry
  ``error`` (with the message) and its partial files, so a later ``start`` resumes.
- ``cancel`` stops a job within about a second (or a read timeout on a stalled connection). The
  entry is removed if no weight bytes were on disk yet; otherwise it stays as ``error``
  ("cancelled ... download again to resume") with the partial files kept.
- ``shutdown`` stops all jobs, each ending with ``DownloadFailed`` code ``interrupted`` (so a client
  following it is not left waiting), and leaves their entries ``downloading``;
  ``resume_interrupted`` (at the next start) continues them at the same commit under the same job id.

huggingface_hub 0.36's ``hf_hub_download`` takes no ``tqdm_class``: per-chunk byte counts come from
a thread-local hook on its progress-bar factory (``agent.download_job``). Downloads go over plain
HTTP (xet and hf_transfer are switched off in this process) because only that path resumes partial
files. huggingface_hub itself retries each request 5 times on 5xx/connection errors (1-8 s apart);
the job-level retries above come on top and also cover what it does not retry (a connection dropped
mid-file, 429).

``Downloads`` is the registry of jobs (start, join, cancel, record the outcome in the store); the
transfer itself is ``agent.download_transfer``, and where a job's files are in the Hugging Face
cache is ``agent.hub_cache``'s to say.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import hub, hub_cache
from agent.download_job import DownloadJob, StopJob, bind, install_hook
from agent.download_transfer import as_agent_error, fetch_all, is_enospc
from agent.errors import (
    AgentError,
    BadRequestError,
    ConflictError,
    DiskFullError,
    GatedRepoError,
    NetworkError,
    NotFoundError,
)
from agent.hub import RemoteFile
from agent.paths import Paths
from agent.settings import Settings
from agent.store import Store, new_entry, utc_now
from agent.variants import InvalidNameError, VariantKey
from ipc.messages import (
    DownloadCancelled,
    DownloadFailed,
    DownloadFinished,
    DownloadInfo,
    DownloadStarted,
    Event,
    ModelsChanged,
)

log = logging.getLogger("hflocal.downloads")

DEFAULT_DISK_MARGIN = 256 * 1024 * 1024
"""Free space kept beyond what a download still needs (the OS and other programs need some too)."""
_ENDING_WAIT_S = 30.0




class Downloads:
    """All download jobs of one worker. Thread-safe; see the module docstring for the guarantees."""

    def __init__(
        self,
        store: Store,
        paths: Paths,
        settings: Settings,
        publish: Callable[[Event], None],
        *,
        disk_margin_bytes: int = DEFAULT_DISK_MARGIN,
        backoff_s: float = 1.0,
    ) -> None:
        install_hook()
        self.store, self.paths, self.settings = store, paths, settings
        self.emit = publish
        """Publish an event (the worker's ``Publisher.publish``, which stamps it and never raises)."""
        self.disk_margin_bytes = disk_margin_bytes
        self.backoff_s = backoff_s
        self.warnings: list[str] = []
        self._closed = False
        self._jobs: dict[str, DownloadJob] = {}
        self._lock = threading.Lock()

    def _models_changed(self) -> None:
        self.emit(ModelsChanged(keys=[e.key for e in self.store.list()]))

    # ---- starting ----

    def start(
        self, model_id: str, quantization: str | None = None, device: str | None = None, revision: str = "main",
        *, job_id: str | None = None,
    ) -> tuple[DownloadJob, bool]:
        """Start (or join) the download of one variant; returns ``(job, existing)``. ``job_id``: the
        id to run a new job under (a resumed one keeps its id), else a fresh one.

        Raises ``BadRequestError`` for invalid names and the Hub's errors (``repo_not_found``,
        ``gated``, ``no_onnx``, ``quant_not_offered``, ``network``, ``hub_error``), or ``disk_full``
        when the cache's disk lacks what is still to fetch plus ``disk_margin_bytes``.
        """
        try:
            key = VariantKey.make(
                model_id,
                quantization or self.settings.models.default_quantization,
                device or self.settings.models.default_device,
            )
        except InvalidNameError as exc:
            raise BadRequestError(str(exc)) from None
        deadline = time.monotonic() + _ENDING_WAIT_S
        while True:
            with self._lock:
                if self._closed:
                    raise ConflictError("the worker is stopping; downloads resume when it starts again")
                current = self._jobs.get(str(key))
                if current is None:
                    job = DownloadJob(key, revision, self.emit, job_id)
                    self._jobs[job.key] = job
                    break
                if current.state == "running" and not current.stop_requested:
                    current.joined = True
                    return current, True
            # a job of this variant is ending (finished, failed or cancelled): let it finish its
            # bookkeeping so that its store update cannot overwrite the new job's entry
            if not current.wait(max(deadline - time.monotonic(), 0.0)):
                raise ConflictError(f"the previous download of {key} is still stopping; try again shortly")
        try:
            created = self._prepare(job)
        except BaseException as exc:
            with self._lock:
                self._jobs.pop(job.key, None)
            job.mark_ended("failed")
            err = exc
            if is_enospc(exc) and not isinstance(exc, AgentError):
                err = DiskFullError(str(self.paths.home))
            if job.joined:  # someone else was told to wait for this job: tell them it failed
                code = err.code if isinstance(err, AgentError) else "internal"
                self.emit(DownloadFailed(job_id=job.job_id, key=job.key, code=code, message=str(err)))
            if err is not exc:
                raise err from exc
            raise
        if created:
            self._models_changed()
        job.thread = threading.Thread(target=self._run, args=(job,), name=f"download-{job.job_id}", daemon=True)
        job.thread.start()
        return job, False

    def _prepare(self, job: DownloadJob) -> bool:
        """List, check and record the job's files; True if a new store entry was created."""
        listing = hub.fetch_listing(job.model_id, job.revision, retries=min(self.settings.hub.retries, 2))
        if listing.gated and not hub.token():
            raise GatedRepoError(job.model_id, hub.endpoint())
        job.files = listing.plan(job.quantization)
        job.commit = listing.commit
        job.kind = listing.kind
        job.total_bytes = sum(f.size for f in job.files)
        for f in job.files:
            job.set_file_done(f.path, self._on_disk(job, f))
        job.resumed_bytes = job.done_bytes
        needed = job.total_bytes - job.resumed_bytes
        free = hub_cache.free_bytes(self.paths.cache)
        if needed > 0 and needed + self.disk_margin_bytes > free:
            raise DiskFullError(str(self.paths.cache), needed + self.disk_margin_bytes, free)
        entry = self.store.get(job.key)
        if entry is not None and entry.status == "ready":
            return False  # an update or a repair: the old files keep serving until the new ones are in
        revision = entry.revision if entry is not None and entry.status == "downloading" else job.revision
        self.store.put(new_entry(
            job.model_id, job.quantization, job.device, path=str(self._snapshot(job)),
            files=[f.path for f in job.files], size=job.total_bytes, commit=job.commit, revision=revision,
            kind=job.kind, job_id=job.job_id,
        ))
        return entry is None

    def resume_interrupted(self) -> list[DownloadJob]:
        """Restart jobs for entries left ``downloading``, at the commit they were started at.

        Returns the jobs. An entry that cannot be resumed now gets a line in ``self.warnings``; it
        stays ``downloading`` when the Hub is unreachable or the worker is stopping meanwhile (the
        next start tries again), else ``error``.
        """
        jobs: list[DownloadJob] = []
        for entry in self.store.interrupted():
            try:
                job, _ = self.start(entry.model_id, entry.quantization, entry.device, entry.commit or entry.revision,
                                    job_id=entry.job_id or None)
                jobs.append(job)
            except AgentError as exc:
                self.warnings.append(f"could not resume the download of {entry.key}: {exc}")
                if not isinstance(exc, (NetworkError, ConflictError)):
                    self.store.update(entry.key, status="error", error=str(exc))
                log.warning("%s", self.warnings[-1])
        return jobs

    # ---- the thread ----

    def _run(self, job: DownloadJob) -> None:
        bind(job)
        try:
            self.emit(DownloadStarted(
                job_id=job.job_id, key=job.key, model_id=job.model_id, quantization=job.quantization,
                total_bytes=job.total_bytes, files=[f.path for f in job.files], resumed_bytes=job.resumed_bytes,
            ))
            fetch_all(job, self.paths.cache, retries=self.settings.hub.retries, backoff_s=self.backoff_s)
        except StopJob:
            self._end_stopped(job)
        except BaseException as exc:  # every failure becomes an event, never a silent thread
            if job.stop_requested:
                self._end_stopped(job)
            else:
                error = exc if isinstance(exc, AgentError) else as_agent_error(exc, job, self.paths.cache)
                self._end_failed(job, error)
        else:
            self._end_finished(job)
        finally:
            bind(None)
            with self._lock:
                if self._jobs.get(job.key) is job:
                    del self._jobs[job.key]
            job.mark_ended(job.state)

    # ---- endings ----

    def _end_finished(self, job: DownloadJob) -> None:
        job.current_file = ""
        job.publish_progress()
        old = self.store.get(job.key)
        snapshot = self._snapshot(job)
        unchanged = old is not None and old.status == "ready" and old.commit == job.commit and not job.fetched_bytes
        fields: dict[str, Any] = {
            "files": [f.path for f in job.files], "size": job.total_bytes, "commit": job.commit,
            "downloaded_at": old.downloaded_at if unchanged and old is not None else utc_now(),
            "status": "ready", "error": None, "path": str(snapshot), "kind": job.kind,
        }
        if old is None:
            self.store.put(new_entry(job.model_id, job.quantization, job.device, revision=job.revision, **fields))
        else:
            self.store.update(job.key, **fields)
        if old is not None and old.status == "ready" and old.commit != job.commit:
            self.store.release_files(old)
        job.state = "finished"
        self.emit(DownloadFinished(
            job_id=job.job_id, key=job.key, size_bytes=job.total_bytes, elapsed_s=time.monotonic() - job.started,
            fetched_bytes=job.fetched_bytes,
        ))
        self._models_changed()

    def _end_failed(self, job: DownloadJob, error: AgentError) -> None:
        job.state, job.error = "failed", error
        log.warning("download %s failed: %s", job.key, error)
        try:
            entry = self.store.get(job.key)
            if entry is not None and entry.status != "ready":
                self.store.update(job.key, status="error", error=str(error))
        except Exception:
            log.exception("recording the failure of %s", job.key)
        self.emit(DownloadFailed(job_id=job.job_id, key=job.key, code=error.code, message=str(error)))
        self._models_changed()

    def _end_stopped(self, job: DownloadJob) -> None:
        if job.stop_reason == "shutdown":
            job.state = "stopped"  # the entry stays "downloading": resumed at the next start, same job id
            self.emit(DownloadFailed(job_id=job.job_id, key=job.key, code="interrupted", message=(
                f"the agent stopped during the download of {job.key}; it resumes under job {job.job_id} "
                "when the agent starts again")))
            return
        job.state = "cancelled"
        entry = self.store.get(job.key)
        if entry is not None and entry.status != "ready":
            weights = [f for f in job.files if f.sha256 or f.path.endswith(".onnx")]
            kept = sum(self._on_disk(job, f) for f in weights)
            if kept == 0:
                self.store.delete(job.key)
            else:
                self.store.update(job.key, status="error", error=(
                    f"download cancelled with {kept} of {job.total_bytes} bytes kept; download again to resume"
                ))
        self.emit(DownloadCancelled(job_id=job.job_id, key=job.key))
        self._models_changed()

    # ---- control ----

    def find(self, job_id: str | None = None, key: str | None = None) -> DownloadJob:
        """The running job with this id and/or variant key (device part of the key optional)."""
        if job_id is None and key is None:
            raise BadRequestError("name a download by job_id or key")
        if key is not None:
            try:
                key = str(VariantKey.parse(key))
            except InvalidNameError as exc:
                raise BadRequestError(str(exc)) from None
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            if (job_id is None or job.job_id == job_id) and (key is None or job.key == key):
                return job
        raise NotFoundError(f"no running download {job_id or key}")

    def cancel(self, job_id: str | None = None, key: str | None = None, wait_s: float = 10.0) -> DownloadJob:
        """Stop a running job (by id or key) and wait up to ``wait_s`` for it to end; see the module
        docstring for what happens to its entry and files. ``NotFoundError`` if no such job runs."""
        job = self.find(job_id, key)
        job.request_stop("cancel")
        job.wait(wait_s)
        return job

    def delete(self, key: str) -> int:
        """Cancel the variant's job if one runs, then ``Store.delete``; returns the bytes freed."""
        try:
            self.cancel(key=key)
        except NotFoundError:
            pass
        return self.store.delete(str(VariantKey.parse(key)))

    def running(self) -> list[DownloadInfo]:
        with self._lock:
            jobs = list(self._jobs.values())
        return [j.info() for j in jobs]

    def shutdown(self, wait_s: float = 10.0) -> None:
        """Stop every job (each ends with ``DownloadFailed`` code ``interrupted``); their entries stay
        ``downloading``, resumable under the same job id."""
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
        for job in jobs:
            job.request_stop("shutdown")
        deadline = time.monotonic() + wait_s
        for job in jobs:
            if job.thread is None:
                continue  # still asking the Hub about its files (maybe a Hub that never answers): nothing to finish
            job.wait(max(deadline - time.monotonic(), 0.0))

    # ---- where the job's files are (agent.hub_cache) ----

    def _snapshot(self, job: DownloadJob) -> Path:
        return hub_cache.snapshot_dir(self.paths.cache, job.model_id, job.commit)

    def _on_disk(self, job: DownloadJob, f: RemoteFile) -> int:
        """Bytes of ``f`` already in the cache: all of it, a partial ``.incomplete`` blob, or 0."""
        return hub_cache.bytes_on_disk(self.paths.cache, job.model_id, job.commit, f.path, f.size, f.etag)
