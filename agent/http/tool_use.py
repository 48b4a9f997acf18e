"""Tools and structured output of one chat request: what the template renders, which grammar
constrains the answer, and how calls are read back out of it.

``plan(req, info)`` returns a ``Plan``:

- ``messages`` / ``tools`` for the chat template. A model whose template renders tools itself
  (``ToolFormat.native``) gets them as ``tools``; any other model gets them described in a system
  message (``GENERIC_INSTRUCTIONS``), and its conversation's earlier calls and results written in
  the same format, so tools are never dropped.
- ``grammar``: the llguidance grammar the answer must follow. ``tool_choice`` ``auto``: free text
  until the format's opening marker, then a call whose name is one of the tools and whose arguments
  follow that tool's schema (a lazy grammar); ``required`` / a named function: a call from the first
  token; ``none``: no tools at all. ``parallel_tool_calls: false`` allows one call. With
  ``response_format`` json_object / json_schema (or the ``lark`` / ``regex`` extensions), that
  grammar is the answer, alone or as the alternative to the calls.
- ``format``: how to parse calls out of the output (``None`` when no tools are in play).
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from typing import Any

from agent.engine.constrain import GrammarError, check_grammar, grammar_for, json_options
from agent.engine.tool_format import GENERIC
from agent.engine.types import ModelInfo, ToolFormat
from agent.http import schemas
from agent.http.errors import invalid_request

GENERIC_INSTRUCTIONS = (
    "You can call tools (functions) to help with the user's request. The tools, as JSON:\n"
    "{tools}\n\n"
    "To call a tool, write exactly\n"
    "<tool_call>\n"
    '{{"name": "<the tool\'s name>", "arguments": {{<its arguments as a JSON object>}}}}\n'
    "</tool_call>\n"
    "one block per call, and nothing after the last block. A tool's result comes back in a later "
    "message, inside <tool_response></tool_response>. If no tool is needed, answer directly."
)
"""The system message that describes tools to a model whose template has no tools section."""

MAX_PARALLEL_CALLS = 8
"""The most calls one answer may make (``parallel_tool_calls`` true, the default)."""

RESULT_OPEN, RESULT_CLOSE = "<tool_response>", "</tool_response>"


@dataclass(frozen=True, slots=True)
class Plan:
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    grammar: str | None
    format: ToolFormat | None


def plan(req: schemas.ChatCompletionRequest, info: ModelInfo) -> Plan:
    """See the module docstring. Raises a 400 ``ApiError`` for a schema or grammar that does not
    compile, naming the field."""
    fmt = info.tool_format or GENERIC
    messages = schemas.template_messages(req)
    answer = answer_grammar(req.response_format)
    functions = [msgspec_function(t) for t in req.tools or ()] if req.tool_choice != "none" else []
    if not fmt.native:
        messages = generic_history(messages)
    if not functions:
        return Plan(messages, None, answer.whole if answer else None, None)
    if fmt.native:
        tools = [{"type": "function", "function": f} for f in functions]
        if fmt.name == "phi4":
            messages = _phi4_tools(messages, functions)
    else:
        messages = _with_instructions(messages, functions)
        tools = None
    grammar = tool_grammar(fmt, functions, req.tool_choice, req.parallel_tool_calls is not False, answer)
    return Plan(messages, tools, grammar, fmt)


# --------------------------------------------------------------------------- requests


def msgspec_function(tool: schemas.Tool) -> dict[str, Any]:
    function = tool.function
    out: dict[str, Any] = {"name": function.name}
    if function.description is not None:
        out["description"] = function.description
    if function.strict:
        out["strict"] = True
    out["parameters"] = function.parameters if function.parameters is not None else {
        "type": "object", "properties": {}}
    return out


@dataclass(frozen=True, slots=True)
class Answer:
    """What ``response_format`` asks the answer to be."""

    whole: str
    """The llguidance grammar of an answer that is only this."""
    rule: str | None
    """The same as the body of a Lark rule, to offer beside tool calls (``None``: cannot be)."""


def answer_grammar(fmt: schemas.ResponseFormat | None) -> Answer | None:
    """The grammar ``response_format`` asks for, or ``None`` for text. Raises a 400 naming the
    field when it does not compile."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type in ("json_object", "json_schema"):
        if fmt.type == "json_object":
            schema: Any = {"type": "object"}
            param = "response_format"
        else:
            schema = fmt.json_schema.schema_ if fmt.json_schema is not None else None
            param = "response_format.json_schema.schema"
            if not isinstance(schema, dict):
                raise invalid_request("response_format.json_schema.schema is required (a JSON schema object)",
                                      param=param)
        if fmt.json_schema is not None and fmt.json_schema.strict:
            schema = closed(schema)
        return Answer(_compiled("json_schema", schema, param), "%json " + json.dumps(json_options(schema)))
    if fmt.type == "lark":
        if not fmt.lark:
            raise invalid_request("response_format.lark (a Lark grammar) is required", param="response_format.lark")
        return Answer(_compiled("lark", fmt.lark, "response_format.lark"), None)
    if fmt.type == "regex":
        if not fmt.regex:
            raise invalid_request("response_format.regex is required", param="response_format.regex")
        return Answer(_compiled("regex", fmt.regex, "response_format.regex"), None)
    raise invalid_request(f"response_format type '{fmt.type}' is not supported (text, json_object, json_schema, "
                          "and the hflocal extensions lark and regex)", param="response_format.type")


