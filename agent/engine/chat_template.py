"""Chat templates rendered the way Hugging Face's ``apply_chat_template`` renders them, without
transformers.

Sources, first found wins: ``chat_template.jinja``, ``chat_template.json``, tokenizer_config.json's
``chat_template`` (a string, or a list of ``{name, template}`` from which ``tool_use`` is picked when
tools are given and ``default`` otherwise). With none, a ChatML template is used if the vocabulary has
``<|im_start|>`` (it is what such tokenizers were trained for); otherwise rendering raises
``TemplateError``.

The Jinja environment matches Hugging Face's: sandboxed (bounded in steps, time and size, see
``agent.engine.template_sandbox``: a spent budget is a ``TemplateError`` naming the template),
``trim_blocks``, ``lstrip_blocks``, the loopcontrols extension and the ``{% generation %}`` tag,
``raise_exception``, ``strftime_now``, and a ``tojson`` filter with HF's arguments (``ensure_ascii=False``
by default). Templates get ``messages``, ``tools``, ``documents``, ``add_generation_prompt`` and the
special-token strings (``bos_token``...).

Messages are adapted to the template: content given as OpenAI parts (``[{type: text, text}]``) is
joined with newlines for templates that expect a string, and a string is wrapped as one text part
for templates that loop over ``message.content``; tool-call ``arguments`` given as a JSON string are
parsed into an object, which is what HF templates expect.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2 import nodes

from agent.engine.model_files import read_json
from agent.engine.template_sandbox import BoundedSandbox, RenderBudgetExceeded, render_bounded
from agent.engine.types import ModelLoadError, TemplateError

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""Used only when the model ships no template and its vocabulary has ``<|im_start|>``."""


