"""Each tool-call format end to end without a model: the format read off a template written the way
that family writes its own (tools section and call markers), the grammar the request gets for it,
and the call the family writes: every token of it allowed by the grammar, and parsed back into the
same call by the format's parser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import AddedToken, Tokenizer

from agent.engine.chat_template import ChatTemplate
from agent.engine.constrain import Constraint
from agent.engine.model_files import ModelConfig
from agent.engine.tokenizer import ModelTokenizer
from agent.engine.tool_format import detect_tool_format
from agent.http import tool_use
from agent.http.tools import ToolCallParser
from tests.fakes.tiny_model import train_tokenizer

WEATHER = {"name": "get_weather", "description": "Weather now",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
ARGS = {"city": "Paris"}
SPECIAL = ["<|im_start|>", "<|im_end|>", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
           "<|tool_call|>", "<|/tool_call|>", "<|tool|>", "<|/tool|>", "<|eot_id|>"]

# Templates in the style of each family: where the tools go and how a call is written.
HERMES = ("{% if tools %}<|im_start|>system\nTools:\n<tools>{% for t in tools %}{{ t | tojson }}\n{% endfor %}"
          "</tools>\nCall one with <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call><|im_end|>\n{% endif %}"
          "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "<|im_start|>assistant\n")
MISTRAL = ("{% for m in messages %}{% if loop.last and tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}"
           "[/AVAILABLE_TOOLS]{% endif %}[INST]{{ m.content }}[/INST]{% endfor %}"
           "{# answers: [TOOL_CALLS][{...}] #}")
PHI4 = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% if m.tools %}<|tool|>{{ m.tools }}<|/tool|>"
        "{% endif %}<|end|>{% endfor %}<|assistant|>{# tools: <|tool_call|>[...]<|/tool_call|> #}")
LLAMA31 = ("{% if tools %}Environment: ipython\n{% endif %}{% for m in messages %}{{ m.role }}: {{ m.content }}"
           "{% endfor %}{% if tools %}Respond with {\"name\": function name, \"parameters\": arguments} "
           "{% for t in tools %}{{ t | tojson }}{% endfor %}{% endif %}<|eot_id|>{# <|python_tag|> #}")
LLAMA32 = LLAMA31.replace("{# <|python_tag|> #}", "")
PLAIN = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant: "

CASES = {
    # name: (template, vocabulary has <|python_tag|>, the call as the model writes it)
    "hermes": (HERMES, False, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'),
    "mistral": (MISTRAL, False, '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]'),
    "phi4": (PHI4, False, '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]<|/tool_call|>'),
    "llama3": (LLAMA31, True, '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}'),
    "llama3-bare": (LLAMA32, False, '{"name": "get_weather", "parameters": {"city": "Paris"}}'),
    "generic": (PLAIN, False, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'),
}


def tokenizers(tmp_path: Path, python_tag: bool) -> tuple[Tokenizer, ModelTokenizer]:
    tok = train_tokenizer()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in SPECIAL + (["<|python_tag|>"] if python_tag else [])])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("<tool_call>", "</tool_call>")])
    tok.save(str(tmp_path / "tokenizer.json"))
    config = ModelConfig(context_length=512, num_layers=None, num_kv_heads=None, head_dim=None, vocab_size=None,
                         eos_token_ids=frozenset({tok.token_to_id("<|im_end|>")}), bos_token_id=None)
    return tok, ModelTokenizer(tmp_path, config, {})


@pytest.mark.parametrize("case", sorted(CASES))
def test_format_grammar_and_parser_agree_on_the_familys_call(case: str, tmp_path: Path) -> None:
    source, python_tag, written = CASES[case]
    tok, model_tok = tokenizers(tmp_path, python_tag)
    fmt = detect_tool_format(ChatTemplate({"default": source}, {}), model_tok)
    assert fmt.name == case.removesuffix("-bare")
    assert fmt.native == (case != "generic")
    for marker, marker_id in ((fmt.open, fmt.open_id), (fmt.close, fmt.close_id)):
        # a special-token marker is known by id (it never shows in decoded text); a text one is not
        special = marker in SPECIAL or marker == "<|python_tag|>"
        assert (marker_id == tok.token_to_id(marker)) if special else marker_id is None
    if case == "llama3-bare":
        assert fmt.open == ""

    for choice in ("required", "auto", {"type": "function", "function": {"name": "get_weather"}}):
        grammar = tool_use.tool_grammar(fmt, [WEATHER], choice, False, None)
        constraint = Constraint(model_tok, grammar)
        for token in tok.encode(written, add_special_tokens=False).ids:
            assert constraint.allows(token), (choice, tok.decode([token], skip_special_tokens=False))
            constraint.accept(token)
        assert not constraint.failed and constraint.done, choice

    # arguments the schema does not allow are masked out
    wrong = written.replace('"city"', '"town"')
    constraint = Constraint(model_tok, tool_use.tool_grammar(fmt, [WEATHER], "required", False, None))
    accepted = True
    for token in tok.encode(wrong, add_special_tokens=False).ids:
        if not constraint.allows(token):
            accepted = False
            break
        constraint.accept(token)
    assert not accepted

    parser = ToolCallParser(fmt)
    assert parser.feed(written) == ""
    rest, [call] = parser.finish()
    assert rest == "" and call.name == "get_weather" and json.loads(call.arguments) == ARGS
