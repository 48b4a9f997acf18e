"""Request bodies of the OpenAI routes, as msgspec Structs mirroring ``openai-subset.openapi.json``.

Unknown fields are ignored (clients send many we do not use); known ones are type- and
range-checked by msgspec, then ``check_chat`` / ``check_completion`` refuse what hflocal cannot do
honestly (``n`` > 1, images, ``logit_bias``...) with a 400 that names the parameter.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

from agent.engine.types import SamplingParams
from agent.http.errors import ApiError, invalid_request

Temperature = Annotated[float, Meta(ge=0, le=2)]
Probability = Annotated[float, Meta(ge=0, le=1)]
Penalty = Annotated[float, Meta(ge=-2, le=2)]
AtLeastOne = Annotated[int, Meta(ge=1)]
StopList = Annotated[list[str], Meta(max_length=4)]
T = TypeVar("T")


class StreamOptions(Struct, kw_only=True):
    include_usage: bool | None = None


class JsonSchemaSpec(Struct, kw_only=True):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = msgspec.field(default=None, name="schema")
    strict: bool | None = None


class ResponseFormat(Struct, kw_only=True):
    """``text``, ``json_object``, ``json_schema``; hflocal extensions: ``lark`` (a Lark grammar in
    ``lark``) and ``regex`` (a regular expression in ``regex``)."""

    type: str
    json_schema: JsonSchemaSpec | None = None
    lark: str | None = None
    regex: str | None = None


class ContentPart(Struct, kw_only=True):
    """One part of a message's content; only ``text`` (and an assistant's ``refusal``) are usable."""

    type: str
    text: str | None = None
    refusal: str | None = None


class FunctionCall(Struct, kw_only=True):
    name: str
    arguments: str | dict[str, Any] = ""


class ToolCall(Struct, kw_only=True):
    function: FunctionCall
    id: str | None = None
    type: str = "function"


class ChatMessage(Struct, kw_only=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDef(Struct, kw_only=True, omit_defaults=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(Struct, kw_only=True):
    function: FunctionDef
    type: str = "function"


class _Common(Struct, kw_only=True):
    """Fields both endpoints share."""

    model: str | None = None
    max_tokens: AtLeastOne | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    top_k: Annotated[int, Meta(ge=0)] | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    seed: Annotated[int, Meta(ge=-(1 << 63), le=(1 << 63) - 1)] | None = None
    """Any int64, as OpenAI takes it; a negative seed is its two's complement (-1 is 2^64 - 1)."""
    stop: str | StopList | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Common, kw_only=True):
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    max_completion_tokens: AtLeastOne | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(_Common, kw_only=True):
    prompt: str | list[Any] | None = None
    echo: bool | None = None
    logprobs: Annotated[int, Meta(ge=0, le=5)] | None = None
    suffix: str | None = None
    response_format: ResponseFormat | None = None
    best_of: Annotated[int, Meta(ge=0, le=20)] | None = None


# --------------------------------------------------------------------------- decoding


def decode(body: bytes | str, kind: type[T]) -> T:
    """Decode and type-check a JSON body; a malformed or invalid one raises a 400 naming the param."""
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        message, param = _explain(str(exc))
        raise invalid_request(f"Invalid request: {message}", param=param) from None
    except msgspec.DecodeError as exc:
        raise invalid_request(
            f"We could not parse the JSON body of your request ({exc}). Send a JSON object.",
            code="invalid_json",
        ) from None
    except UnicodeDecodeError as exc:  # msgspec raises it for invalid UTF-8 inside a string
        raise invalid_request(
            f"The body of your request is not valid UTF-8 ({exc.reason} at byte {exc.start}). Send UTF-8 JSON.",
            code="invalid_json",
        ) from None


def _explain(text: str) -> tuple[str, str | None]:
    """``Expected `float` <= 2.0 - at `$.temperature``` → (message naming the param, "temperature")."""
    path = None
    match = re.search(r" - at `\$\.?([^`]*)`$", text)
    if match:
        path = match.group(1) or None
        text = text[: match.start()]
    missing = re.match(r"Object missing required field `([^`]*)`", text)
    if missing:
        path = f"{path}.{missing.group(1)}" if path else missing.group(1)
        return f"'{path}' is required", path
    if path is None:
        return text, None
    return f"'{path}': {text}", path


# --------------------------------------------------------------------------- semantic checks


def _check_common(req: _Common) -> None:
    if req.n not in (None, 1):
        raise invalid_request("n > 1 is not supported by hflocal; send separate requests", param="n")
    if req.logit_bias:
        raise invalid_request("logit_bias is not supported by hflocal", param="logit_bias")


def check_chat(req: ChatCompletionRequest) -> None:
    """Refuse what cannot be honoured; raise a 400 that names the parameter."""
    _check_common(req)
    if req.top_logprobs and not req.logprobs:
        raise invalid_request("logprobs must be true when top_logprobs is set", param="top_logprobs")
    for i, tool in enumerate(req.tools or ()):
        if tool.type != "function":
            raise invalid_request(f"tool type '{tool.type}' is not supported (only 'function')",
                                  param=f"tools[{i}].type")
    choice = req.tool_choice
    if isinstance(choice, str) and choice not in ("none", "auto", "required"):
        raise invalid_request("tool_choice must be 'none', 'auto', 'required' or a named function",
                              param="tool_choice")
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), dict) else None
        if name not in {t.function.name for t in req.tools or ()}:
            raise invalid_request("tool_choice names a function that is not in tools", param="tool_choice")
    for i, message in enumerate(req.messages):
        _message_text(message, i)  # raises on images, audio, missing content


