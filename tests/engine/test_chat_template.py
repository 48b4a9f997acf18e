"""Chat templates rendered like Hugging Face's apply_chat_template, without transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from agent.engine.chat_template import ChatTemplate, loops_over_content, make_environment, read_template_sources
from agent.engine.model import OnnxChatModel, load_model
from agent.engine.types import TemplateError
from tests.fakes.tiny_model import TinyModel

VARS = {"bos_token": "<s>", "eos_token": "</s>"}
PARTS_TEMPLATE = (
    "{% for m in messages %}[{{ m.role }}]"
    "{% for part in m['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}|{% endif %}{% endfor %}"
    "{% endfor %}"
)
TOOLS_TEMPLATE = (
    "{% if tools %}TOOLS:{{ tools | tojson }}\n{% endif %}"
    "{% for m in messages %}{{ m.role }}: {{ m.content }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %} call {{ c.function.name }}({{ c.function.arguments | tojson }})"
    "{% endfor %}{% endif %}\n{% endfor %}"
)


def render(source: str, messages: list[dict[str, Any]], **kw: Any) -> str:
    return ChatTemplate({"default": source}, VARS).render(messages, **kw)


def test_tiny_model_renders_system_user_assistant(tiny_model: OnnxChatModel) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    expected = (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
    )
    assert tiny_model.render_chat(messages, add_generation_prompt=False) == expected
    assert tiny_model.render_chat(messages) == expected + "<|im_start|>assistant\n"
    ids = tiny_model.encode_chat(messages)
    assert ids[0] == 1 and ids.count(1) == 5  # <|im_start|> is one special token, never added twice
    assert tiny_model.decode(ids, skip_special_tokens=False) == expected + "<|im_start|>assistant\n"


def test_content_parts_are_flattened_for_string_templates(tiny_model: OnnxChatModel) -> None:
    parts = [{"type": "text", "text": "Hello"}, {"type": "text", "text": "world"}]
    rendered = tiny_model.render_chat([{"role": "user", "content": parts}], add_generation_prompt=False)
    assert rendered == "<|im_start|>user\nHello\nworld<|im_end|>\n"


def test_parts_templates_get_parts_and_strings_become_parts() -> None:
    env = make_environment()
    assert loops_over_content(env, PARTS_TEMPLATE)
    assert not loops_over_content(env, TOOLS_TEMPLATE)
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert render(PARTS_TEMPLATE, [{"role": "user", "content": parts}]) == "[user]a|b|"
    assert render(PARTS_TEMPLATE, [{"role": "user", "content": "plain"}]) == "[user]plain|"


def test_non_text_parts_are_refused() -> None:
    with pytest.raises(TemplateError, match="image_url"):
        render("{{ messages[0].content }}", [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])


def test_raise_exception_becomes_template_error() -> None:
    source = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}ok"
    assert render(source, [{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(TemplateError, match="must start with user"):
        render(source, [{"role": "assistant", "content": "x"}])


@pytest.mark.parametrize(
    "source",
    ["{{ messages[0].content.nope() }}", "{{ undefined_function() }}", "{{ messages.__class__.__mro__ }}x{{ 1/0 }}"],
)
def test_template_failures_are_template_errors(source: str) -> None:
    with pytest.raises(TemplateError):
        render(source, [{"role": "user", "content": "x"}])


def test_sandbox_refuses_unsafe_access() -> None:
    with pytest.raises(TemplateError):
        render("{{ messages.__class__.__subclasses__() }}", [{"role": "user", "content": "x"}])


def test_syntax_error_is_reported_at_render() -> None:
    template = ChatTemplate({"default": "{% for m in messages %}"}, VARS)
    with pytest.raises(TemplateError, match="does not compile"):
        template.render([{"role": "user", "content": "x"}])


def test_hf_environment_features() -> None:
    source = (
        "{{ bos_token }}"
        "{%- for m in messages %}\n"
        "  {%- if loop.index > 2 %}{% break %}{% endif %}\n"
        "  {{- m.content | tojson }}\n"
        "{%- endfor %}\n"
        "{% generation %}G{% endgeneration %}"
        "{{ strftime_now('%Y') | length }}{{ eos_token }}"
    )
    msgs = [{"role": "user", "content": "é\"x"}, {"role": "user", "content": "b"}, {"role": "user", "content": "c"}]
    # tojson keeps non-ASCII (ensure_ascii=False) like HF's; trim/lstrip blocks remove the indentation.
    assert render(source, msgs) == '<s>"é\\"x""b"G4</s>'


def test_tojson_accepts_hf_arguments() -> None:
    source = "{{ tools | tojson(indent=2, sort_keys=True) }}"
    tools = [{"b": 1, "a": "é"}]
    assert render(source, [], tools=tools) == json.dumps(tools, indent=2, sort_keys=True, ensure_ascii=False)


def test_tools_and_tool_call_arguments_are_objects() -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        ]},
    ]
    out = render(TOOLS_TEMPLATE, messages, tools=tools)
    assert out.startswith("TOOLS:" + json.dumps(tools, ensure_ascii=False))
    assert 'call get_weather({"city": "Paris"})' in out
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'  # caller's dict unchanged
    # No tools: tools is None. (trim_blocks eats the newline after a block tag, as in HF.)
    assert render(TOOLS_TEMPLATE, [{"role": "user", "content": "x"}]) == "user: x"


def test_named_templates_pick_tool_use_when_tools_are_given() -> None:
    template = ChatTemplate({"default": "D", "tool_use": "T"}, VARS)
    assert template.render([]) == "D"
    assert template.render([], tools=[{"type": "function", "function": {"name": "f"}}]) == "T"
    with pytest.raises(TemplateError, match="none named 'default'"):
        ChatTemplate({"a": "A", "b": "B"}, VARS).render([])
    assert ChatTemplate({"only": "O"}, VARS).render([]) == "O"


def test_extra_template_variables() -> None:
    source = "{% if enable_thinking is defined and not enable_thinking %}no-think{% endif %}"
    assert ChatTemplate({"default": source}, VARS).render([], extra={"enable_thinking": False}) == "no-think"


def test_template_sources_in_hf_order(tmp_path: Path) -> None:
    config = {"chat_template": [{"name": "default", "template": "cfg"}, {"name": "tool_use", "template": "cfg-tools"}]}
    assert read_template_sources(tmp_path, config) == {"default": "cfg", "tool_use": "cfg-tools"}
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "json"}))
    assert read_template_sources(tmp_path, config) == {"default": "json"}
    (tmp_path / "chat_template.jinja").write_text("jinja")
    assert read_template_sources(tmp_path, config) == {"default": "jinja"}


def test_model_uses_chat_template_jinja_file(tiny: TinyModel, tmp_path: Path) -> None:
    dest = tmp_path / "repo"
    shutil.copytree(tiny.path, dest, ignore=shutil.ignore_patterns("model_*.onnx"))
    (dest / "chat_template.jinja").write_text(
        "{{ bos_token }}{% for m in messages %}{{ m.role }}={{ m.content }};{% endfor %}"
    )
    model = load_model(dest, quantization="fp32", device="cpu")
    assert model.render_chat([{"role": "user", "content": "hi"}]) == "<|im_start|>user=hi;"


def test_encode_text_adds_bos_only_when_configured(tiny: TinyModel, tmp_path: Path) -> None:
    dest = tmp_path / "repo"
    shutil.copytree(tiny.path, dest, ignore=shutil.ignore_patterns("model_*.onnx"))
    model = load_model(dest, quantization="fp32", device="cpu")
    plain = model.encode_text("Hello")
    assert plain == tiny.encode("Hello")  # add_bos_token is false in this repo
    config = json.loads((dest / "tokenizer_config.json").read_text())
    config["add_bos_token"] = True
    (dest / "tokenizer_config.json").write_text(json.dumps(config))
    model = load_model(dest, quantization="fp32", device="cpu")
    assert model.encode_text("Hello") == [1, *plain]
    assert model.encode_text("<|im_start|>Hello") == [1, *plain]  # never doubled
    # Chat prompts never get an extra BOS: the template writes its own.
    assert model.encode_chat([{"role": "user", "content": "x"}]).count(1) == 2


def test_without_add_bos_flags_the_tokenizer_post_processor_decides(tiny: TinyModel, tmp_path: Path) -> None:
    """Llama 3 style: no ``add_bos_token`` in tokenizer_config.json, BOS added by tokenizer.json."""
    from tokenizers import processors

    dest = tmp_path / "repo"
    shutil.copytree(tiny.path, dest, ignore=shutil.ignore_patterns("model_*.onnx"))
    tok = tiny.tokenizer.__class__.from_file(str(dest / "tokenizer.json"))
    tok.post_processor = processors.TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)])
    tok.save(str(dest / "tokenizer.json"))
    config = json.loads((dest / "tokenizer_config.json").read_text())
    del config["add_bos_token"], config["add_eos_token"]
    (dest / "tokenizer_config.json").write_text(json.dumps(config))
    model = load_model(dest, quantization="fp32", device="cpu")
    assert model.encode_text("Hello") == [1, *tiny.encode("Hello")]
    # The chat template's text is tokenized without the post-processor: no second BOS.
    assert model.encode_chat([{"role": "user", "content": "x"}])[:2] == [1, *tiny.encode("user")][:2]
    assert model.encode_chat([{"role": "user", "content": "x"}]).count(1) == 2
