"""Which graph a chat model runs: the fused rewrite of a Hub export when there is one, else the file
itself. See :mod:`agent.convert.fast_path`; the choice is reported in ``ModelInfo.graph``.

``HFLOCAL_FAST_PATH=0`` keeps every model on its original graph (benchmarks compare both paths).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from agent.engine.contract import GraphContract, discover_contract
from agent.engine.model_files import ModelConfig
from agent.engine.session import open_session
from agent.engine.types import ModelLoadError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenedGraph:
    session: ort.InferenceSession
    contract: GraphContract
    path: Path
    graph: str
    """``fused`` (hflocal's own graph: an import, or the rewrite of a Hub export) or ``original``."""
    note: str
    """Why a model runs its original graph (an unknown family, a layout the rewrite cannot read)."""


FAST_PATH_OFF = "the fast path is off (HFLOCAL_FAST_PATH=0)"


def fast_path_enabled() -> bool:
    return os.environ.get("HFLOCAL_FAST_PATH", "1").strip().lower() not in ("0", "false", "no", "off")


def expected_graph(config: object) -> tuple[str, str]:
    """``(graph, note)`` that a chat model with this ``config.json`` will run once installed, from the
    config alone (``hflocal files``); a graph the rewrite then cannot read still runs the original."""
    if not fast_path_enabled():
        return "original", FAST_PATH_OFF
    from agent.convert.fast_path import NotOnFastPath, shape_from_config

    if not isinstance(config, dict):
        return "original", "config.json is not a JSON object"
    try:
        shape_from_config(config)
    except NotOnFastPath as exc:
        return "original", str(exc)
    except (KeyError, TypeError, ValueError) as exc:
        return "original", f"config.json cannot be read for the fast path: {exc}"
    return "fused", "rewritten into the fused graph at its first load"


def open_graph(
    folder: Path, graph_file: Path, quantization: str, config: ModelConfig, providers: list[str], threads: int
) -> OpenedGraph:
    """A session on the fastest usable graph for ``graph_file``; the original whenever the rewrite is
    unavailable or fails to open (a failed rewrite is removed so the next load tries afresh)."""
    note = FAST_PATH_OFF
    if fast_path_enabled():
        from agent.convert.fast_path import ALREADY_FUSED, fast_graph

        fast = fast_graph(folder, graph_file, quantization)
        note = fast.reason
        if fast.path is not None:
            try:
                return _open(fast.path, config, providers, threads, "fused", "")
            except ModelLoadError as exc:
                log.warning("%s: the fused rewrite does not load (%s); running the original graph", folder.name, exc)
                shutil.rmtree(fast.path.parent.parent, ignore_errors=True)
                note = f"the rewrite did not load: {exc}"
        elif note == ALREADY_FUSED:
            return _open(graph_file, config, providers, threads, "fused", "")
        else:
            log.info("%s: running the original graph: %s", folder.name, note)
    return _open(graph_file, config, providers, threads, "original", note)


def _open(path: Path, config: ModelConfig, providers: list[str], threads: int, graph: str, note: str) -> OpenedGraph:
    session = open_session(path, providers, threads)
    contract = discover_contract(
        session.get_inputs(), session.get_outputs(), config, session.get_overridable_initializers()
    )
    return OpenedGraph(session, contract, path, graph, note)
