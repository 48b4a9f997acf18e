"""JSON bodies of the Hub API, as plain functions of the stored repositories.

Shapes follow what huggingface_hub 0.36 parses (``ModelInfo``, ``RepoSibling``, ``RepoFile``,
``RepoFolder``); only fields the client reads or tests assert on are produced.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .storage import Commit, FileEntry, Repo

Query = Mapping[str, Sequence[str]]

_SORT_KEYS: dict[str, Callable[[Repo], Any]] = {
    "downloads": lambda r: r.downloads,
    "likes": lambda r: r.likes,
    "lastModified": lambda r: r.head.date,
    "createdAt": lambda r: r.created_at,
    "trendingScore": lambda r: r.likes,
    "id": lambda r: r.id.lower(),
}


def sibling(entry: FileEntry, *, blobs: bool) -> dict[str, Any]:
    """One ``siblings`` item; with ``blobs`` (``?blobs=true``) also sizes and LFS info."""
    item: dict[str, Any] = {"rfilename": entry.path}
    if blobs:
        item["size"] = entry.size
        item["blobId"] = entry.oid
        if entry.lfs:
            item["lfs"] = {"sha256": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
    return item


def model_info(repo: Repo, commit: Commit, *, siblings: bool = True, blobs: bool = False) -> dict[str, Any]:
    """``GET /api/models/{id}[/revision/{rev}]`` and one item of ``GET /api/models``."""
    info: dict[str, Any] = {
        "_id": hashlib.sha1(repo.id.encode()).hexdigest()[:24],
        "id": repo.id,
        "modelId": repo.id,
        "author": repo.id.split("/")[0],
        "sha": commit.sha,
        "lastModified": commit.date,
        "createdAt": repo.created_at,
        "private": False,
        "disabled": False,
        "gated": repo.gated,
        "downloads": repo.downloads,
        "likes": repo.likes,
        "tags": list(repo.tags),
        "pipeline_tag": repo.pipeline_tag,
        "library_name": repo.library_name,
        "usedStorage": sum(f.size for f in commit.files.values()),
    }
    if siblings:
        info["siblings"] = [sibling(f, blobs=blobs) for f in commit.files.values()]
    return info


def _first(query: Query, name: str, default: str | None = None) -> str | None:
    values = query.get(name)
    return values[0] if values else default


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() not in ("", "0", "false", "no")


def list_models(repos: Sequence[Repo], query: Query) -> list[dict[str, Any]]:
    """All items ``GET /api/models`` would list for ``query``, filtered and sorted (unpaginated).

    ``search`` is a case-insensitive substring of the id (every value must match); each ``filter``
    must be one of the repo's tags, its library or its pipeline tag; ``sort`` is descending unless
    ``direction=1``. Siblings are included when ``full`` or ``expand=siblings`` asks.
    """
    searches = [s.lower() for s in query.get("search", [])]
    filters = list(query.get("filter", []))
    author = _first(query, "author")
    pipeline_tag = _first(query, "pipeline_tag")
    selected = []
    for repo in repos:
        labels = set(repo.tags) | {label for label in (repo.library_name, repo.pipeline_tag) if label}
        if any(s not in repo.id.lower() for s in searches):
            continue
        if any(f not in labels for f in filters):
            continue
        if author is not None and repo.id.split("/")[0].lower() != author.lower():
            continue
        if pipeline_tag is not None and repo.pipeline_tag != pipeline_tag:
            continue
        if "gated" in query and _truthy(_first(query, "gated")) != bool(repo.gated):
            continue
        selected.append(repo)
    sort = _first(query, "sort")
    selected.sort(key=lambda r: r.id.lower())
    if sort in _SORT_KEYS:
        descending = _first(query, "direction", "-1") != "1"
        selected.sort(key=_SORT_KEYS[sort], reverse=descending)
    with_siblings = _truthy(_first(query, "full")) or "siblings" in query.get("expand", [])
    return [model_info(r, r.head, siblings=with_siblings) for r in selected]


def _dir_oid(commit: Commit, directory: str) -> str:
    h = hashlib.sha1(f"tree {directory}\n".encode())
    for path, entry in commit.files.items():
        if path.startswith(directory + "/"):
            h.update(f"{entry.oid} {path}\n".encode())
    return h.hexdigest()


def tree(commit: Commit, path: str, *, recursive: bool) -> list[dict[str, Any]] | None:
    """``GET /api/models/{id}/tree/{rev}[/{path}]``: entries under ``path``; None if it is no folder."""
    prefix = f"{path.strip('/')}/" if path.strip("/") else ""
    files = [f for p, f in commit.files.items() if p.startswith(prefix)]
    if prefix and not files:
        return None
    directories: set[str] = set()
    entries: list[dict[str, Any]] = []
    for entry in files:
        parts = entry.path[len(prefix) :].split("/")
        for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
            directories.add(prefix + "/".join(parts[:depth]))
        if recursive or len(parts) == 1:
            item: dict[str, Any] = {"type": "file", "oid": entry.oid, "size": entry.size, "path": entry.path}
            if entry.lfs:
                item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
            entries.append(item)
    entries += [{"type": "directory", "oid": _dir_oid(commit, d), "size": 0, "path": d} for d in directories]
    entries.sort(key=lambda e: (e["type"] != "directory", e["path"]))
    return entries