class _TemplateRaised(Exception):
    """What ``raise_exception`` raises inside a template; turned into ``TemplateError``."""


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None,
    separators: tuple[str, str] | None = None, sort_keys: bool = False,
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}…{% endgeneration %}`` marks assistant text for training masks; rendering
    only needs its body."""

    tags = {"generation"}  # jinja2 reads this class attribute

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_render_body")
        return nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _render_body(self, caller: Any) -> str:
        return str(caller())


MAX_TEMPLATE_CHARS = 1 << 20
"""A longer template source is not compiled (its render is a ``TemplateError`` saying so)."""
_ERROR_CHARS = 300
"""An error's text is cut here: a template's exception may quote a value it built."""


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if len(text) <= _ERROR_CHARS:
        return text
    return f"{text[:_ERROR_CHARS]}... [{len(text) - _ERROR_CHARS} more characters]"


def make_environment() -> BoundedSandbox:
    env = BoundedSandbox(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _is_content_node(node: nodes.Node) -> bool:
    """``x['content']`` or ``x.content``, possibly under filters."""
    while isinstance(node, nodes.Filter) and node.node is not None:
        node = node.node
    if isinstance(node, nodes.Getitem):
        return isinstance(node.arg, nodes.Const) and node.arg.value == "content"
    if isinstance(node, nodes.Getattr):
        return node.attr == "content"
    return False


def loops_over_content(env: jinja2.Environment, source: str) -> bool:
    """True if the template iterates ``message.content`` (it expects OpenAI content parts)."""
    try:
        tree = env.parse(source)
    except Exception:  # a template that does not parse is reported when compiled
        return False
    return any(_is_content_node(loop.iter) for loop in tree.find_all(nodes.For))


def read_template_sources(folder: Path, tokenizer_config: dict[str, Any]) -> dict[str, str]:
    """Named template sources (``default``, ``tool_use``...) from the model folder; may be empty.
    An unreadable template file is a ``ModelLoadError`` naming it."""
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        try:
            return {"default": jinja_file.read_text(encoding="utf-8")}
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"cannot read chat_template.jinja: {exc}") from exc
    raw: Any = read_json(folder / "chat_template.json", required=False).get("chat_template")
    if raw is None:
        raw = tokenizer_config.get("chat_template")
    if isinstance(raw, str):
        return {"default": raw}
    if isinstance(raw, list):
        return {
            item["name"]: item["template"]
            for item in raw
            if isinstance(item, dict) and isinstance(item.get("name"), str) and isinstance(item.get("template"), str)
        }
    return {}


class ChatTemplate:
    """A model's chat template(s), compiled once. ``render`` raises ``TemplateError`` only."""

    def __init__(self, sources: dict[str, str], variables: dict[str, Any]) -> None:
        self._env = make_environment()
        self._variables = variables
        self.sources = dict(sources)
        self._compiled: dict[str, jinja2.Template] = {}
        self._errors: dict[str, str] = {}
        self._wants_parts: dict[str, bool] = {}
        for name, source in self.sources.items():
            self._wants_parts[name] = False
            if len(source) > MAX_TEMPLATE_CHARS:  # real ones are a few KiB; compiling 100 MB takes minutes
                self._errors[name] = (f"chat template {name!r} is {len(source)} characters long "
                                      f"(at most {MAX_TEMPLATE_CHARS})")
                continue
            try:
                self._compiled[name] = self._env.from_string(source)
            except Exception as exc:  # syntax, RecursionError on deep nesting, MemoryError...
                self._errors[name] = f"chat template {name!r} does not compile: {_short(exc)}"
            self._wants_parts[name] = loops_over_content(self._env, source)

    @property
    def is_empty(self) -> bool:
        return not self.sources

    def _pick(self, tools: list[dict[str, Any]] | None) -> str:
        if not self.sources:
            raise TemplateError("this model has no chat template; use the completions API with a raw prompt")
        if tools and "tool_use" in self.sources:
            return "tool_use"
        if "default" in self.sources:
            return "default"
        if len(self.sources) == 1:
            return next(iter(self.sources))
        raise TemplateError(f"the model has chat templates {sorted(self.sources)} and none named 'default'")

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> str:
        name = self._pick(tools)
        if name in self._errors:
            raise TemplateError(self._errors[name])
        prepared = [_prepare_message(m, wants_parts=self._wants_parts[name]) for m in messages]
        context: dict[str, Any] = {
            **self._variables,
            **(extra or {}),
            "messages": prepared,
            "tools": tools or None,
            "documents": None,
            "add_generation_prompt": add_generation_prompt,
        }
        try:
            return render_bounded(self._compiled[name], context)
        except _TemplateRaised as exc:
            raise TemplateError(f"chat template: {_short(exc)}") from None
        except RenderBudgetExceeded as exc:
            raise TemplateError(f"chat template {name!r} exceeded its render budget: {exc}") from None
        except jinja2.TemplateError as exc:  # UndefinedError, SecurityError, runtime syntax errors
            raise TemplateError(f"chat template failed: {_short(exc)}") from None
        except (RecursionError, MemoryError, OverflowError) as exc:
            raise TemplateError(f"chat template {name!r} failed: {type(exc).__name__}: {_short(exc)}") from None
        except Exception as exc:  # anything else a template does is the template's fault
            raise TemplateError(f"chat template failed on these messages: {_short(exc)}") from None


def _texts_of_parts(parts: list[Any]) -> list[str]:
    texts: list[str] = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise TemplateError(f"unsupported content part {kind!r}: this model takes text only")
    return texts


def _prepare_message(message: dict[str, Any], *, wants_parts: bool) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise TemplateError("each message must be an object")
    prepared = dict(message)
    content = prepared.get("content")
    if isinstance(content, list):
        texts = _texts_of_parts(content)
        prepared["content"] = [{"type": "text", "text": t} for t in texts] if wants_parts else "\n".join(texts)
    elif isinstance(content, str) and wants_parts:
        prepared["content"] = [{"type": "text", "text": content}]
    calls = prepared.get("tool_calls")
    if isinstance(calls, list):
        prepared["tool_calls"] = [_prepare_tool_call(call) for call in calls]
    return prepared


def _prepare_tool_call(call: Any) -> Any:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        return call
    function = dict(call["function"])
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            function["arguments"] = parsed
    return {**call, "function": function}
