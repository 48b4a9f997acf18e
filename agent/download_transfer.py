"""The transfer of one download job's files: ``hf_hub_download`` per file, retried, each LFS file verified.

Runs on the job's own thread (``agent.downloads`` starts it and records the outcome). What a caller
may rely on: ``fetch_all`` returns once every file of ``job.files`` is in the cache and matches its
sha256; it raises ``StopJob`` for a requested stop, ``IntegrityError`` for a mismatch (the bad blob
and its snapshot link are removed first) and otherwise the last failure after ``retries`` transient
ones in a row (the count resets whenever bytes arrived); ``as_agent_error`` names what it means.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
from pathlib import Path

from huggingface_hub import hf_hub_download

from agent import hub
from agent.download_job import DownloadJob, StopJob
from agent.errors import AgentError, DiskFullError, IntegrityError, InternalError
from agent.hub import RemoteFile

log = logging.getLogger("hflocal.downloads")

MAX_BACKOFF_S = 30.0


def fetch_all(job: DownloadJob, cache: Path, *, retries: int, backoff_s: float) -> None:
    """Fetch every file of ``job`` into ``cache`` (see the module docstring)."""
    attempt = 0
    while True:
        fetched_before = job.fetched_bytes
        try:
            for f in job.files:
                if job.stop_requested:
                    raise StopJob()
                job.current_file = f.path
                _fetch(job, f, cache)
            return
        except (StopJob, AgentError):
            raise
        except Exception as exc:
            if is_enospc(exc) or not hub.is_transient(exc):
                raise
            if job.fetched_bytes > fetched_before:
                attempt = 0
            if attempt >= retries:
                raise
            delay = min(backoff_s * (2**attempt), MAX_BACKOFF_S)
            attempt += 1
            log.info("download %s: %s; retry %d in %.1fs", job.key, exc, attempt, delay)
            job.sleep_unless_stopped(delay)


def _fetch(job: DownloadJob, f: RemoteFile, cache: Path) -> None:
    pointer = hf_hub_download(
        job.model_id, f.path, revision=job.commit, cache_dir=cache, endpoint=hub.endpoint(), token=hub.token(),
    )
    if f.sha256:
        blob = Path(os.path.realpath(pointer))
        digest = _sha256(blob, job)
        if digest != f.sha256:
            blob.unlink(missing_ok=True)
            Path(pointer).unlink(missing_ok=True)
            raise IntegrityError(
                f"{f.path} of {job.model_id} did not match its sha256 (expected {f.sha256[:12]}…, "
                f"got {digest[:12]}…); the file was removed, download again"
            )
    job.set_file_done(f.path, f.size)


def _sha256(path: Path, job: DownloadJob) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            if job.stop_requested:
                raise StopJob()
    return digest.hexdigest()


def is_enospc(exc: BaseException | None) -> bool:
    """True if ``exc`` or anything in its cause/context chain is ENOSPC."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def as_agent_error(exc: BaseException, job: DownloadJob, cache: Path) -> AgentError:
    """What a failure of ``job`` that is not already an ``AgentError`` means to the user."""
    if is_enospc(exc):
        return DiskFullError(str(cache))
    if not isinstance(exc, Exception):
        return InternalError(f"download of {job.key} stopped: {exc!r}")
    return hub.map_error(exc, job.model_id, job.revision)