def closed(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object that does not say (OpenAI's
    ``strict`` mode requires it of every object; hflocal applies it instead of refusing)."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: closed(value) for key, value in schema.items()}
    if out.get("type") == "object" and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _compiled(kind: str, source: Any, param: str) -> str:
    try:
        return grammar_for(kind, source, param)
    except GrammarError as exc:
        raise invalid_request(f"{exc.param}: {exc}", param=exc.param, code="invalid_grammar") from None


def _lark(lines: list[str]) -> str:
    return "%llguidance {}\n" + "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- grammars


def _call_schema(fmt: ToolFormat, function: dict[str, Any]) -> dict[str, Any]:
    parameters = copy.deepcopy(function["parameters"]) if isinstance(function["parameters"], dict) else {}
    if function.get("strict"):
        parameters = closed(parameters)
    if parameters.get("type") == "object" and "additionalProperties" not in parameters:
        parameters["additionalProperties"] = False  # no invented arguments
    parameters.pop("$schema", None)
    return {
        "type": "object",
        "properties": {"name": {"const": function["name"]}, fmt.args_key: parameters},
        "required": ["name", fmt.args_key],
        "additionalProperties": False,
    }


def _marker(text: str, token: int | None) -> str:
    return f"<[{token}]>" if token is not None else json.dumps(text)


def tool_grammar(fmt: ToolFormat, functions: list[dict[str, Any]], choice: Any, parallel: bool,
                 answer: Answer | None) -> str:
    """The Lark grammar of an answer with tool calls (see the module docstring)."""
    if isinstance(choice, dict):
        name = choice.get("function", {}).get("name")
        functions = [f for f in functions if f["name"] == name]
    forced = choice == "required" or isinstance(choice, dict)
    calls = [_call_schema(fmt, f) for f in functions]
    one = json_options(calls[0] if len(calls) == 1 else {"anyOf": calls})
    lines = ['WS: /[ \\n]{1,2}/']
    if fmt.list_body:
        array = json_options({"type": "array", "items": one, "minItems": 1,
                              "maxItems": MAX_PARALLEL_CALLS if parallel else 1})
        lines.append(f"body: %json {json.dumps(array)}")
        close = f" WS? {_marker(fmt.close, fmt.close_id)}" if fmt.close else ""
        call_rest = f"WS? body{close}"
        repeat = ""
    else:
        lines.append(f"body: %json {json.dumps(one)}")
        if fmt.close:
            call_rest = f"WS? body WS? {_marker(fmt.close, fmt.close_id)}"
        else:
            call_rest = "body"
        sep = f'WS? {json.dumps(fmt.separator)} WS?' if fmt.separator else "WS?"
        opener = f"{_marker(fmt.open, fmt.open_id)} " if fmt.open and fmt.separator == "" else ""
        repeat = f" ({sep} {opener}{call_rest}){{0,{MAX_PARALLEL_CALLS - 1}}}" if parallel else ""
    opening = _marker(fmt.open, fmt.open_id) if fmt.open else ""
    calls_rule = f"calls: {opening} {call_rest}{repeat}".replace("  ", " ")
    lines.append(calls_rule)
    if forced:
        lines.insert(0, "start: calls")
    elif answer is not None:
        if answer.rule is None:
            raise invalid_request("a lark or regex response_format cannot be combined with tools; send one or the "
                                  "other", param="response_format")
        if not fmt.open:
            raise invalid_request("response_format together with tools is not supported for this model's tool-call "
                                  "format (its calls are bare JSON); send one or the other", param="response_format")
        lines.insert(0, "start: answer | calls")
        lines.append(f"answer: {answer.rule}")
    elif fmt.open and fmt.open_id is None:
        # the marker is text: free text until it appears (lazily matched), then the call
        lines.insert(0, f"start: TEXT | head {call_rest}{repeat}")
        lines.append("TEXT: /(.|\\n)*/")
        lines.append(f"head[lazy]: /(.|\\n)*{re.escape(fmt.open)}/")
    elif fmt.open:
        # a special-token marker never occurs in free text
        lines.insert(0, "start: TEXT | TEXT? calls")
        lines.append("TEXT: /(.|\\n)*/")
    else:
        # bare JSON calls (Llama 3 without <|python_tag|>): text may not start with "{"
        lines.insert(0, "start: TEXT | calls")
        lines.append("TEXT: /[^{](.|\\n)*/")
    grammar = _lark(lines)
    try:
        if not any(f"<[{i}]>" in grammar for i in fmt.markers):
            check_grammar(grammar, "tools")
    except GrammarError as exc:
        raise invalid_request(f"the tools' parameter schemas cannot be used: {exc}", param="tools",
                              code="invalid_grammar") from None
    return grammar


# --------------------------------------------------------------------------- conversations


def _with_instructions(messages: list[dict[str, Any]], functions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    listing = "\n".join(json.dumps(f, ensure_ascii=False) for f in functions)
    text = GENERIC_INSTRUCTIONS.format(tools=listing)
    if messages and messages[0]["role"] == "system":
        first = dict(messages[0])
        first["content"] = f"{first['content']}\n\n{text}" if first["content"] else text
        return [first, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def generic_history(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Earlier calls and results as text, for templates that know neither: an assistant's calls
    become ``<tool_call>`` blocks in its content, consecutive ``tool`` messages one ``user`` message
    of ``<tool_response>`` blocks."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if message["role"] == "tool":
            block = f"{RESULT_OPEN}\n{message['content']}\n{RESULT_CLOSE}"
            if out and out[-1].get("_results"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_results": True})
            continue
        if message["role"] == "assistant" and message.get("tool_calls"):
            blocks = [
                "<tool_call>\n" + json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]},
                                             ensure_ascii=False) + "\n</tool_call>"
                for c in message["tool_calls"]
            ]
            content = message.get("content") or ""
            out.append({"role": "assistant", "content": "\n".join([content, *blocks] if content else blocks)})
            continue
        out.append(message)
    for message in out:
        message.pop("_results", None)
    return out


def _phi4_tools(messages: list[dict[str, Any]], functions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Phi-4-mini's template reads the tools from the system message's ``tools`` key."""
    listing = json.dumps(functions, ensure_ascii=False)
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "tools": listing}, *messages[1:]]
    return [{"role": "system", "content": "", "tools": listing}, *messages]
