"""Request bodies of the Anthropic Messages API (``POST /v1/messages``, ``/v1/messages/count_tokens``)
and their translation into a chat-completions request.

Like Anthropic's own API, a field this API does not know is refused (400 naming it), and so is a
known one that hflocal cannot honour (images, documents, server tools, ``thinking`` of type
``enabled``...). Fields that Claude Code always sends and that change nothing for a local model are
accepted, each for a stated reason (see ``check``): ``metadata``, ``cache_control``, ``thinking``
``adaptive`` / ``disabled`` (the model never thinks, which both allow), ``context_management`` edits
that clear thinking (there is none to clear) and ``output_config.effort``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from agent.http import schemas
from agent.http.errors import invalid_request


class _Strict(Struct, kw_only=True, forbid_unknown_fields=True):
    """Anthropic refuses fields it does not know ("Extra inputs are not permitted"); so do we."""


class CacheControl(_Strict, kw_only=True):
    type: Literal["ephemeral"]
    ttl: str | None = None


class ContentBlock(_Strict, kw_only=True):
    """One content block. Which fields apply depends on ``type``; ``check`` refuses the rest."""

    type: str
    text: str | None = None
    cache_control: CacheControl | None = None
    citations: list[Any] | None = None
    # tool_use (assistant)
    id: str | None = None
    name: str | None = None
    input: Any = None
    # tool_result (user)
    tool_use_id: str | None = None
    content: str | list[ContentBlock] | None = None
    is_error: bool | None = None
    # thinking / redacted_thinking (assistant, dropped like Anthropic drops earlier turns' thinking)
    thinking: str | None = None
    signature: str | None = None
    data: str | None = None
    # image / document: refused with a clear message
    source: Any = None
    title: str | None = None
    context: str | None = None


class AnthropicMessage(_Strict, kw_only=True):
    role: Literal["user", "assistant", "system"]
    """``system`` inside ``messages`` is Claude Code's mid-conversation system beta."""
    content: str | list[ContentBlock]


class AnthropicTool(_Strict, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=128)]
    input_schema: dict[str, Any] | None = None
    description: str | None = None
    type: str | None = None
    cache_control: CacheControl | None = None
    strict: bool | None = None


class ToolChoice(_Strict, kw_only=True):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Thinking(_Strict, kw_only=True):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = None
    display: str | None = None


class AnthropicMetadata(_Strict, kw_only=True):
    user_id: str | None = None


class ContextEdit(Struct, kw_only=True):
    type: str
    keep: Any = None


class ContextManagement(_Strict, kw_only=True):
    edits: list[ContextEdit] = []


class OutputConfig(_Strict, kw_only=True):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: dict[str, Any] | None = None


class _Prompt(_Strict, kw_only=True):
    """What both endpoints take: the conversation and its tools."""

    model: str | None = None
    messages: Annotated[list[AnthropicMessage], Meta(min_length=1)]
    system: str | list[ContentBlock] | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    context_management: ContextManagement | None = None
    output_config: OutputConfig | None = None
    mcp_servers: list[Any] | None = None


class MessagesRequest(_Prompt, kw_only=True):
    max_tokens: Annotated[int, Meta(ge=1)]
    stop_sequences: list[str] | None = None
    temperature: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_k: Annotated[int, Meta(ge=0)] | None = None
    metadata: AnthropicMetadata | None = None
    stream: bool | None = None
    service_tier: Literal["auto", "standard_only"] | None = None
    container: Any = None


class CountTokensRequest(_Prompt, kw_only=True):
    pass


# --------------------------------------------------------------------------- checks


def _check_options(req: _Prompt) -> None:
    if req.thinking is not None and req.thinking.type == "enabled":
        raise invalid_request(
            "thinking type 'enabled' is not supported: hflocal's models do not produce thinking blocks "
            "(send 'disabled' or 'adaptive', or leave thinking out)", param="thinking.type")
    for i, edit in enumerate(req.context_management.edits if req.context_management else ()):
        if not edit.type.startswith("clear_thinking_"):
            raise invalid_request(f"context_management edit '{edit.type}' is not supported (only clear_thinking_*, "
                                  "which has nothing to clear)", param=f"context_management.edits[{i}].type")
    if req.output_config is not None and req.output_config.format is not None:
        raise invalid_request("output_config.format is not supported by hflocal's Messages API; use a tool "
                              "with tool_choice {'type': 'tool'} for structured output", param="output_config.format")
    if req.mcp_servers:
        raise invalid_request("mcp_servers is not supported by hflocal", param="mcp_servers")
    if isinstance(req, MessagesRequest) and req.container is not None:
        raise invalid_request("container is not supported by hflocal", param="container")


def _text_of(blocks: str | list[ContentBlock], where: str, *, allow_tools: bool = False) -> str:
    """The text of a system prompt or tool result (text blocks only)."""
    if isinstance(blocks, str):
        return blocks
    parts = []
    for j, block in enumerate(blocks):
        param = f"{where}[{j}]"
        _refuse_media(block, param)
        if block.type != "text" or block.text is None:
            raise invalid_request(f"only text blocks are allowed here, not '{block.type}'", param=f"{param}.type")
        _refuse_citations(block, param)
        parts.append(block.text)
    return "\n".join(parts)


