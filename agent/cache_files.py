"""The files behind the store: finding runnable variants on disk and deleting a variant's files.

Two layouts: the Hugging Face cache (``models--org--name/{blobs,refs,snapshots/<commit>}``, snapshot
files symlinked into ``blobs/``; its names are ``agent.hub_cache``'s) and hflocal's imported folders
(``imported/<org>/<name>/``, plain files). Both may hold several variants that share files (config,
tokenizer).
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agent import hub_cache
from agent.model_kinds import Kind, folder_kind
from agent.paths import Paths
from agent.variant_files import offered_quantizations, select_files
from agent.variants import InvalidNameError, validate_model_id

if TYPE_CHECKING:
    from agent.store import VariantEntry


def _mtime_iso(paths: list[Path]) -> str | None:
    times = [p.stat().st_mtime for p in paths if p.exists()]
    if not times:
        return None
    return datetime.fromtimestamp(max(times), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class FoundVariant:
    """A runnable variant found on disk (what ``Store`` rebuilds a lost manifest from)."""

    model_id: str
    quantization: str
    folder: Path
    files: list[str]
    size: int
    downloaded_at: str | None
    commit: str | None
    revision: str
    source: Literal["hub", "import"]
    kind: Kind = "chat"


def scan_variants(cache: Path, imported: Path) -> list[FoundVariant]:
    """Every variant whose ONNX file is present: per commit snapshot of the HF cache (via
    ``huggingface_hub.scan_cache_dir``) and per ``imported/<org>/<name>/`` folder."""
    return [*_scan_hub_cache(cache), *_scan_imported(imported)]


def _variants_in(model_id: str, folder: Path, names: list[str], **fields: Any) -> list[FoundVariant]:
    found = []
    kind = folder_kind(folder, names)
    for quant in offered_quantizations(names):
        files = select_files(names, quant)
        paths = [folder / f for f in files]
        size = sum(p.stat().st_size for p in paths if p.exists())
        found.append(FoundVariant(model_id, quant, folder, files, size, _mtime_iso(paths), **fields, kind=kind))
    return found


def _scan_hub_cache(cache: Path) -> list[FoundVariant]:
    entries: list[FoundVariant] = []
    for snap in hub_cache.snapshots(cache):
        entries += _variants_in(snap.model_id, snap.folder, snap.names, commit=snap.commit, revision=snap.revision,
                                source="hub")
    return entries


def _scan_imported(root: Path) -> list[FoundVariant]:
    entries: list[FoundVariant] = []
    if not root.is_dir():
        return entries
    for folder in sorted(p for p in root.glob("*/*") if p.is_dir()):
        try:
            model_id = validate_model_id(f"{folder.parent.name}/{folder.name}")
        except InvalidNameError:
            continue
        # The fast path's rewrites live in the folder too (hub_cache.FAST_DIR); they are not variants.
        names = [n for n in (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
                 if not n.startswith(f"{hub_cache.FAST_DIR}/")]
        entries += _variants_in(model_id, folder, names, commit=None, source="import", revision="")
    return entries


def remove_files(paths: Paths, entry: VariantEntry, others: list[VariantEntry]) -> int:
    """Delete ``entry``'s files, keeping every file ``others`` (or a snapshot outside the store)
    still uses; prune emptied folders. Returns the bytes freed (each inode counted once).

    Hub entries: snapshot symlinks go, their blobs too when nothing links them any more; partial
    ``.incomplete`` blobs go unless another variant of the repo is unfinished; the repo folder goes
    once its ``snapshots/`` is empty and no other entry uses the repo. Imported entries: the files,
    and the whole folder once no other entry uses it (hflocal made it). Nothing outside
    ``paths.cache``/``paths.imported`` is ever touched.
    """
    return _FileRemover(paths, others).remove(entry)


class _FileRemover:
    """Deletes one entry's files while keeping everything ``others`` still reference."""

    def __init__(self, paths: Paths, others: list[VariantEntry]) -> None:
        self.paths = paths
        self.others = others
        self.kept_links = {str(p) for e in others for p in e.file_paths()}
        self.kept_targets = {os.path.realpath(p) for e in others for p in e.file_paths()}
        self.freed = 0
        self._seen: set[tuple[int, int]] = set()

    def _unlink(self, path: Path, count: bool = True) -> None:
        try:
            st = path.lstat()
            path.unlink()
        except FileNotFoundError:
            return
        if count and not stat.S_ISLNK(st.st_mode) and (st.st_dev, st.st_ino) not in self._seen and st.st_nlink <= 1:
            self._seen.add((st.st_dev, st.st_ino))
            self.freed += st.st_size

    def remove(self, entry: VariantEntry) -> int:
        if not entry.path:
            return 0
        folder = entry.folder()
        cache, imported = self.paths.cache.resolve(), self.paths.imported.resolve()
        rewrite = hub_cache.fast_dir_for(folder) / entry.quantization  # the fast path's copy of this variant
        if rewrite.is_dir() and rewrite.resolve().is_relative_to(cache if entry.source == "hub" else imported):
            self._remove_tree(rewrite)
        if entry.source == "hub" and folder.is_relative_to(cache) and folder.parent.name == "snapshots":
            self._remove_hub(entry, folder, hub_cache.repo_of_snapshot(folder))
        elif folder.is_relative_to(imported) and folder != imported:
            self._remove_files(entry, folder, within=folder)
            if not any(e.folder() == folder for e in self.others):  # hflocal made it: all of it goes
                self._remove_tree(folder)
            _prune_empty(folder, stop=imported)
        return self.freed

    def _remove_files(self, entry: VariantEntry, folder: Path, within: Path) -> None:
        for rel in entry.files:
            link = Path(os.path.normpath(folder / rel))
            if not link.is_relative_to(folder) or str(link) in self.kept_links:
                continue
            target = Path(os.path.realpath(link))
            if link.is_symlink():
                link.unlink(missing_ok=True)
                unused = str(target) not in self.kept_targets and not _still_linked(within / "snapshots", target)
                if target.is_relative_to(within) and unused:
                    self._unlink(target)
            else:
                self._unlink(link)
            _prune_empty(link.parent, stop=folder)

    def _remove_hub(self, entry: VariantEntry, snapshot: Path, repo_dir: Path) -> None:
        if not hub_cache.is_snapshot(snapshot) or repo_dir.parent != self.paths.cache.resolve():
            return
        self._remove_files(entry, snapshot, within=repo_dir)
        same_repo = [e for e in self.others if e.model_id == entry.model_id and e.source == "hub"]
        if not any(e.status != "ready" for e in same_repo):
            for partial in hub_cache.partial_blobs(repo_dir):
                self._unlink(partial)
        _prune_empty(snapshot, stop=repo_dir / "snapshots")
        snapshots = repo_dir / "snapshots"
        if not same_repo and (not snapshots.exists() or not any(snapshots.iterdir())):
            self._remove_tree(repo_dir)
            shutil.rmtree(hub_cache.lock_dir(self.paths.cache, repo_dir), ignore_errors=True)

    def _remove_tree(self, folder: Path) -> None:
        for leftover in folder.rglob("*"):
            if leftover.is_file() and not leftover.is_symlink():
                self._unlink(leftover)
        shutil.rmtree(folder, ignore_errors=True)


def _still_linked(snapshots: Path, target: Path) -> bool:
    """True if any symlink under ``snapshots`` still resolves to ``target``."""
    if not snapshots.is_dir():
        return False
    return any(p.is_symlink() and Path(os.path.realpath(p)) == target for p in snapshots.rglob("*"))


def _prune_empty(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and its parents while they are empty, up to and including ``folder`` but
    never ``stop`` itself or anything above it."""
    folder = Path(os.path.normpath(folder))
    stop = Path(os.path.normpath(stop))
    while folder != stop and folder.is_relative_to(stop):
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
