"""The inference engine: ONNX decoder graphs run with onnxruntime and a numpy decode loop.

Public surface: ``agent.engine.types`` (the interface the serving layer relies on) and
``load_model`` (``agent.engine.model``). Importing this package is cheap; onnxruntime is imported
when ``load_model`` is first used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from agent.engine.model import load_model

        return load_model
    raise AttributeError(name)
