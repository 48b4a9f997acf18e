"""Constrained decoding on real onnxruntime models: a random tiny model writes valid JSON, regex and
Lark output because the grammar masks every other token, whatever its weights prefer."""

from __future__ import annotations

import json
import re
import threading

import jsonschema
import pytest

from agent.engine.constrain import Constraint, GrammarError, grammar_for
from agent.engine.model import OnnxChatModel
from agent.engine.types import SamplingParams

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}


def generate(model: OnnxChatModel, params: SamplingParams) -> tuple[str, str, int]:
    ids = model.encode_chat([{"role": "user", "content": "Describe a person as JSON."}])
    steps = list(model.generate(ids, params, threading.Event()))
    return "".join(s.text for s in steps), steps[-1].finish_reason or "", sum(len(s.tokens) for s in steps)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_random_model_writes_json_that_validates(tiny_model: OnnxChatModel, seed: int, temperature: float) -> None:
    grammar = grammar_for("json_schema", PERSON, "response_format")
    text, finish, _ = generate(tiny_model, SamplingParams(max_tokens=400, temperature=temperature, seed=seed,
                                                          grammar=grammar))
    assert finish == "stop", text
    jsonschema.validate(json.loads(text), PERSON)


def test_free_json_object(tiny_model: OnnxChatModel) -> None:
    grammar = grammar_for("json_schema", {"type": "object", "maxProperties": 2}, "response_format")
    text, finish, _ = generate(tiny_model, SamplingParams(max_tokens=300, temperature=0.8, seed=5, grammar=grammar))
    assert finish == "stop" and isinstance(json.loads(text), dict)


def test_regex_and_lark(tiny_model: OnnxChatModel) -> None:
    text, finish, _ = generate(tiny_model, SamplingParams(max_tokens=50, temperature=1.0, seed=1,
                                                          grammar=grammar_for("regex", r"[0-9]{3}-[a-z]{2}", "g")))
    assert finish == "stop" and re.fullmatch(r"[0-9]{3}-[a-z]{2}", text)
    lark = 'start: "yes" | "no" | "maybe " NUM\nNUM: /[1-9]/'
    text, finish, _ = generate(tiny_model, SamplingParams(max_tokens=50, temperature=1.0, seed=2,
                                                          grammar=grammar_for("lark", lark, "g")))
    assert finish == "stop" and re.fullmatch(r"yes|no|maybe [1-9]", text), text


def test_running_out_of_tokens_inside_a_value_says_length(tiny_model: OnnxChatModel) -> None:
    schema = {"type": "object", "properties": {"story": {"type": "string", "minLength": 200}}, "required": ["story"]}
    text, finish, tokens = generate(tiny_model, SamplingParams(max_tokens=12, temperature=1.0, seed=0,
                                                               grammar=grammar_for("json_schema", schema, "x")))
    assert finish == "length" and tokens == 12
    assert text.startswith('{')


def test_forced_tokens_count_as_generated(tiny_model: OnnxChatModel) -> None:
    """The fixed part of a schema is appended without sampling but still counted and streamed."""
    schema = {"type": "object", "properties": {"answer_with_a_long_key_name": {"enum": ["ok"]}},
              "required": ["answer_with_a_long_key_name"], "additionalProperties": False}
    ids = tiny_model.encode_chat([{"role": "user", "content": "x"}])
    steps = list(tiny_model.generate(ids, SamplingParams(max_tokens=100, grammar=grammar_for("json_schema", schema, "x")),
                                     threading.Event()))
    text = "".join(s.text for s in steps)
    assert json.loads(text) == {"answer_with_a_long_key_name": "ok"}
    ids = [t.token_id for s in steps for t in s.tokens]
    assert tiny_model.decode(ids) == text  # every token, forced or sampled, is reported
    assert all(len(s.tokens) == 1 for s in steps)


@pytest.mark.parametrize(("kind", "source"), [
    ("lark", "start: foo"),
    ("regex", "[a-"),
    ("json_schema", {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}),
])
def test_bad_grammars_are_refused_naming_the_field(kind: str, source: object) -> None:
    with pytest.raises(GrammarError) as err:
        grammar_for(kind, source, "response_format.json_schema")  # type: ignore[arg-type]
    assert err.value.param == "response_format.json_schema"


def test_constraint_refuses_tokens_outside_the_grammar(tiny_model: OnnxChatModel) -> None:
    constraint = Constraint(tiny_model.tokenizer, grammar_for("regex", "ab", "g"))
    tok = tiny_model.tokenizer
    a = tok.encode_rendered("a")
    assert len(a) == 1 and constraint.allows(a[0])
    z = tok.encode_rendered("z")
    assert not constraint.allows(z[0])


@pytest.mark.parametrize("extra", [-3, 0, 5, 70])
def test_mask_matches_the_bitmask_exactly(tiny_model: OnnxChatModel, extra: int) -> None:
    """The mask keeps allowed logits bit for bit, sets the rest to -inf, forbids rows past the
    vocabulary (padded logits), and leaves its input alone; a shorter row is masked as far as it goes."""
    import llguidance.numpy as llnp
    import numpy as np

    tok = tiny_model.tokenizer
    constraint = Constraint(tok, grammar_for("json_schema", PERSON, "g"))
    vocab = constraint._vocab
    rng = np.random.default_rng(0)
    for token in tok.encode_rendered('{"name": "Al", "age": 3'):
        logits = rng.standard_normal(vocab + extra).astype(np.float32)
        before = logits.copy()
        masked = constraint.mask(logits).copy()
        assert np.array_equal(logits, before)
        bits = np.unpackbits(constraint._bitmask[0].view(np.uint8), bitorder="little")[:vocab].astype(bool)
        expected = np.full(logits.shape, -np.inf, dtype=np.float32)
        n = min(vocab, logits.shape[0])
        expected[:n][bits[:n]] = logits[:n][bits[:n]]
        assert masked.shape == logits.shape and np.array_equal(masked, expected)
        llnp.fill_next_token_bitmask(constraint._matcher, constraint._bitmask, 0)
        assert constraint.allows(token) and constraint.accept(token)


def test_mask_dense_and_sparse_steps_alternate(tiny_model: OnnxChatModel) -> None:
    """Free string content allows most tokens, a key allows few: the reused buffer is right either way."""
    import numpy as np

    tok = tiny_model.tokenizer
    constraint = Constraint(tok, grammar_for("json_schema", {"type": "object", "properties": {
        "s": {"type": "string"}, "t": {"type": "string"}}, "required": ["s", "t"], "additionalProperties": False}, "g"))
    vocab = constraint._vocab
    rng = np.random.default_rng(1)
    dense = []
    for token in tok.encode_rendered('{"s": "hello there", "t": "x"}'):
        logits = rng.standard_normal(vocab + 7).astype(np.float32)
        masked = constraint.mask(logits).copy()
        dense.append(constraint._written is None)
        bits = np.unpackbits(constraint._bitmask[0].view(np.uint8), bitorder="little")[:vocab].astype(bool)
        expected = np.full(logits.shape, -np.inf, dtype=np.float32)
        expected[:vocab][bits] = logits[:vocab][bits]
        assert np.array_equal(masked, expected)
        assert constraint.accept(token)
    assert any(dense) and not all(dense)
