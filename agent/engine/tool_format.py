"""How a model writes tool calls, read off its chat template and vocabulary.

``detect_tool_format`` looks at the template that renders a request with tools (``tool_use`` when
the model ships one) and at the tokenizer, and returns a ``ToolFormat``:

========== ===================================================== ==========================
name       a call, as the model writes it                        when
========== ===================================================== ==========================
hermes     ``<tool_call>{"name": …, "arguments": {…}}</tool_call>`` template has ``<tool_call>``
           (one block per call; Qwen 2.5/3, Hermes, SmolLM3)
mistral    ``[TOOL_CALLS][{"name": …, "arguments": {…}}, …]``     template has ``[TOOL_CALLS]``
phi4       ``<|tool_call|>[{"name": …, "arguments": {…}}]<|/tool_call|>``  template has ``<|tool_call|>``
llama3     ``<|python_tag|>``\\ (optional) ``{"name": …, "parameters": {…}}`` template has
           (Llama 3.1-3.3; calls separated by ``;``)            ``<|python_tag|>`` or ``"parameters"``
generic    ``<tool_call>{"name": …, "arguments": {…}}</tool_call>`` as plain  any other template
           text, the tools described in a system message (see
           ``agent.http.tool_use.GENERIC_INSTRUCTIONS``)
========== ===================================================== ==========================

``native`` says the template renders the tools itself (it mentions ``tools`` and one of the
markers above); for ``generic`` hflocal renders them. A marker that is one special token of the
vocabulary is kept as its id (``open_id``): special tokens do not appear in decoded text, so the
tool-call parser is told about them by id, and grammars name them as ``<[id]>``.
"""

from __future__ import annotations

from agent.engine.chat_template import ChatTemplate
from agent.engine.tokenizer import ModelTokenizer
from agent.engine.types import ToolFormat

GENERIC = ToolFormat(name="generic", native=False, open="<tool_call>", close="</tool_call>")


def _special_id(tokenizer: ModelTokenizer, text: str) -> int | None:
    """The id of ``text`` if it is one *special* token (non-special added tokens decode as text)."""
    if not text:
        return None
    token = tokenizer.token_to_id(text)
    return token if token is not None and token in tokenizer.special_ids else None


def detect_tool_format(template: ChatTemplate, tokenizer: ModelTokenizer) -> ToolFormat:
    """The call format of this model (see the module docstring); ``GENERIC`` when unknown."""
    source = template.sources.get("tool_use") or template.sources.get("default") or ""
    if not source and len(template.sources) == 1:
        source = next(iter(template.sources.values()))
    if "tools" not in source:
        return GENERIC
    candidates = [
        ("<tool_call>", ToolFormat("hermes", True, "<tool_call>", "</tool_call>")),
        ("[TOOL_CALLS]", ToolFormat("mistral", True, "[TOOL_CALLS]", "", list_body=True)),
        ("<|tool_call|>", ToolFormat("phi4", True, "<|tool_call|>", "<|/tool_call|>", list_body=True)),
        ("<|python_tag|>", ToolFormat("llama3", True, "<|python_tag|>", "", args_key="parameters", separator=";")),
    ]
    for marker, fmt in candidates:
        if marker in source:
            return _with_ids(fmt, tokenizer)
    if '"parameters"' in source and "<|eot_id|>" in source:
        return _with_ids(ToolFormat("llama3", True, "<|python_tag|>", "", args_key="parameters", separator=";"),
                         tokenizer)
    return GENERIC


def _with_ids(fmt: ToolFormat, tokenizer: ModelTokenizer) -> ToolFormat:
    open_id, close_id = _special_id(tokenizer, fmt.open), _special_id(tokenizer, fmt.close)
    if fmt.name == "llama3" and tokenizer.token_to_id(fmt.open) is None:
        fmt = ToolFormat("llama3", True, "", "", args_key="parameters", separator=";")
    return ToolFormat(fmt.name, fmt.native, fmt.open, fmt.close, fmt.args_key, fmt.list_body, fmt.separator,
                      open_id, close_id)
