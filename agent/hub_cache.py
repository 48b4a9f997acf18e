"""The Hugging Face cache layout, in one place: where a repo, a snapshot, a blob and a partial blob are.

``huggingface_hub`` writes and reads this layout (``hf_hub_download``, ``scan_cache_dir``); hflocal
only needs to find things in it (how much of a download is already on disk, which variants a lost
manifest had, what deleting a variant may remove) and to keep its own files beside it::

    <cache>/models--<org>--<name>/
        blobs/<etag>                  file contents, named by sha256 (LFS) or git blob sha1
        blobs/<etag>.incomplete       a partial download, continued with a Range request
        refs/<revision>               the commit a branch or tag pointed at
        snapshots/<commit>/<path>     symlinks into blobs/, one tree per commit
        .hflocal-fast/<commit>/<q>/   the fast path's rewrites of that commit's graphs (FAST_DIR)
    <cache>/.locks/models--<org>--<name>/

Nothing here downloads or deletes; ``agent.downloads`` and ``agent.cache_files`` do, through these names.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub.file_download import repo_folder_name

from agent.variants import InvalidNameError, validate_model_id

FAST_DIR = ".hflocal-fast"
"""The fast path's folder of rewritten graphs: beside the snapshots of a cached repo (outside what
the Hub client manages), or inside a folder hflocal owns."""
PARTIAL_SUFFIX = ".incomplete"
"""What ``huggingface_hub`` appends to a blob while it is being downloaded."""


def repo_dir(cache: Path, model_id: str) -> Path:
    """``<cache>/models--org--name``."""
    return Path(cache) / repo_folder_name(repo_id=model_id, repo_type="model")


def snapshot_dir(cache: Path, model_id: str, commit: str) -> Path:
    """The folder of ``model_id`` at ``commit`` (resolved: what the store records as a hub entry's path)."""
    return (repo_dir(cache, model_id) / "snapshots" / commit).resolve()


def blob_path(cache: Path, model_id: str, etag: str) -> Path:
    return repo_dir(cache, model_id) / "blobs" / etag


def is_snapshot(folder: Path) -> bool:
    """True for ``…/models--org--name/snapshots/<commit>``."""
    folder = Path(folder)
    return folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--")


def repo_of_snapshot(snapshot: Path) -> Path:
    """The ``models--org--name`` folder a snapshot belongs to."""
    return Path(snapshot).parent.parent


def repo_name_of_snapshot(snapshot: Path) -> str:
    """The repo's own name (``models--org--name/snapshots/<commit>`` → ``name``)."""
    return repo_of_snapshot(snapshot).name.split("--")[-1]


def fast_dir_for(folder: Path) -> Path:
    """Where the rewrites of ``folder``'s graphs live: ``<repo>/.hflocal-fast/<commit>`` for a Hub
    snapshot, ``<folder>/.hflocal-fast`` for a folder hflocal owns. One subfolder per quantization."""
    folder = Path(folder)
    if is_snapshot(folder):
        return repo_of_snapshot(folder) / FAST_DIR / folder.name
    return folder / FAST_DIR


def bytes_on_disk(cache: Path, model_id: str, commit: str, path: str, size: int, etag: str | None) -> int:
    """How much of one repo file is already in the cache: ``size`` when its snapshot link or its blob
    is there, the length of a partial blob (at most ``size``), else 0."""
    if (snapshot_dir(cache, model_id, commit) / path).is_file():
        return size
    if not etag:
        return 0
    blob = blob_path(cache, model_id, etag)
    if blob.is_file():
        return size
    try:
        return min(os.path.getsize(f"{blob}{PARTIAL_SUFFIX}"), size)
    except OSError:
        return 0


def partial_blobs(repo: Path) -> list[Path]:
    """The unfinished downloads of a ``models--org--name`` folder."""
    return sorted((Path(repo) / "blobs").glob(f"*{PARTIAL_SUFFIX}"))


def lock_dir(cache: Path, repo: Path) -> Path:
    """The Hub client's lock files for a ``models--org--name`` folder (removed with the repo)."""
    return Path(cache) / ".locks" / Path(repo).name


def free_bytes(folder: Path) -> int:
    """Free space on the disk that holds ``folder`` (or would, for a cache not created yet)."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


@dataclass(frozen=True, slots=True)
class CachedSnapshot:
    """One commit of one model repo in the cache, with the repo-relative names of its files."""

    model_id: str
    folder: Path
    commit: str
    revision: str
    """A ref that points at the commit (the first in sort order), else the commit itself."""
    names: list[str]


def snapshots(cache: Path) -> Iterator[CachedSnapshot]:
    """Every snapshot of a model repo with a valid id (``huggingface_hub.scan_cache_dir``); nothing
    for a missing or unreadable cache."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache)
    except (CacheNotFound, OSError, ValueError):
        return
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        try:
            model_id = validate_model_id(repo.repo_id)
        except InvalidNameError:
            continue
        for rev in repo.revisions:
            names = [f.file_path.relative_to(rev.snapshot_path).as_posix() for f in rev.files]
            ref = min(rev.refs) if rev.refs else rev.commit_hash
            yield CachedSnapshot(model_id, rev.snapshot_path, rev.commit_hash, ref, names)


__all__ = [
    "FAST_DIR", "PARTIAL_SUFFIX", "CachedSnapshot", "blob_path", "bytes_on_disk", "fast_dir_for", "free_bytes",
    "is_snapshot", "lock_dir", "partial_blobs", "repo_dir", "repo_name_of_snapshot", "repo_of_snapshot",
    "snapshot_dir", "snapshots",
]