def _refuse_media(block: ContentBlock, param: str) -> None:
    if block.type == "image":
        raise invalid_request("this model does not accept images", param=param)
    if block.type in ("document", "search_result", "container_upload"):
        raise invalid_request(f"{block.type} blocks are not supported by hflocal", param=param)


def _refuse_citations(block: ContentBlock, param: str) -> None:
    if block.citations:
        raise invalid_request("citations are not supported by hflocal", param=f"{param}.citations")


def _messages(req: _Prompt) -> list[schemas.ChatMessage]:
    out: list[schemas.ChatMessage] = []
    if req.system is not None:
        system = _text_of(req.system, "system")
        if system:
            out.append(schemas.ChatMessage(role="system", content=system))
    for i, message in enumerate(req.messages):
        where = f"messages[{i}].content"
        if message.role == "system":
            out.append(schemas.ChatMessage(role="system", content=_text_of(message.content, where)))
        elif isinstance(message.content, str):
            out.append(schemas.ChatMessage(role=message.role, content=message.content))
        elif message.role == "assistant":
            out.append(_assistant(message.content, where))
        else:
            out.extend(_user(message.content, where))
    return out


def _assistant(blocks: list[ContentBlock], where: str) -> schemas.ChatMessage:
    texts: list[str] = []
    calls: list[schemas.ToolCall] = []
    for j, block in enumerate(blocks):
        param = f"{where}[{j}]"
        if block.type == "text" and block.text is not None:
            _refuse_citations(block, param)
            texts.append(block.text)
        elif block.type == "tool_use":
            if not block.id or not block.name or not isinstance(block.input, dict):
                raise invalid_request("a tool_use block needs 'id', 'name' and an object 'input'", param=param)
            calls.append(schemas.ToolCall(id=block.id, function=schemas.FunctionCall(
                name=block.name, arguments=msgspec.json.encode(block.input).decode())))
        elif block.type in ("thinking", "redacted_thinking"):
            continue  # as in Anthropic's API, earlier turns' thinking is not part of the prompt
        else:
            _refuse_media(block, param)
            raise invalid_request(f"unsupported assistant content block '{block.type}'", param=f"{param}.type")
    return schemas.ChatMessage(role="assistant", content="".join(texts), tool_calls=calls or None)


def _user(blocks: list[ContentBlock], where: str) -> list[schemas.ChatMessage]:
    """AnthropicTool results become ``tool`` messages; runs of text blocks become user messages, in order."""
    out: list[schemas.ChatMessage] = []
    texts: list[str] = []

    def flush() -> None:
        if texts:
            out.append(schemas.ChatMessage(role="user", content="".join(texts)))
            texts.clear()

    for j, block in enumerate(blocks):
        param = f"{where}[{j}]"
        if block.type == "text" and block.text is not None:
            _refuse_citations(block, param)
            texts.append(block.text)
        elif block.type == "tool_result":
            if not block.tool_use_id:
                raise invalid_request("a tool_result block needs 'tool_use_id'", param=param)
            flush()
            result = _text_of(block.content if block.content is not None else "", f"{param}.content")
            if block.is_error:
                result = f"Error: {result}"
            out.append(schemas.ChatMessage(role="tool", content=result, tool_call_id=block.tool_use_id))
        else:
            _refuse_media(block, param)
            raise invalid_request(f"unsupported user content block '{block.type}'", param=f"{param}.type")
    flush()
    return out


def _tools(req: _Prompt) -> tuple[list[schemas.Tool] | None, str | dict[str, Any] | None, bool | None]:
    tools: list[schemas.Tool] = []
    for i, tool in enumerate(req.tools or ()):
        if tool.type not in (None, "custom"):
            raise invalid_request(f"tool type '{tool.type}' is not supported by hflocal (only custom tools with "
                                  "an input_schema)", param=f"tools[{i}].type")
        if tool.input_schema is None:
            raise invalid_request("'input_schema' is required", param=f"tools[{i}].input_schema")
        tools.append(schemas.Tool(function=schemas.FunctionDef(
            name=tool.name, description=tool.description, parameters=tool.input_schema, strict=tool.strict)))
    choice = req.tool_choice
    if choice is None:
        return tools or None, None, None
    parallel = False if choice.disable_parallel_tool_use else None
    if choice.type == "tool":
        if not choice.name or choice.name not in {t.function.name for t in tools}:
            raise invalid_request("tool_choice names a tool that is not in tools", param="tool_choice.name")
        return tools, {"type": "function", "function": {"name": choice.name}}, parallel
    if choice.type == "any" and not tools:
        raise invalid_request("tool_choice 'any' needs at least one tool", param="tool_choice")
    mapped = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
    return tools or None, mapped if tools else None, parallel


def to_chat(req: MessagesRequest | CountTokensRequest) -> schemas.ChatCompletionRequest:
    """The chat-completions request that runs this Messages request (raises a 400 naming the field
    that cannot be honoured)."""
    _check_options(req)
    tools, tool_choice, parallel = _tools(req)
    chat = schemas.ChatCompletionRequest(
        model=req.model or None, messages=_messages(req), tools=tools, tool_choice=tool_choice,
        parallel_tool_calls=parallel,
    )
    if isinstance(req, MessagesRequest):
        chat.max_tokens = req.max_tokens
        chat.temperature = req.temperature
        chat.top_p = req.top_p
        chat.top_k = req.top_k
        chat.stop = [s for s in req.stop_sequences or () if s] or None
        chat.stream = bool(req.stream)
    return chat
