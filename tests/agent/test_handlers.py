"""The request handlers over the narrow services they are given (agent/services.py), built here from
the real parts without a Runtime: the store (a cache repo made by hand), downloads, the model pool,
activations and imports."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

from agent.activation import Activator
from agent.downloads import Downloads
from agent.engine.loader import load_variant
from agent.errors import BadRequestError
from agent.handlers import Handlers
from agent.imports import Imports
from agent.paths import Paths
from agent.pool import ModelPool
from agent.runtime import StoreCatalog
from agent.settings import Settings
from agent.store import Store
from ipc.messages import Delete, Event, ListInstalled, ModelsChanged, Status
from tests.agent.conftest import make_cache_repo, onnx_repo_files

MODEL = "onnx-community/Tiny-Instruct"
Q4 = f"huggingface-local/{MODEL}::q4::auto"
FP32 = f"huggingface-local/{MODEL}::fp32::auto"
AGENT = Path(__file__).resolve().parents[2] / "agent"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_handlers_work_from_the_parts_they_are_given(paths: Paths) -> None:
    files = onnx_repo_files({"q4": 3000, "fp32": 2000})
    del files["README.md"]
    make_cache_repo(paths.cache, MODEL, "a" * 40, files)
    store, settings, events = Store(paths), Settings(), list[Event]()
    warnings: list[str] = []
    pool = ModelPool(StoreCatalog(store), load_variant, settings.models, events.append, active=store.active)
    activations = Activator(pool, store, warnings)
    handlers = Handlers(
        session="s1", started=0.0, http_url="http://127.0.0.1:1", paths=paths, settings=settings, store=store,
        pool=pool, activations=activations, downloads=Downloads(store, paths, settings, events.append),
        imports=Imports(paths.imported, store, activations, events.append), publish=events.append,
        warnings=warnings, stop=asyncio.Event(),
    )
    try:
        with pytest.raises(BadRequestError, match="several variants"):
            await handlers.dispatch(Delete(key=MODEL))
        deleted = await handlers.dispatch(Delete(key=f"{MODEL}::q4"))
        assert (deleted.key, deleted.freed_bytes > 0) == (Q4, True)
        assert events == [ModelsChanged(keys=[FP32])]
        listed = await handlers.dispatch(ListInstalled())
        assert [m.key for m in listed.models] == [FP32]

        warnings.append("a warning raised after the handlers were built")
        status = await handlers.dispatch(Status())
        assert status.session == "s1" and status.warnings == warnings and status.active is None
    finally:
        await pool.close()


def test_no_part_but_the_worker_and_the_quickstart_sees_the_runtime() -> None:
    """Runtime is the composition root: the parts it wires never import it (the worker builds it;
    the quickstart is handed it)."""
    importers = set()
    for module in AGENT.rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "agent.runtime":
                importers.add(module.relative_to(AGENT.parent).as_posix())
    assert importers == {"agent/worker.py", "agent/quickstart.py"}
