"""Request bodies of the OpenAI Responses API (``POST /v1/responses``) and their translation into a
chat-completions request.

hflocal's Responses API is stateless: nothing is stored, so ``store`` must be false or absent (absent
is taken as false), ``previous_response_id``, ``conversation`` and ``item_reference`` inputs are
refused, and the whole conversation comes in ``input`` (as Codex CLI sends it). As OpenAI's API does,
an unknown field is refused (400 naming it), and so is a known one that hflocal cannot honour
(hosted tools, images, files, background mode...). Accepted without effect, each for a stated reason:
``reasoning`` and ``include: ["reasoning.encrypted_content"]`` (the model produces no reasoning
items, which every effort allows), ``prompt_cache_key`` (the prompt cache is automatic),
``metadata``, ``client_metadata``, ``user``, ``safety_identifier``, ``service_tier`` and
``stream_options`` (no obfuscation padding is added to a local stream).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from agent.http import schemas
from agent.http.errors import invalid_request

_REFUSED_ITEMS = {
    "reasoning": "hflocal's models produce no reasoning items, so none can be sent back",
    "item_reference": "hflocal stores nothing: send the referenced item itself",
    "input_image": "this model does not accept images",
    "input_file": "this model does not accept files",
    "input_audio": "this model does not accept audio",
}


class _Strict(Struct, kw_only=True, forbid_unknown_fields=True):
    """OpenAI refuses fields it does not know ("Unknown parameter"); so do we."""


class InputContentPart(_Strict, kw_only=True):
    type: str
    text: str | None = None
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None
    refusal: str | None = None
    # refused kinds (images, files, audio) may carry these
    image_url: Any = None
    file_id: str | None = None
    file_data: str | None = None
    file_url: str | None = None
    filename: str | None = None
    detail: str | None = None
    input_audio: Any = None


class InputItem(_Strict, kw_only=True):
    """One input item: a message (``type`` may be left out), a ``function_call`` or a
    ``function_call_output``. Which fields apply depends on the kind; ``check`` refuses the rest."""

    type: str | None = None
    id: str | None = None
    status: str | None = None
    # message
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: str | list[InputContentPart] | None = None
    phase: str | None = None
    # function_call / function_call_output
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[InputContentPart] | None = None
    namespace: str | None = None
    # reasoning (refused)
    summary: list[Any] | None = None
    encrypted_content: str | None = None


class FunctionTool(_Strict, kw_only=True):
    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    # hosted and namespace tools (refused)
    tools: list[Any] | None = None
    external_web_access: bool | None = None
    search_context_size: str | None = None
    user_location: Any = None
    filters: Any = None


class TextFormat(_Strict, kw_only=True):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class TextOptions(_Strict, kw_only=True):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class Reasoning(_Strict, kw_only=True):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed", "none"] | None = None
    generate_summary: str | None = None


class ResponsesStreamOptions(_Strict, kw_only=True):
    include_obfuscation: bool | None = None


class ResponsesRequest(_Strict, kw_only=True):
    model: str | None = None
    input: str | list[InputItem]
    instructions: str | None = None
    max_output_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextOptions | None = None
    stream: bool | None = None
    stream_options: ResponsesStreamOptions | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    conversation: Any = None
    background: bool | None = None
    prompt: Any = None
    reasoning: Reasoning | None = None
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    max_tool_calls: Annotated[int, Meta(ge=1)] | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    metadata: dict[str, str] | None = None
    client_metadata: dict[str, Any] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    service_tier: Literal["auto", "default", "flex", "priority"] | None = None


# --------------------------------------------------------------------------- checks


def _check_options(req: ResponsesRequest) -> None:
    refusals: list[tuple[bool, str, str]] = [
        (req.store is True, "store", "hflocal's Responses API is stateless: it stores nothing (send store: false)"),
        (req.previous_response_id is not None, "previous_response_id",
         "hflocal stores no responses: send the whole conversation in 'input' instead of previous_response_id"),
        (req.conversation is not None, "conversation",
         "hflocal stores no conversations: send the whole conversation in 'input'"),
        (bool(req.background), "background", "background responses are not supported by hflocal"),
        (req.prompt is not None, "prompt", "stored prompt templates are not supported by hflocal"),
        (req.truncation == "auto", "truncation", "truncation 'auto' is not supported: hflocal never drops input"),
        (req.max_tool_calls is not None, "max_tool_calls", "max_tool_calls is not supported by hflocal"),
        (bool(req.top_logprobs), "top_logprobs", "top_logprobs is not supported by hflocal's Responses API"),
        (req.text is not None and req.text.verbosity not in (None, "medium"), "text.verbosity",
         "text.verbosity is not supported by hflocal (only 'medium')"),
    ]
    for refused, param, message in refusals:
        if refused:
            raise invalid_request(message, param=param)
    for i, value in enumerate(req.include or ()):
        if value != "reasoning.encrypted_content":
            raise invalid_request(f"include '{value}' is not supported by hflocal", param=f"include[{i}]")


def _text(content: str | list[InputContentPart] | None, where: str, allowed: tuple[str, ...]) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for j, part in enumerate(content):
        param = f"{where}[{j}]"
        if part.type in _REFUSED_ITEMS:
            raise invalid_request(_REFUSED_ITEMS[part.type], param=param)
        if part.type not in allowed:
            raise invalid_request(f"content part type '{part.type}' is not allowed here", param=f"{param}.type")
        text = part.refusal if part.type == "refusal" else part.text
        if text is None:
            raise invalid_request(f"'{param}.text' is required", param=f"{param}.text")
        parts.append(text)
    return "".join(parts)


def _messages(req: ResponsesRequest) -> list[schemas.ChatMessage]:
    out: list[schemas.ChatMessage] = []
    if req.instructions:
        out.append(schemas.ChatMessage(role="system", content=req.instructions))
    if isinstance(req.input, str):
        out.append(schemas.ChatMessage(role="user", content=req.input))
        return out
    for i, item in enumerate(req.input):
        where = f"input[{i}]"
        kind = item.type or ("message" if item.role else None)
        if kind == "message":
            if item.role is None:
                raise invalid_request("a message item needs 'role'", param=f"{where}.role")
            allowed = ("output_text", "refusal") if item.role == "assistant" else ("input_text",)
            text = _text(item.content, f"{where}.content", allowed)
            role = "system" if item.role == "developer" else item.role
            out.append(schemas.ChatMessage(role=role, content=text))
        elif kind == "function_call":
            if not item.call_id or not item.name or item.arguments is None:
                raise invalid_request("a function_call item needs 'call_id', 'name' and 'arguments'", param=where)
            if item.namespace:
                raise invalid_request("namespaced function calls are not supported by hflocal",
                                      param=f"{where}.namespace")
            function = schemas.FunctionCall(name=item.name, arguments=item.arguments)
            call = schemas.ToolCall(id=item.call_id, function=function)
            last = out[-1] if out else None
            if last is not None and last.role == "assistant":
                last.tool_calls = [*(last.tool_calls or ()), call]  # one assistant turn: text, then its calls
            else:
                out.append(schemas.ChatMessage(role="assistant", content="", tool_calls=[call]))
        elif kind == "function_call_output":
            if not item.call_id:
                raise invalid_request("a function_call_output item needs 'call_id'", param=f"{where}.call_id")
            output = _text(item.output, f"{where}.output", ("input_text",))
            out.append(schemas.ChatMessage(role="tool", content=output, tool_call_id=item.call_id))
        elif kind in _REFUSED_ITEMS:
            raise invalid_request(_REFUSED_ITEMS[kind], param=f"{where}.type")
        else:
            raise invalid_request(f"input item type '{kind}' is not supported by hflocal "
                                  "(message, function_call and function_call_output are)", param=f"{where}.type")
    return out


def _tools(req: ResponsesRequest) -> list[schemas.Tool] | None:
    tools = []
    for i, tool in enumerate(req.tools or ()):
        if tool.type != "function":
            hint = {"web_search": " (Codex CLI: set web_search = \"disabled\")",
                    "namespace": " (Codex CLI: set features.multi_agent = false)"}.get(tool.type, "")
            raise invalid_request(f"tool type '{tool.type}' is not supported by hflocal, only 'function'{hint}",
                                  param=f"tools[{i}].type")
        if not tool.name:
            raise invalid_request("a function tool needs 'name'", param=f"tools[{i}].name")
        tools.append(schemas.Tool(function=schemas.FunctionDef(
            name=tool.name, description=tool.description, parameters=tool.parameters, strict=tool.strict)))
    return tools or None


def _tool_choice(req: ResponsesRequest) -> str | dict[str, Any] | None:
    choice = req.tool_choice
    if choice is None or isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise invalid_request("tool_choice must be 'none', 'auto', 'required' or {'type': 'function', 'name': ...}",
                          param="tool_choice")


def _response_format(req: ResponsesRequest) -> schemas.ResponseFormat | None:
    fmt = req.text.format if req.text is not None else None
    if fmt is None:
        return None
    if fmt.type == "json_schema" and (fmt.schema is None or not fmt.name):
        raise invalid_request("text.format json_schema needs 'name' and 'schema'", param="text.format")
    if fmt.type == "json_schema":
        return schemas.ResponseFormat(type="json_schema", json_schema=schemas.JsonSchemaSpec(
            name=fmt.name, schema_=fmt.schema))
    return schemas.ResponseFormat(type=fmt.type)


def to_chat(req: ResponsesRequest) -> schemas.ChatCompletionRequest:
    """The chat-completions request that runs this Responses request (raises a 400 naming the field
    that cannot be honoured)."""
    _check_options(req)
    return schemas.ChatCompletionRequest(
        model=req.model or None, messages=_messages(req) or _empty(), max_tokens=req.max_output_tokens,
        temperature=req.temperature, top_p=req.top_p, tools=_tools(req), tool_choice=_tool_choice(req),
        parallel_tool_calls=req.parallel_tool_calls, response_format=_response_format(req),
        stream=bool(req.stream),
    )


def _empty() -> list[schemas.ChatMessage]:
    raise invalid_request("'input' is empty", param="input")
