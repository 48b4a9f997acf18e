"""The inference engine: ONNX decoder graphs run with onnxruntime and a numpy decode loop.

Public surface: ``agent.engine.types`` (the interface the serving layer relies on) and
``load_model`` (``agent.engine.model``). Importing this package is cheap; onnxruntime is imported
when ``load_model`` is first used. No torch, no transformers.

    model = load_model(folder, quantization="q4", device="auto", threads=0)
    ids = model.encode_chat(messages, tools=None)            # TemplateError on a bad conversation
    for step in model.generate(ids, SamplingParams(max_tokens=256, stop=["\\n\\n"]), cancel):
        send(step.text)                                       # may be "" (bytes/stop held back)
    # the last step has finish_reason "stop" | "length" | "cancelled"

Modules: ``model`` (loading, ``OnnxChatModel``), ``model_files`` (folder layout, config.json and
generation_config.json), ``contract`` (graph inputs/outputs), ``session`` (onnxruntime session and
KV-cache runners), ``tokenizer``, ``chat_template``, ``sampling``, ``detokenize`` (streamed text and
stop strings), ``decode`` (the loop).
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from agent.engine.model import load_model

        return load_model
    raise AttributeError(name)
