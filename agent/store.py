"""The store: ``manifest.json`` (which variants are installed, which is active) over the file cache.

``manifest.json`` under ``Paths.home`` is ``{"version": 1, "active": <key|null>, "variants": {key:
entry}}``; the files themselves live in the Hugging Face cache (``Paths.cache``, snapshots symlinked
into ``blobs/``) or, for imported models, under ``Paths.imported/<org>/<name>/``.

What callers may rely on:

- ``Store(paths)`` never fails on a bad manifest: one that does not parse or validate is moved aside
  to ``manifest.corrupt-<UTC>.json`` and the store is rebuilt from the cache; a missing manifest is
  rebuilt too. What happened is in ``store.warnings`` (one line each) for the worker to report.
- Every open reconciles: a ``ready`` entry whose files are gone becomes ``error`` ("files missing:
  ..."), and such an entry whose files came back is ``ready`` again. Entries left ``downloading`` by a
  killed worker stay ``downloading``; ``interrupted()`` lists them for the downloader to resume.
- All methods are thread-safe; entries are frozen values (a changed entry is a new object).
- Every change is written at once, atomically (temp file, fsync, ``os.replace``, fsync of the folder),
  mode 0600: a crash leaves the old or the new manifest, never half of one.
- No entry reaches outside the cache or imported roots: model ids are validated and paths checked.
"""

from __future__ import annotations

import builtins
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import msgspec

from agent.cache_files import remove_files, scan_variants
from agent.errors import BadRequestError, NotFoundError
from agent.model_kinds import Kind
from agent.paths import Paths
from agent.variants import KEY_PREFIX, InvalidNameError, VariantKey, looks_like_key, validate_model_id
from ipc.files import atomic_write
from ipc.messages import InstalledModel

MANIFEST_VERSION = 1
Status = Literal["downloading", "ready", "error"]
Source = Literal["hub", "import"]


def utc_now() -> str:
    """ISO 8601 UTC, second precision, e.g. ``2025-01-31T12:00:00Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class VariantEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One installed (or installing) variant. ``files`` are relative to ``path``, the folder holding
    them: a cache snapshot dir (``source="hub"``) or an imported folder (``source="import"``)."""

    key: str
    model_id: str
    name: str
    quantization: str
    device: str
    files: list[str]
    size: int
    commit: str | None
    downloaded_at: str | None
    status: Status
    error: str | None = None
    source: Source = "hub"
    path: str = ""
    revision: str = "main"
    kind: Kind = "chat"
    """``chat`` or ``embed`` (``agent.model_kinds``); manifests written before kinds were known are chat."""
    job_id: str = ""
    """The download job that wrote a ``downloading`` entry: a download resumed at start keeps it."""

    def to_installed(self, active_key: str | None) -> InstalledModel:
        """The wire view (``ipc.messages.InstalledModel``): every field the two share, by name, so a
        field added to both is carried without another hand-written copy; plus whether it is active."""
        shared = {name: getattr(self, name) for name in _INSTALLED_FIELDS}
        return InstalledModel(**shared, files=list(self.files), active=self.key == active_key)

    def folder(self) -> Path:
        """``path`` with symlinks resolved (where the files really are)."""
        return Path(self.path).resolve()

    def file_paths(self) -> list[Path]:
        """Where each file is named (for hub entries: the snapshot symlinks, not the blobs)."""
        folder = self.folder()
        return [Path(os.path.normpath(folder / f)) for f in self.files]

    def missing_files(self) -> list[str]:
        return [f for f in self.files if not (Path(self.path) / f).is_file()]


_INSTALLED_FIELDS = tuple(
    name for name in InstalledModel.__struct_fields__ if name in VariantEntry.__struct_fields__ and name != "files"
)
"""What a manifest entry and its wire view share (``files`` is copied: the entry's list stays its own)."""


def new_entry(
    model_id: str, quantization: str, device: str, *, path: str, files: list[str], size: int = 0, **more: Any
) -> VariantEntry:
    """An entry with a validated key; ``more`` sets the remaining fields (status defaults to downloading)."""
    key = VariantKey.make(model_id, quantization, device)
    fields: dict[str, Any] = {"commit": None, "downloaded_at": None, "status": "downloading", **more}
    return VariantEntry(
        key=str(key),
        model_id=key.model_id,
        name=key.model_id.split("/", 1)[1],
        quantization=key.quantization,
        device=key.device,
        files=list(files),
        size=size,
        path=path,
        **fields,
    )


class _Manifest(msgspec.Struct, kw_only=True):
    version: int
    active: str | None = None
    variants: dict[str, VariantEntry] = msgspec.field(default_factory=dict)


class AmbiguousNameError(BadRequestError):
    """A partial name matching several variants, none active; ``keys`` are theirs, sorted."""

    def __init__(self, name: str, keys: list[str]) -> None:
        super().__init__(f"{name!r} has several variants, name one: {', '.join(keys)}")
        self.keys = keys


