"""Repositories of the local test hub, kept on disk.

Everything lives under one root folder so that a hub server running in another process (the CLI
in ``__main__``) serves exactly what the test process wrote: file contents are stored once by
sha256 under ``objects/``, and each repository is one JSON record under ``repos/<org>/<name>.json``
that is replaced atomically on every change. The server re-reads records per request, so a test may
add, update or remove repositories while a server is running.

Ids follow the Hub: a *commit* sha is a 40-hex sha1 computed from the repository id, the parent
commit and the (path, oid) list, so the same inputs always give the same commit. A non-LFS file's
oid and ETag is its git blob sha1; an LFS file's ETag is the sha256 of its contents, and its git oid
is the blob sha1 of its LFS pointer text, as on huggingface.co.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_LFS_PATTERNS: tuple[str, ...] = (
    "*.onnx",
    "*.onnx_data",
    "*.onnx.data",
    "*_data",
    "*.gguf",
    "*.bin",
    "*.safetensors",
)
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CHUNK = 1 << 20
_META_FIELDS = frozenset({"gated", "pipeline_tag", "tags", "library_name", "downloads", "likes"})


def git_blob_sha1(data: bytes) -> str:
    """The git object id of ``data`` stored as a blob (what ``git hash-object`` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The LFS pointer text git stores in place of an LFS file; its length is ``pointerSize``."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def iso_time(seconds: float) -> str:
    """Hub-style UTC timestamp, e.g. ``2024-05-01T12:00:00.000Z`` (parsed by huggingface_hub)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds * 1000) % 1000:03d}Z"


@dataclass(frozen=True)
class FileEntry:
    """One file of one commit. ``etag`` is what the client names the cached blob after."""

    path: str
    size: int
    sha256: str
    git_sha1: str  # blob sha1 of the content, used as the ETag of non-LFS files
    lfs: bool

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_sha1

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.sha256, self.size))

    @property
    def oid(self) -> str:
        """The git oid the tree API reports: the pointer's blob sha1 for LFS files."""
        return git_blob_sha1(lfs_pointer(self.sha256, self.size)) if self.lfs else self.git_sha1

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "sha256": self.sha256, "git_sha1": self.git_sha1, "lfs": self.lfs}


@dataclass(frozen=True)
class Commit:
    sha: str
    parent: str | None
    date: str
    files: Mapping[str, FileEntry]


