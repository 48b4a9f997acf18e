"""``hflocal import PATH``: local models into installed variants, as background jobs.

Three sources are understood:

- a **GGUF file** of a llama-family model: converted without torch (``agent.convert.gguf_import``),
  4-bit GGUF blocks mapped straight into MatMulNBits for q4;
- an **ONNX folder** in the onnx-community layout (``config.json``, tokenizer files, ``onnx/model*.onnx``):
  copied (hard-linked where possible) so the user's folder can go away;
- a **Hugging Face checkpoint folder** (``config.json`` + safetensors): exported with optimum, which
  needs the ``convert`` extra (torch); without it the job fails at once saying what to install.

Results land in ``Paths.imported/<org>/<name>/`` and become store entries with ``source="import"``.
A failed import leaves no entry and no half-written folder behind.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import shlex
import shutil
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from agent import hub_cache
from agent.errors import AgentError, BadRequestError, QuantNotOfferedError, UnsupportedError
from agent.hub import offered_quantizations, select_files
from agent.model_kinds import folder_kind
from agent.services import Activations, Publish, VariantRecords
from agent.store import new_entry, utc_now
from agent.variants import VariantKey, normalize_quantization, validate_model_id
from ipc.messages import ERROR_CODES, ImportFailed, ImportFinished, ImportProgress, ModelsChanged

log = logging.getLogger("hflocal.imports")


def convert_hint() -> str:
    """The exact command that installs the ``convert`` extra into the Python running the worker."""
    root = Path(__file__).resolve().parents[1]
    pip = f"{shlex.quote(sys.executable)} -m pip install"
    if (root / "pyproject.toml").is_file() and (root / "constraints.txt").is_file():
        command = f"{pip} -c {shlex.quote(str(root / 'constraints.txt'))} -e {shlex.quote(str(root) + '[convert]')}"
    else:
        command = f"{pip} 'hflocal[convert]' torch==2.13.0"
    return (
        "converting a checkpoint needs the convert extra (optimum-onnx, transformers, torch 2.13.0 CPU); "
        f"install it with: {command}"
    )


class MissingExtraError(AgentError):
    code = "missing_extra"


def slug(text: str) -> str:
    """A model-id-safe name part from free text (a GGUF's ``general.name`` or a file name)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    return (cleaned or "model")[:80]


_QUANT_SUFFIX = re.compile(r"[-._](?:ud-)?(?:i?q\d\w*|f16|f32|bf16|fp16|fp32)$", re.IGNORECASE)


def default_model_name(path: Path) -> str:
    """The name part of ``local/<name>`` when the user gives none.

    A GGUF is named after its file without the quantization suffix
    (``SmolLM2-135M-Instruct.Q4_1.gguf`` → ``SmolLM2-135M-Instruct``): file names are what users
    chose and recognise, while ``general.name`` is often a training-run label. A folder is named
    after itself, or after its repo when it is a Hugging Face cache snapshot
    (``models--org--name/snapshots/<commit>`` → ``name``).
    """
    if path.is_file():
        stem = path.stem
        while (trimmed := _QUANT_SUFFIX.sub("", stem)) != stem and trimmed:
            stem = trimmed
        return slug(stem)
    if hub_cache.is_snapshot(path):
        return slug(hub_cache.repo_name_of_snapshot(path))
    return slug(path.name)


SYSTEM_TREES = ("/proc", "/sys", "/dev")
"""Kernel and device trees: never a model, and reading them can hang or fail at any byte."""
MAX_FOLDER_FILES = 100_000
"""A folder with more files than this is not a model folder (``import /`` would walk the disk)."""
_ACCEPTS = "import accepts a .gguf file, an ONNX folder or a checkpoint folder"


def folder_files(path: Path) -> set[str]:
    """The files under ``path`` (relative, posix), at most ``MAX_FOLDER_FILES`` of them."""
    names: set[str] = set()
    for p in path.rglob("*"):
        if p.is_file():
            names.add(p.relative_to(path).as_posix())
            if len(names) > MAX_FOLDER_FILES:
                raise UnsupportedError(
                    f"{path} holds more than {MAX_FOLDER_FILES} files: not a model folder; {_ACCEPTS}")
    return names


def detect_kind(path: Path) -> str:
    """``gguf`` | ``onnx`` | ``checkpoint``; raises ``UnsupportedError`` naming what is accepted, and
    ``BadRequestError`` for a path that cannot be read or is no file or folder."""
    if any(path == Path(tree) or path.is_relative_to(tree) for tree in SYSTEM_TREES):
        raise BadRequestError(f"{path} is under {', '.join(SYSTEM_TREES)}, not a model; {_ACCEPTS}")
    try:
        return _detect_kind(path)
    except OSError as exc:
        raise BadRequestError(f"cannot read {exc.filename or path}: {exc.strerror or exc}") from None


def _detect_kind(path: Path) -> str:
    if path.exists() and not path.is_file() and not path.is_dir():
        raise BadRequestError(f"{path} is neither a file nor a folder; {_ACCEPTS}")
    if path.is_file():
        with open(path, "rb") as f:
            if f.read(4) == b"GGUF":
                return "gguf"
        raise UnsupportedError(f"{path} is not a GGUF file; {_ACCEPTS}")
    if path.is_dir():
        names = folder_files(path)
        if offered_quantizations(names):
            if "config.json" not in names:
                raise UnsupportedError(f"{path} has ONNX files but no config.json")
            return "onnx"
        if "config.json" in names and any(n.endswith((".safetensors", ".bin")) for n in names):
            return "checkpoint"
        raise UnsupportedError(
            f"{path} holds neither onnx/model*.onnx with config.json nor a checkpoint (config.json + *.safetensors)"
        )
    raise BadRequestError(f"{path} does not exist")


Observer = Callable[[str, int, int], None]


class Imports:
    """Runs import jobs in threads and reports them as ``import.*`` events. Installs into ``imported``
    (``Paths.imported``) and records the variants in ``store``; ``models`` unloads a variant an
    import replaces and makes it active again after."""

    def __init__(self, imported: Path, store: VariantRecords, models: Activations, publish: Publish) -> None:
        self._imported = imported
        self._store = store
        self._models = models
        self._publish = publish
        self._threads: dict[str, threading.Thread] = {}
        self._results: dict[str, list[str] | AgentError] = {}
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        # Folders of imports that a killed worker (or an export child outliving its worker) left behind.
        for pattern in ("*/.*.importing-*", "*/.*.old-*"):
            for leftover in imported.glob(pattern):
                shutil.rmtree(leftover, ignore_errors=True)

    async def start(
        self, path_text: str, quantizations: list[str], model_id: str | None, *, observer: Observer | None = None
    ) -> tuple[str, str]:
        """Check the request and start the job; returns ``(job_id, key of the first variant)``.

        ``observer(stage, done, total)``, if given, sees every progress report (not rate-limited),
        from the import thread; the quickstart prints them on the terminal."""
        path = Path(path_text).expanduser()
        if not path.is_absolute():
            raise BadRequestError(f"import needs an absolute path, got {path_text!r}")
        path = path.resolve()
        kind = await asyncio.to_thread(detect_kind, path)
        quants = [normalize_quantization(q) for q in quantizations] or ["q4"]
        if kind == "gguf":
            await asyncio.to_thread(_inspect, path)  # refuse what cannot be converted before starting
        if kind == "checkpoint" and not _has_converter():
            raise MissingExtraError(convert_hint())
        if kind == "onnx":
            names = await asyncio.to_thread(folder_files, path)
            offered = offered_quantizations(names)
            if not quantizations:
                quants = offered
            missing = [q for q in quants if q not in offered]
            if missing:
                raise AgentError(
                    f"{path} does not contain {', '.join(missing)}; it has {', '.join(offered)}",
                    code=QuantNotOfferedError.code,
                    details={"quantization": missing[0], "offered": offered},
                )
        model_id = validate_model_id(model_id) if model_id else f"local/{default_model_name(path)}"
        key = str(VariantKey.make(model_id, quants[0], "auto"))
        with self._lock:
            if model_id in self._busy:
                raise AgentError(f"{model_id} is already being imported", code="conflict")
            self._busy.add(model_id)
        job_id = uuid.uuid4().hex[:12]
        thread = threading.Thread(
            target=self._run, args=(job_id, kind, path, model_id, list(dict.fromkeys(quants)), observer),
            name=f"import-{job_id}", daemon=True,
        )
        self._threads[job_id] = thread
        thread.start()
        return job_id, key

    async def wait(self, job_id: str) -> list[str]:
        """Wait for job ``job_id`` to end; returns its keys or raises its error (``AgentError``)."""
        thread = self._threads.get(job_id)
        if thread is None:
            raise AgentError(f"no import job {job_id}", code="not_found")
        await asyncio.to_thread(thread.join)
        result = self._results.get(job_id)
        if isinstance(result, AgentError):
            raise result
        if result is None:
            raise AgentError(f"import job {job_id} ended without a result", code="internal")
        return result

    def _progress(self, job_id: str, observer: Observer | None) -> Callable[[str, int, int], None]:
        last = [0.0]

        def report(stage: str, done: int, total: int) -> None:
            import time

            if observer is not None:
                try:
                    observer(stage, done, total)
                except Exception:  # a display bug must not fail the import
                    log.exception("import progress observer failed")
            now = time.monotonic()
            if done in (0, total) or now - last[0] >= 0.2:
                last[0] = now
                self._publish(ImportProgress(job_id=job_id, stage=stage, done=done, total=total))

        return report

    def _run(
        self, job_id: str, kind: str, source: Path, model_id: str, quants: list[str], observer: Observer | None
    ) -> None:
        org, name = model_id.split("/", 1)
        final = self._imported / org / name
        staging = final.with_name(f".{name}.importing-{job_id}")
        report = self._progress(job_id, observer)
        try:
            if kind == "gguf":
                from agent.convert.gguf_import import import_gguf

                import_gguf(source, staging, quants, report)  # type: ignore[arg-type]
            elif kind == "onnx":
                _copy_onnx_folder(source, staging, quants, report)
            else:
                from agent.convert.checkpoint import export_checkpoint

                export_checkpoint(source, staging, quants, report)
            keys, reactivate = self._install(model_id, staging, final, quants)
        except Exception as exc:  # every failure becomes an import.failed event
            shutil.rmtree(staging, ignore_errors=True)
            code = getattr(exc, "code", None) or ("unsupported" if isinstance(exc, ValueError) else "internal")
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                code = "disk_full"
            if code not in ERROR_CODES:
                code = "internal"
            message = " ".join((str(exc) if code != "internal" else f"{type(exc).__name__}: {exc}").split())
            if code == "internal":
                log.exception("import of %s failed", source)
            self._results[job_id] = AgentError(message, code=code)
            self._publish(ImportFailed(job_id=job_id, code=code, message=message))
            return
        finally:
            with self._lock:
                self._busy.discard(model_id)
        self._results[job_id] = keys
        self._publish(ImportFinished(job_id=job_id, keys=keys))
        self._publish(ModelsChanged(keys=[e.key for e in self._store.list()]))
        if reactivate is not None:
            self._models.activate_threadsafe(reactivate)

    def _install(self, model_id: str, staging: Path, final: Path, quants: list[str]) -> tuple[list[str], str | None]:
        """Swap the finished folder into place and record one entry per quantization; returns the
        keys and the one to make active again (the active model was replaced, so it was unloaded)."""
        store = self._store
        keys = [str(VariantKey.make(model_id, q, "auto")) for q in quants]
        active = self._models.active
        reactivate = active if active in keys else None
        for key in keys:
            if store.get(key) is not None:
                self._models.forget_threadsafe(key)
        if final.exists():
            # Re-import over an earlier one: keep variants of it that this import does not replace.
            for item in final.rglob("*"):
                rel = item.relative_to(final)
                target = staging / rel
                if item.is_file() and not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.link(item, target) if _same_fs(item, staging) else shutil.copy2(item, target)
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:6]}")
            final.rename(old)
            staging.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            final.parent.mkdir(parents=True, exist_ok=True)
            staging.rename(final)
        names = {p.relative_to(final).as_posix() for p in final.rglob("*") if p.is_file()}
        kind = folder_kind(final, names)
        for quant in quants:
            files = select_files(names, quant)
            size = sum((final / f).stat().st_size for f in files)
            store.put(
                new_entry(
                    model_id, quant, "auto", path=str(final), files=files, size=size,
                    status="ready", source="import", downloaded_at=utc_now(), commit=None, kind=kind,
                )
            )
        return keys, reactivate

    async def close(self) -> None:
        for thread in list(self._threads.values()):
            await asyncio.to_thread(thread.join, 30)


def _inspect(path: Path) -> object:
    """The GGUF's summary (``agent.convert.gguf_import.GGUFSummary``), or ``UnsupportedError``."""
    from agent.convert.gguf_import import UnsupportedModelError, inspect_gguf

    try:
        return inspect_gguf(path)
    except UnsupportedModelError as exc:
        raise UnsupportedError(str(exc)) from None


def _has_converter() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "optimum.exporters.onnx"))


def _same_fs(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_dev == b.parent.stat().st_dev
    except OSError:
        return False


def _copy_onnx_folder(source: Path, dest: Path, quants: list[str], report: Callable[[str, int, int], None]) -> None:
    """Copy what the chosen variants need; hard links when on the same disk (instant, no space)."""
    names = {p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file()}
    wanted = list(dict.fromkeys(f for q in quants for f in select_files(names, q)))
    dest.mkdir(parents=True, exist_ok=True)
    for i, rel in enumerate(wanted):
        report("copy", i, len(wanted))
        src, dst = source / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    report("copy", len(wanted), len(wanted))