OUTSIDE = "path outside the store"
"""The error of an entry whose folder is not under the cache (or imported) folder now, e.g. after
``cache_dir`` changed; it is ready again once the folder is inside again and its files are whole."""


class Store:
    """The manifest and the files it describes. See the module docstring for the guarantees."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.warnings: list[str] = []
        self._lock = threading.RLock()
        paths.ensure()
        self._variants: dict[str, VariantEntry] = {}
        self._active: str | None = None
        self._open()

    # ---- reading -------------------------------------------------------------------------------

    def get(self, key: str) -> VariantEntry | None:
        with self._lock:
            return self._variants.get(key)

    def require(self, key: str) -> VariantEntry:
        """The entry of ``key``; ``NotFoundError`` if there is none."""
        entry = self.get(key)
        if entry is None:
            raise NotFoundError(f"no installed variant {key}")
        return entry

    def list(self) -> list[VariantEntry]:
        """All entries, sorted by key."""
        with self._lock:
            return [self._variants[k] for k in sorted(self._variants)]

    def installed(self) -> builtins.list[InstalledModel]:
        """All entries as the protocol's ``InstalledModel``, ``active`` set on the active one."""
        with self._lock:
            return [e.to_installed(self._active) for e in self.list()]

    def interrupted(self) -> builtins.list[VariantEntry]:
        """Entries left ``downloading`` (by a killed or stopped worker), to be resumed."""
        return [e for e in self.list() if e.status == "downloading"]

    def resolve(self, name: str) -> VariantEntry:
        """The entry ``name`` means, whatever its status: the one resolver behind every door. A full
        key means that variant; ``org/name::quant`` or a bare ``org/name`` the one variant it matches,
        or of several the active one, else ``AmbiguousNameError`` (docs/protocol.md, "Model names").
        ``NotFoundError`` when nothing matches, ``InvalidNameError`` for a malformed name."""
        with self._lock:
            if looks_like_key(name):
                key = VariantKey.parse(name)
                if name.removeprefix(KEY_PREFIX).count("::") == 2:
                    return self.require(str(key))
                model_id, quant = key.model_id, key.quantization
            else:
                model_id, quant = validate_model_id(name), None
            matches = [e for k, e in sorted(self._variants.items())
                       if e.model_id == model_id and quant in (None, e.quantization)]
            if len(matches) == 1:
                return matches[0]
            if not matches:
                raise NotFoundError(f"{name!r} is not installed; `hflocal ls` lists what is")
            active = [e for e in matches if e.key == self._active]
            if active:
                return active[0]
            raise AmbiguousNameError(name, [e.key for e in matches])

    @property
    def active(self) -> str | None:
        """The active variant's key (remembered across restarts), or None."""
        with self._lock:
            return self._active

    # ---- writing -------------------------------------------------------------------------------

    def set_active(self, key: str | None) -> None:
        """Make ``key`` active (it must be in the store) or clear it with None."""
        with self._lock:
            if key is not None:
                self.require(key)
            self._active = key
            self._save()

    def put(self, entry: VariantEntry) -> None:
        """Add or replace an entry (its key must match its model id, quantization and device)."""
        _validate_entry(entry.key, entry)
        with self._lock:
            self._variants[entry.key] = entry
            self._save()

    def update(self, key: str, **changes: Any) -> VariantEntry:
        """Replace fields of an existing entry; returns the new entry. ``NotFoundError`` if absent."""
        with self._lock:
            entry = msgspec.structs.replace(self.require(key), **changes)
            _validate_entry(key, entry)
            self._variants[key] = entry
            self._save()
            return entry

    def remove(self, key: str) -> VariantEntry | None:
        """Forget an entry without touching files (the downloader uses it for empty cancelled jobs)."""
        with self._lock:
            entry = self._variants.pop(key, None)
            if entry is not None:
                self._active = None if self._active == key else self._active
                self._save()
            return entry

    def delete(self, key: str) -> int:
        """Remove a variant and its files; returns the bytes freed.

        Files another entry still uses are kept (HF snapshots symlink into ``blobs/``: q4 and q8 of
        one commit share config and tokenizer blobs). Partial ``.incomplete`` blobs go too unless
        another variant of the repo is unfinished. Empty snapshot folders are removed, and the whole
        repo folder once no snapshot is left. If the variant was active, nothing is active after.
        Callers cancel a running download of ``key`` first (``Downloads.delete`` does both).
        """
        with self._lock:
            entry = self.require(key)
            others = [e for k, e in self._variants.items() if k != key]
            freed = remove_files(self.paths, entry, others)
            del self._variants[key]
            if self._active == key:
                self._active = None
            self._save()
            return freed

    def release_files(self, old: VariantEntry) -> int:
        """Delete the files of a superseded version of an entry (e.g. the previous commit after an
        update) that no current entry uses; the entry itself is not touched. Returns bytes freed."""
        with self._lock:
            return remove_files(self.paths, old, list(self._variants.values()))

    # ---- opening, reconciling, rebuilding -------------------------------------------------------

    def _open(self) -> None:
        manifest = self.paths.manifest
        try:
            raw = manifest.read_bytes()
        except FileNotFoundError:
            raw = None
        except IsADirectoryError:
            aside = self._move_aside(manifest)  # a folder is kept, like an unreadable file
            self._rebuild()
            self.warnings.append(f"{manifest} was a folder, not a file: kept as {aside.name}, "
                                 f"rebuilt {len(self._variants)} variant(s) from the cache")
            self._reconcile()
            self._save()
            return
        if raw is None:
            self._rebuild()
            if self._variants:
                self.warnings.append(f"{manifest} was missing: rebuilt {len(self._variants)} variant(s) from the cache")
        else:
            try:
                data = msgspec.json.decode(raw, type=_Manifest)
                if data.version != MANIFEST_VERSION:
                    raise ValueError(f"unsupported manifest version {data.version}")
                for key, entry in data.variants.items():
                    _validate_entry(key, entry)
                if data.active is not None and data.active not in data.variants:
                    raise ValueError(f"active variant {data.active!r} is not in the manifest")
                self._variants, self._active = dict(data.variants), data.active
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
                aside, why = self._move_aside(manifest), " ".join(str(exc).split())[:200]
                self._rebuild()
                self.warnings.append(
                    f"{manifest} was unreadable ({why}): kept as {aside.name}, "
                    f"rebuilt {len(self._variants)} variant(s) from the cache"
                )
        self._reconcile()
        self._save()

    def _move_aside(self, manifest: Path) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = manifest.with_name(f"manifest.corrupt-{stamp}.json")
        n = 1
        while aside.exists():
            aside = manifest.with_name(f"manifest.corrupt-{stamp}-{n}.json")
            n += 1
        os.replace(manifest, aside)
        return aside

    def _reconcile(self) -> None:
        for key, entry in list(self._variants.items()):
            if not self._inside_roots(Path(entry.path), entry.files):
                if entry.status != "error" or entry.error != OUTSIDE:
                    self._variants[key] = msgspec.structs.replace(entry, status="error", error=OUTSIDE)
                continue
            if entry.status == "downloading":
                continue
            missing = entry.missing_files()
            if entry.status == "error" and entry.error == OUTSIDE and not missing:
                # Back inside (cache_dir set, then removed): it was stranded, not broken.
                self._variants[key] = msgspec.structs.replace(entry, status="ready", error=None)
                continue
            if entry.status == "ready" and missing:
                shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
                self._variants[key] = msgspec.structs.replace(entry, status="error", error=f"files missing: {shown}")
            elif entry.status == "error" and (entry.error or "").startswith("files missing") and not missing:
                self._variants[key] = msgspec.structs.replace(entry, status="ready", error=None)
        if self._active is not None and self._active not in self._variants:
            self._active = None

    def _inside_roots(self, folder: Path, files: builtins.list[str]) -> bool:
        roots = [self.paths.cache.resolve(), self.paths.imported.resolve()]
        try:
            base = folder.resolve()
            if not any(base.is_relative_to(r) and base != r for r in roots):
                return False
            return all(Path(os.path.normpath(base / f)).is_relative_to(base) for f in files)
        except (OSError, ValueError):
            return False

    def _rebuild(self) -> None:
        """Entries for everything runnable in the cache and the imported folder (status ready)."""
        found: dict[str, VariantEntry] = {}
        for v in scan_variants(self.paths.cache, self.paths.imported):
            entry = new_entry(v.model_id, v.quantization, "auto", path=str(v.folder), files=v.files, size=v.size,
                              status="ready", downloaded_at=v.downloaded_at, commit=v.commit, revision=v.revision,
                              source=v.source, kind=v.kind)
            old = found.get(entry.key)
            if old is None or (entry.downloaded_at or "") > (old.downloaded_at or ""):
                found[entry.key] = entry
        self._variants, self._active = found, None

    def _save(self) -> None:
        data = _Manifest(version=MANIFEST_VERSION, active=self._active, variants=dict(sorted(self._variants.items())))
        atomic_write(self.paths.manifest, msgspec.json.format(msgspec.json.encode(data), indent=2) + b"\n")


def _validate_entry(key: str, entry: VariantEntry) -> None:
    try:
        expected = str(VariantKey.make(entry.model_id, entry.quantization, entry.device))
    except InvalidNameError as exc:
        raise ValueError(str(exc)) from None
    if key != entry.key or entry.key != expected:
        raise ValueError(f"entry {key!r} does not match its fields (expected {expected!r})")
    if any(os.path.isabs(f) or ".." in Path(f).parts for f in entry.files):
        raise ValueError(f"entry {key!r} names a file outside its folder")

