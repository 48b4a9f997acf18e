"""Fixtures: tiny onnx-community repos (real ONNX graphs, real onnxruntime) and models loaded from them.

Repos and loaded models are built once per session; a model keeps no state between ``generate``
calls, so tests may share it. Tests that change a model (``close``) load their own.
"""

from __future__ import annotations

import pytest

from agent.engine.model import OnnxChatModel, load_model
from tests.engine.helpers import SCRIPTED_REPLY
from tests.fakes.tiny_model import TinyModel, build_tiny_repo


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_tiny_repo(tmp_path_factory.mktemp("tiny") / "repo", quants=("fp32", "fp16", "q8", "q4"))


@pytest.fixture(scope="session")
def tiny_model(tiny: TinyModel) -> OnnxChatModel:
    return load_model(tiny.path, quantization="fp32", device="cpu", threads=1)


@pytest.fixture(scope="session")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_tiny_repo(tmp_path_factory.mktemp("scripted") / "repo", reply=SCRIPTED_REPLY)


@pytest.fixture(scope="session")
def scripted_model(scripted: TinyModel) -> OnnxChatModel:
    return load_model(scripted.path, quantization="fp32", device="cpu", threads=1)

