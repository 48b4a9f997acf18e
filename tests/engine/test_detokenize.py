"""Incremental detokenization and stop strings, on real tokenizers (byte-level BPE and
SentencePiece-style metaspace with byte fallback)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from agent.engine.detokenize import IncrementalDetokenizer, StopMatcher
from agent.engine.model_files import ModelConfig
from agent.engine.tokenizer import ModelTokenizer
from tests.engine.graphs import sentencepiece_style_tokenizer
from tests.fakes.tiny_model import train_tokenizer

TEXTS = [
    "The capital of France is Paris.",
    "café 日本 🙂 naïve jalapeño",
    "  leading spaces and  double  spaces ",
    "emoji🙂🙂 joined 👩‍👩‍👧 family",
    "def main():\n    print('hello')\n",
]


@pytest.fixture(scope="module")
def byte_level() -> Tokenizer:
    return train_tokenizer()


@pytest.fixture(scope="module")
def metaspace() -> Tokenizer:
    return sentencepiece_style_tokenizer()


def stream(tok: Tokenizer, prompt: list[int], completion: list[int]) -> list[str]:
    detok = IncrementalDetokenizer(lambda ids: tok.decode(ids, skip_special_tokens=True), prompt)
    pieces = [detok.push(i) for i in completion]
    pieces.append(detok.flush())
    return pieces


@pytest.mark.parametrize("sample", TEXTS)
def test_byte_level_stream_equals_full_decode(byte_level: Tokenizer, sample: str) -> None:
    ids = byte_level.encode(sample, add_special_tokens=False).ids
    pieces = stream(byte_level, [], ids)
    assert "".join(pieces) == sample == byte_level.decode(ids)
    assert all("\ufffd" not in p for p in pieces)  # no character is ever split


@pytest.mark.parametrize("sample", TEXTS)
def test_metaspace_stream_keeps_word_spaces(metaspace: Tokenizer, sample: str) -> None:
    prompt_text = "Once upon a time"
    ids = metaspace.encode(prompt_text + " " + sample, add_special_tokens=False).ids
    prompt_ids = metaspace.encode(prompt_text, add_special_tokens=False).ids
    assert ids[: len(prompt_ids)] == prompt_ids
    pieces = stream(metaspace, prompt_ids, ids[len(prompt_ids):])
    full = metaspace.decode(ids)
    assert "".join(pieces) == full[len(prompt_text):]
    assert "".join(pieces).startswith(" ")  # the first word's space survives
    assert all("\ufffd" not in p for p in pieces)


def test_metaspace_completion_without_prompt_matches_plain_decode(metaspace: Tokenizer) -> None:
    ids = metaspace.encode("Hello world, 日本", add_special_tokens=False).ids
    assert "".join(stream(metaspace, [], ids)) == metaspace.decode(ids) == "Hello world, 日本"


def test_incomplete_character_is_held_then_flushed(byte_level: Tokenizer) -> None:
    ids = byte_level.encode("a日", add_special_tokens=False).ids
    detok = IncrementalDetokenizer(byte_level.decode)
    out = [detok.push(i) for i in ids[:-1]]
    assert "".join(out) == "a"  # the first bytes of 日 are held back
    assert detok.flush() == "\ufffd"  # the generation ended mid-character: shown as a decode shows it


def test_special_tokens_are_not_text(byte_level: Tokenizer) -> None:
    ids = byte_level.encode("Hi<|im_end|>there", add_special_tokens=False).ids
    assert "".join(stream(byte_level, [], ids)) == "Hithere"


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40))
def test_any_text_streams_exactly(sample: str) -> None:
    tok = _BYTE_LEVEL
    ids = tok.encode(sample, add_special_tokens=False).ids
    assert "".join(stream(tok, [], ids)) == tok.decode(ids)


_BYTE_LEVEL = train_tokenizer()


# -- stop strings --------------------------------------------------------------------------------


def feed(stops: list[str], chunks: list[str]) -> tuple[list[str], bool, str]:
    matcher = StopMatcher(stops)
    out: list[str] = []
    for chunk in chunks:
        released, stopped = matcher.push(chunk)
        out.append(released)
        if stopped:
            return out, True, ""
    return out, False, matcher.flush()


def test_stop_inside_one_chunk() -> None:
    out, stopped, _ = feed(["STOP"], ["abcSTOPdef"])
    assert out == ["abc"] and stopped


def test_stop_split_across_chunks_is_held_then_dropped() -> None:
    out, stopped, _ = feed(["STOP"], ["abS", "T", "O", "Pxyz"])
    assert out == ["ab", "", "", ""] and stopped


def test_a_false_start_is_released() -> None:
    out, stopped, rest = feed(["STOP"], ["abST", "x", "S"])
    assert not stopped and "".join(out) + rest == "abSTxS" and out == ["ab", "STx", ""] and rest == "S"


def test_earliest_stop_wins() -> None:
    out, stopped, _ = feed(["cd", "b"], ["abcd"])
    assert out == ["a"] and stopped


def test_the_stop_completed_first_wins_however_text_is_chunked() -> None:
    for chunks in (["abcd"], ["a", "b", "c", "d"], ["ab", "cd"]):
        out, stopped, _ = feed(["abcd", "bc"], chunks)
        assert "".join(out) == "a" and stopped


def test_overlapping_prefix_of_a_stop() -> None:
    out, stopped, _ = feed(["aab"], ["a", "a", "a", "b", "c"])
    assert "".join(out) == "a" and stopped


def test_no_stops_pass_through_and_empty_stops_are_ignored() -> None:
    out, stopped, rest = feed(["", ""], ["abc", "def"])
    assert out == ["abc", "def"] and not stopped and rest == ""


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet="abcS", max_size=30),
    st.lists(st.text(alphabet="abcS", min_size=1, max_size=4), min_size=1, max_size=3),
    st.data(),
)
def test_streamed_cut_equals_cut_of_whole_text(whole: str, stops: list[str], data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(whole)), max_size=6)))
    chunks = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
    out, stopped, rest = feed(stops, chunks)
    # The stop completed first (smallest end, then smallest start), as if streamed char by char.
    found = [(i + len(s), i) for s, i in ((s, whole.find(s)) for s in stops) if i >= 0]
    if found:
        assert stopped and "".join(out) == whole[: min(found)[1]]
    else:
        assert not stopped and "".join(out) + rest == whole


# -- token bytes (logprobs' ``bytes`` and the text a token adds) ----------------------------------


def model_tokenizer(tok: Tokenizer, tmp_path: Path) -> ModelTokenizer:
    tok.save(str(tmp_path / "tokenizer.json"))
    config = ModelConfig(context_length=64, num_layers=None, num_kv_heads=None, head_dim=None, vocab_size=None,
                         eos_token_ids=frozenset(), bos_token_id=None)
    return ModelTokenizer(tmp_path, config, {})


@pytest.mark.parametrize("sample", ["The capital of 日本 is Paris 🙂", "café  naïve\n\tdone"])
def test_token_bytes_rebuild_the_text(byte_level: Tokenizer, metaspace: Tokenizer, tmp_path: Path, sample: str) -> None:
    for name, tok in (("byte", byte_level), ("meta", metaspace)):
        folder = tmp_path / name
        folder.mkdir()
        model_tok = model_tokenizer(tok, folder)
        ids = tok.encode(sample, add_special_tokens=False).ids
        joined = b"".join(model_tok.token_bytes(i) for i in ids)
        # SentencePiece's first-word space is a tokenizer artefact that decode strips.
        assert joined.decode("utf-8") == (sample if name == "byte" else " " + sample)
        partial = [i for i in ids if len(model_tok.token_bytes(i)) == 1 and model_tok.token_bytes(i)[0] >= 0x80]
        assert all(model_tok.token_text(i) == "\ufffd" for i in partial)  # part of a character
        assert partial or "日本" not in sample