def _message_text(message: ChatMessage, index: int) -> str:
    content = message.content
    if content is None:
        if message.role == "assistant":
            return ""
        raise invalid_request(f"messages[{index}].content is required for role '{message.role}'",
                              param=f"messages[{index}].content")
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        param = f"messages[{index}].content[{j}]"
        if part.type == "text":
            if part.text is None:
                raise invalid_request(f"'{param}.text' is required", param=f"{param}.text")
            texts.append(part.text)
        elif part.type == "refusal" and part.refusal is not None and message.role == "assistant":
            texts.append(part.refusal)
        elif part.type in ("image_url", "input_image", "image"):
            raise invalid_request("this model does not accept images", param=param, code="image_not_supported")
        elif part.type in ("input_audio", "audio"):
            raise invalid_request("this model does not accept audio", param=param, code="audio_not_supported")
        elif part.type == "file":
            raise invalid_request("this model does not accept files", param=param)
        else:
            raise invalid_request(f"unsupported content part type '{part.type}'", param=param)
    return "".join(texts)


def template_messages(req: ChatCompletionRequest) -> list[dict[str, Any]]:
    """Messages as chat templates expect them: text content, ``developer`` as ``system``, and tool
    call arguments as objects when they are JSON objects (what Hugging Face templates iterate)."""
    out: list[dict[str, Any]] = []
    for i, message in enumerate(req.messages):
        item: dict[str, Any] = {
            "role": "system" if message.role == "developer" else message.role,
            "content": _message_text(message, i),
        }
        if message.name:
            item["name"] = message.name
        if message.tool_call_id:
            item["tool_call_id"] = message.tool_call_id
        if message.tool_calls:
            item["tool_calls"] = [
                {"id": call.id, "type": "function",
                 "function": {"name": call.function.name, "arguments": _arguments(call.function.arguments)}}
                for call in message.tool_calls
            ]
        out.append(item)
    return out


def _arguments(arguments: str | dict[str, Any]) -> Any:
    if isinstance(arguments, dict):
        return arguments
    try:
        parsed = msgspec.json.decode(arguments)
    except msgspec.DecodeError:
        return arguments
    return parsed if isinstance(parsed, dict) else arguments


def check_completion(req: CompletionRequest) -> str | list[int]:
    """Validate a completions request and return its single prompt: text, or token ids."""
    _check_common(req)
    if req.suffix:
        raise invalid_request("suffix is not supported by hflocal", param="suffix")
    if req.best_of not in (None, 0, 1):
        raise invalid_request("best_of > 1 is not supported by hflocal", param="best_of")
    prompt = _single_prompt(req.prompt)
    if req.echo and not isinstance(prompt, str):
        raise invalid_request("echo needs a text prompt", param="echo")
    if req.echo and req.logprobs is not None:
        raise invalid_request("echo with logprobs (prompt logprobs) is not supported", param="echo")
    return prompt


def _single_prompt(prompt: str | list[Any] | None) -> str | list[int]:
    if prompt is None:
        raise invalid_request("'prompt' is required", param="prompt")
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    if len(prompt) == 1 and isinstance(prompt[0], list):
        prompt = prompt[0]
    if prompt and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt):
        return list(prompt)
    if len(prompt) > 1 and all(isinstance(p, (str, list)) for p in prompt):
        raise invalid_request("only one prompt per request is supported; send separate requests",
                              param="prompt")
    raise invalid_request("prompt must be a string, a list of one string, or a list of token ids",
                          param="prompt")


def sampling_params(req: ChatCompletionRequest | CompletionRequest, default_max_tokens: int) -> SamplingParams:
    """The engine's options for this request (``None`` keeps the model's generation_config)."""
    if isinstance(req, ChatCompletionRequest):
        max_tokens = req.max_completion_tokens or req.max_tokens or default_max_tokens
        logprobs, top = bool(req.logprobs), (req.top_logprobs or 0) if req.logprobs else 0
    else:
        max_tokens = req.max_tokens or default_max_tokens
        logprobs, top = req.logprobs is not None, req.logprobs or 0
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or ())
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        seed=None if req.seed is None else req.seed % (1 << 64),
        stop=tuple(s for s in stop if s),
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        logprobs=logprobs,
        top_logprobs=top,
    )


def requested_max_tokens(req: ChatCompletionRequest | CompletionRequest) -> tuple[int, str] | None:
    """The answer budget the client asked for, with the field it used; ``None`` when it left it to
    the server (the default budget is then cut to what the context leaves)."""
    if isinstance(req, ChatCompletionRequest) and req.max_completion_tokens is not None:
        return req.max_completion_tokens, "max_completion_tokens"
    return (req.max_tokens, "max_tokens") if req.max_tokens is not None else None


def error_for_context(prompt_tokens: int, context_length: int, param: str,
                      requested: tuple[int, str] | None = None) -> ApiError | None:
    """A 400 ``context_length_exceeded`` if the prompt leaves no room for one new token, or, when
    the client asked for a budget (``requested``: tokens, field), if prompt plus budget exceed the
    context; the message names every number."""
    if prompt_tokens < context_length and (requested is None or prompt_tokens + requested[0] <= context_length):
        return None
    if prompt_tokens >= context_length or requested is None:
        return invalid_request(
            f"This model's maximum context length is {context_length} tokens. However, your {param} "
            f"resulted in {prompt_tokens} tokens (one more is needed for the answer). Please shorten it.",
            param=param,
            code="context_length_exceeded",
        )
    budget, field = requested
    return invalid_request(
        f"This model's maximum context length is {context_length} tokens. However, you requested "
        f"{prompt_tokens + budget} tokens ({prompt_tokens} in the {param}, {budget} for the completion "
        f"as {field}). Please reduce the length of the {param} or {field} (at most "
        f"{context_length - prompt_tokens} with this {param}).",
        param=field,
        code="context_length_exceeded",
    )