@dataclass
class Repo:
    """A repository record as read from disk (a snapshot: later writes do not change it)."""

    id: str
    gated: bool | str = False
    pipeline_tag: str | None = None
    tags: list[str] = field(default_factory=list)
    library_name: str | None = None
    downloads: int = 0
    likes: int = 0
    created_at: str = ""
    refs: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        """A branch name or a full commit sha → that commit; anything else → None."""
        sha = self.refs.get(revision, revision)
        return self.commits.get(sha)

    @property
    def head(self) -> Commit:
        return self.commits[self.refs["main"]]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "gated": self.gated,
            "pipeline_tag": self.pipeline_tag,
            "tags": self.tags,
            "library_name": self.library_name,
            "downloads": self.downloads,
            "likes": self.likes,
            "createdAt": self.created_at,
            "refs": self.refs,
            "commits": {
                c.sha: {"parent": c.parent, "date": c.date, "files": {p: f.to_json() for p, f in c.files.items()}}
                for c in self.commits.values()
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Repo:
        commits = {
            sha: Commit(
                sha=sha,
                parent=c["parent"],
                date=c["date"],
                files={p: FileEntry(path=p, **f) for p, f in c["files"].items()},
            )
            for sha, c in data["commits"].items()
        }
        return cls(
            id=data["id"],
            gated=data["gated"],
            pipeline_tag=data["pipeline_tag"],
            tags=list(data["tags"]),
            library_name=data["library_name"],
            downloads=data["downloads"],
            likes=data["likes"],
            created_at=data["createdAt"],
            refs=dict(data["refs"]),
            commits=commits,
        )


class HubRepos:
    """The repositories under ``root``: what tests write and what ``HubServer`` serves.

    Writers in one process are serialised by a lock; records are replaced atomically, so a server
    in another process never reads a half-written record.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "objects").mkdir(parents=True, exist_ok=True)
        (self.root / "repos").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    # ---- reading (used by the server) -------------------------------------------------------

    def get(self, repo_id: str) -> Repo | None:
        path = self._record_path(repo_id)
        if path is None:
            return None
        try:
            return Repo.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            return None

    def all(self) -> list[Repo]:
        repos = []
        for path in sorted((self.root / "repos").glob("*/*.json")):
            repo = self.get(f"{path.parent.name}/{path.stem}")
            if repo is not None:
                repos.append(repo)
        return repos

    def object_path(self, entry: FileEntry) -> Path:
        return self.root / "objects" / entry.sha256

    # ---- writing (used by tests) ------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes | Path],
        *,
        lfs_patterns: Iterable[str] = DEFAULT_LFS_PATTERNS,
        gated: bool | str = False,
        pipeline_tag: str | None = "text-generation",
        tags: Iterable[str] = ("onnx", "transformers.js"),
        library_name: str | None = "transformers.js",
        downloads: int = 0,
        likes: int = 0,
        revision: str = "main",
    ) -> str:
        """Create (or replace) ``repo_id`` with one commit of ``files``; returns the commit sha.

        ``gated=True`` means ``"manual"`` gating. The commit is on branch ``revision`` and, so
        that ``model_info`` without a revision works, also on ``main``.
        """
        if self._record_path(repo_id) is None:
            raise ValueError(f"invalid repo id {repo_id!r}: expected 'org/name'")
        entries = self._store_files(files, tuple(lfs_patterns))
        now = time.time()
        commit = _make_commit(repo_id, None, entries, iso_time(now))
        repo = Repo(
            id=repo_id,
            gated="manual" if gated is True else gated,
            pipeline_tag=pipeline_tag,
            tags=list(tags),
            library_name=library_name,
            downloads=downloads,
            likes=likes,
            created_at=iso_time(now),
            refs={"main": commit.sha, revision: commit.sha},
            commits={commit.sha: commit},
        )
        with self._lock:
            self._write(repo)
        return commit.sha

    def update_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes | Path] | None = None,
        *,
        delete: Iterable[str] = (),
        revision: str = "main",
        lfs_patterns: Iterable[str] = DEFAULT_LFS_PATTERNS,
    ) -> str:
        """Make a new commit on branch ``revision``: ``files`` added or replaced, ``delete`` removed.

        The old commit stays resolvable by its sha, as on the Hub. Returns the new commit sha.
        """
        entries = self._store_files(files or {}, tuple(lfs_patterns))
        with self._lock:
            repo = self._require(repo_id)
            parent = repo.resolve(revision) or repo.head
            merged = {p: f for p, f in parent.files.items() if p not in set(delete)}
            merged.update(entries)
            commit = _make_commit(repo_id, parent.sha, merged, iso_time(time.time()))
            repo.commits[commit.sha] = commit
            repo.refs[revision] = commit.sha
            self._write(repo)
        return commit.sha

    def set_meta(self, repo_id: str, **fields: Any) -> None:
        """Change listing metadata (gated, pipeline_tag, tags, library_name, downloads, likes)."""
        unknown = set(fields) - _META_FIELDS
        if unknown:
            raise TypeError(f"unknown repo fields: {sorted(unknown)}")
        with self._lock:
            repo = self._require(repo_id)
            for name, value in fields.items():
                if name == "gated" and value is True:
                    value = "manual"
                setattr(repo, name, list(value) if name == "tags" else value)
            self._write(repo)

    def remove_repo(self, repo_id: str) -> None:
        """Forget ``repo_id`` (its objects stay: other repos may share them)."""
        path = self._record_path(repo_id)
        if path is not None:
            with self._lock:
                path.unlink(missing_ok=True)

    # ---- internals --------------------------------------------------------------------------

    def _record_path(self, repo_id: str) -> Path | None:
        if not _REPO_ID.match(repo_id) or ".." in repo_id:
            return None
        org, name = repo_id.split("/")
        return self.root / "repos" / org / f"{name}.json"

    def _require(self, repo_id: str) -> Repo:
        repo = self.get(repo_id)
        if repo is None:
            raise KeyError(f"no repo {repo_id!r} under {self.root}")
        return repo

    def _write(self, repo: Repo) -> None:
        path = self._record_path(repo.id)
        assert path is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, json.dumps(repo.to_json(), indent=1).encode())

    def _store_files(self, files: Mapping[str, bytes | Path], lfs_patterns: tuple[str, ...]) -> dict[str, FileEntry]:
        entries = {}
        for rel, content in files.items():
            rel = rel.strip("/")
            if not rel or any(part in ("", ".", "..") for part in rel.split("/")):
                raise ValueError(f"invalid path in repo: {rel!r}")
            name = rel.rsplit("/", 1)[-1]
            is_lfs = any(fnmatch.fnmatch(name, pat) or fnmatch.fnmatch(rel, pat) for pat in lfs_patterns)
            entries[rel] = self._store_object(rel, content, is_lfs)
        return entries

    def _store_object(self, rel: str, content: bytes | Path, is_lfs: bool) -> FileEntry:
        """Copy ``content`` into ``objects/<sha256>``, hashing as it streams (files may be large)."""
        sha256, size = hashlib.sha256(), 0
        fd, tmp_name = tempfile.mkstemp(dir=self.root / "objects", prefix=".tmp-")
        with os.fdopen(fd, "wb") as out:
            if isinstance(content, (bytes, bytearray)):
                chunks: Iterable[bytes] = [bytes(content)]
                size = len(content)
            else:
                size = Path(content).stat().st_size
                chunks = _read_chunks(Path(content))
            sha1 = hashlib.sha1(b"blob %d\0" % size)
            for chunk in chunks:
                sha256.update(chunk)
                sha1.update(chunk)
                out.write(chunk)
        target = self.root / "objects" / sha256.hexdigest()
        if target.exists():
            os.unlink(tmp_name)
        else:
            os.replace(tmp_name, target)
        return FileEntry(path=rel, size=size, sha256=sha256.hexdigest(), git_sha1=sha1.hexdigest(), lfs=is_lfs)


def _make_commit(repo_id: str, parent: str | None, files: Mapping[str, FileEntry], date: str) -> Commit:
    h = hashlib.sha1(f"repo {repo_id}\nparent {parent or ''}\n".encode())
    for path in sorted(files):
        h.update(f"{files[path].oid} {path}\n".encode())
    return Commit(sha=h.hexdigest(), parent=parent, date=date, files=dict(sorted(files.items())))


def _read_chunks(path: Path) -> Iterable[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp_name, path)


__all__ = ["DEFAULT_LFS_PATTERNS", "Commit", "FileEntry", "HubRepos", "Repo", "git_blob_sha1", "lfs_pointer"]
