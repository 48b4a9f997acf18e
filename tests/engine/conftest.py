"""Fixtures: tiny onnx-community repos (real ONNX graphs, real onnxruntime) and models loaded from them.

Repos and loaded models are built once per session; a model keeps no state between ``generate``
calls, so tests may share it. Tests that change a model (``close``) load their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from agent.engine.model import OnnxChatModel, load_model
from tests.engine.helpers import SCRIPTED_REPLY
from tests.fakes.tiny_model import TinyModel, build_tiny_repo


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_tiny_repo(tmp_path_factory.mktemp("tiny") / "repo", quants=("fp32", "fp16", "q8", "q4"))


@contextmanager
def fast_path_off() -> Iterator[None]:
    """These tests are about the engine running an export's own graph (its I/O contract, the runners);
    the tiny model is a Llama, so without this the fast path would run its fused rewrite instead
    (tests/convert covers the rewrite)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HFLOCAL_FAST_PATH", "0")
        yield


@pytest.fixture
def original_graphs() -> Iterator[None]:
    with fast_path_off():
        yield


@pytest.fixture(scope="session")
def tiny_model(tiny: TinyModel) -> OnnxChatModel:
    with fast_path_off():
        return load_model(tiny.path, quantization="fp32", device="cpu", threads=1)


@pytest.fixture(scope="session")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_tiny_repo(tmp_path_factory.mktemp("scripted") / "repo", reply=SCRIPTED_REPLY)


@pytest.fixture(scope="session")
def scripted_model(scripted: TinyModel) -> OnnxChatModel:
    return load_model(scripted.path, quantization="fp32", device="cpu", threads=1)

