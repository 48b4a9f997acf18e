"""Loading: file discovery, errors that name the file, device fallback, graph contracts."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from agent.engine.model import load_model
from agent.engine.types import ModelLoadError, SamplingParams, TemplateError
from tests.engine.graphs import with_fp16_kv, with_logits_to_keep, without_position_ids, write_bigram_graph
from tests.engine.helpers import chat_prompt, run, text, token_ids, write_file
from tests.fakes.tiny_model import TinyModel


@pytest.fixture
def repo(tiny: TinyModel, tmp_path: Path) -> Path:
    """A private copy of the tiny repo (fp32 only) that a test may damage."""
    dest = tmp_path / "repo"
    shutil.copytree(tiny.path, dest, ignore=shutil.ignore_patterns("model_*.onnx"))
    return dest


def test_info_describes_what_was_loaded(tiny: TinyModel, tiny_model: object) -> None:
    model = load_model(tiny.path, quantization="q4", device="auto", threads=1)
    info = model.info
    assert info.path == tiny.path and info.context_length == 256
    assert info.provider == "CPUExecutionProvider" and info.requested_device == "auto"
    assert info.fallback_reason is None  # auto on a machine without an accelerator is no fallback
    assert info.onnx_file == tiny.path / "onnx" / "model_q4.onnx" and info.quantization == "q4"
    assert info.kv_cache and info.chat_template == "model"
    assert info.vocab_size == tiny.tokenizer.get_vocab_size() and info.eos_token_ids == (2,)
    assert info.load_s > 0


@pytest.mark.parametrize("device", ["cuda", "directml", "coreml", "gpu"])
def test_an_unavailable_device_falls_back_to_cpu_and_says_why(tiny: TinyModel, device: str) -> None:
    model = load_model(tiny.path, quantization="fp32", device=device)
    assert model.info.provider == "CPUExecutionProvider"
    assert model.info.fallback_reason and "CPU" in model.info.fallback_reason


def test_unknown_device_or_quantization_is_a_load_error(tiny: TinyModel) -> None:
    with pytest.raises(ModelLoadError, match="tpu"):
        load_model(tiny.path, quantization="fp32", device="tpu")
    with pytest.raises(ModelLoadError, match="int3"):
        load_model(tiny.path, quantization="int3", device="cpu")


def test_missing_variant_names_the_file(repo: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"onnx/model_q4\.onnx"):
        load_model(repo, quantization="q4", device="cpu")


@pytest.mark.parametrize("name", ["tokenizer.json", "config.json"])
def test_missing_file_names_it(repo: Path, name: str) -> None:
    (repo / name).unlink()
    with pytest.raises(ModelLoadError, match=name.replace(".", r"\.")):
        load_model(repo, quantization="fp32", device="cpu")


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("onnx/model.onnx", b"\x08\x07garbage, not a protobuf model" * 10),
        ("onnx/model.onnx", b""),
        ("config.json", "{not json"),
        ("tokenizer.json", '{"model": 3}'),
        ("tokenizer_config.json", "[1, 2]"),
        ("generation_config.json", "{"),
        ("special_tokens_map.json", "nope"),
        ("chat_template.json", "{"),
        ("chat_template.jinja", b"\xff\xfe{{ bad utf-8"),
    ],
)
def test_corrupt_file_names_it(repo: Path, name: str, content: bytes | str) -> None:
    write_file(repo / name, content)
    with pytest.raises(ModelLoadError, match=Path(name).name.replace(".", r"\.")):
        load_model(repo, quantization="fp32", device="cpu")


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope", quantization="fp32", device="cpu")


def test_graph_at_the_top_of_the_folder_is_found(repo: Path) -> None:
    (repo / "onnx" / "model.onnx").rename(repo / "model.onnx")
    model = load_model(repo, quantization="fp32", device="cpu")
    assert model.info.onnx_file == repo / "model.onnx"


def test_external_data_beside_the_graph(tiny: TinyModel, tmp_path: Path) -> None:
    from agent.convert.llama_graph import write_llama_onnx

    dest = tmp_path / "repo"
    shutil.copytree(tiny.path, dest, ignore=shutil.ignore_patterns("*.onnx"))
    write_llama_onnx(tiny.shape, tiny.weights, dest, "fp32", external_data=True)
    assert (dest / "onnx" / "model.onnx_data").is_file()
    model = load_model(dest, quantization="fp32", device="cpu")
    tiny_ref = load_model(tiny.path, quantization="fp32", device="cpu")
    prompt = chat_prompt(model)
    assert token_ids(run(model, prompt, max_tokens=8)) == token_ids(run(tiny_ref, prompt, max_tokens=8))
    (dest / "onnx" / "model.onnx_data").unlink()
    with pytest.raises(ModelLoadError, match=r"model\.onnx"):
        load_model(dest, quantization="fp32", device="cpu")


@pytest.mark.usefixtures("original_graphs")
def test_fp16_kv_cache_is_allocated_from_the_graph(tiny: TinyModel, repo: Path) -> None:
    with_fp16_kv(tiny.path / "onnx" / "model.onnx", repo / "onnx" / "model.onnx")
    model = load_model(repo, quantization="fp32", device="cpu")
    import numpy as np

    assert model.contract.kv_dtype == np.float16
    reference = load_model(tiny.path, quantization="fp32", device="cpu")
    prompt = chat_prompt(model)
    ids = token_ids(run(model, prompt, max_tokens=10))
    assert ids[:5] == token_ids(run(reference, prompt, max_tokens=10))[:5]


@pytest.mark.usefixtures("original_graphs")
def test_graph_without_position_ids(tiny: TinyModel, repo: Path) -> None:
    without_position_ids(tiny.path / "onnx" / "model.onnx", repo / "onnx" / "model.onnx")
    model = load_model(repo, quantization="fp32", device="cpu")
    assert model.contract.position_ids_dtype is None
    reference = load_model(tiny.path, quantization="fp32", device="cpu")
    prompt = chat_prompt(model)
    assert token_ids(run(model, prompt, max_tokens=12)) == token_ids(run(reference, prompt, max_tokens=12))


@pytest.mark.usefixtures("original_graphs")
def test_logits_to_keep_input_is_fed_one(tiny: TinyModel, repo: Path) -> None:
    with_logits_to_keep(tiny.path / "onnx" / "model.onnx", repo / "onnx" / "model.onnx")
    model = load_model(repo, quantization="fp32", device="cpu")
    assert model.contract.logits_to_keep == ("logits_to_keep", ())
    from agent.engine.runner_base import PREFILL_CHUNK

    assert model._runner is not None and model._runner.max_chunk == PREFILL_CHUNK  # no logits budget
    reference = load_model(tiny.path, quantization="fp32", device="cpu")
    prompt = chat_prompt(model)
    assert token_ids(run(model, prompt, max_tokens=12)) == token_ids(run(reference, prompt, max_tokens=12))


def test_graph_without_cache_rereads_the_sequence(tiny: TinyModel, repo: Path) -> None:
    vocab = tiny.tokenizer.get_vocab_size()
    successor = write_bigram_graph(repo / "onnx" / "model.onnx", vocab)
    model = load_model(repo, quantization="fp32", device="cpu")
    assert not model.info.kv_cache
    prompt = model.encode_text("Hello")
    ids = token_ids(run(model, prompt, max_tokens=10))
    expected, last = [], prompt[-1]
    for _ in range(10):
        last = int(successor[last])
        if last == 2:
            break
        expected.append(last)
    assert ids == expected


def test_unknown_graph_inputs_are_named(tiny: TinyModel, repo: Path) -> None:
    write_bigram_graph(repo / "onnx" / "model.onnx", tiny.tokenizer.get_vocab_size(),
                       extra_inputs=("token_type_ids", "pixel_values"))
    with pytest.raises(ModelLoadError, match="pixel_values, token_type_ids"):
        load_model(repo, quantization="fp32", device="cpu")


def test_context_length_comes_from_config_and_can_be_overridden(repo: Path) -> None:
    config = json.loads((repo / "config.json").read_text())
    config["max_position_embeddings"] = 64
    (repo / "config.json").write_text(json.dumps(config))
    assert load_model(repo, quantization="fp32", device="cpu").info.context_length == 64
    assert load_model(repo, quantization="fp32", device="cpu", context_length=32).info.context_length == 32


def test_eos_ids_are_the_union_of_all_sources(repo: Path) -> None:
    gen = json.loads((repo / "generation_config.json").read_text())
    gen["eos_token_id"] = [2, 7]
    (repo / "generation_config.json").write_text(json.dumps(gen))
    config = json.loads((repo / "config.json").read_text())
    config["eos_token_id"] = 9
    (repo / "config.json").write_text(json.dumps(config))
    model = load_model(repo, quantization="fp32", device="cpu")
    assert model.info.eos_token_ids == (2, 7, 9)


def test_generation_config_sampling_defaults_apply(repo: Path) -> None:
    gen = json.loads((repo / "generation_config.json").read_text())
    gen.update(do_sample=True, temperature=1.0, top_k=0)
    (repo / "generation_config.json").write_text(json.dumps(gen))
    model = load_model(repo, quantization="fp32", device="cpu")
    prompt = chat_prompt(model)
    runs = {tuple(token_ids(run(model, prompt, max_tokens=12, seed=s))) for s in range(5)}
    assert len(runs) > 1  # the model samples although the request set no temperature
    greedy = {tuple(token_ids(run(model, prompt, max_tokens=12, temperature=0.0, seed=s))) for s in range(3)}
    assert len(greedy) == 1


def test_chatml_fallback_when_no_template(repo: Path) -> None:
    config = json.loads((repo / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (repo / "tokenizer_config.json").write_text(json.dumps(config))
    model = load_model(repo, quantization="fp32", device="cpu")
    assert model.info.chat_template == "chatml-fallback"
    rendered = model.render_chat([{"role": "user", "content": "Hi"}])
    assert rendered == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_closed_model_refuses_to_generate(tiny: TinyModel) -> None:
    model = load_model(tiny.path, quantization="fp32", device="cpu")
    model.close()
    with pytest.raises(Exception, match="closed"):
        model.generate([5], SamplingParams(), threading.Event())


def test_no_template_at_all_is_a_template_error(tiny: TinyModel, tmp_path: Path) -> None:
    from tests.engine.graphs import sentencepiece_style_tokenizer

    dest = tmp_path / "repo"
    shutil.copytree(tiny.path, dest, ignore=shutil.ignore_patterns("model_*.onnx"))
    sp = sentencepiece_style_tokenizer()
    sp.save(str(dest / "tokenizer.json"))
    config = json.loads((dest / "tokenizer_config.json").read_text())
    for key in ("chat_template", "bos_token", "eos_token", "pad_token", "unk_token", "added_tokens_decoder"):
        config.pop(key, None)
    (dest / "tokenizer_config.json").write_text(json.dumps(config))
    (dest / "special_tokens_map.json").unlink()
    model = load_model(dest, quantization="fp32", device="cpu")
    assert model.info.chat_template == "none"
    with pytest.raises(TemplateError):
        model.encode_chat([{"role": "user", "content": "Hi"}])
    # Raw prompts still work (streamed SentencePiece text is checked in test_detokenize).
    prompt = model.encode_text("The capital of France is")
    assert model.decode(prompt) == "The capital of France is"
    steps = run(model, prompt, max_tokens=12)
    assert steps[-1].finish_reason in ("stop", "length") and isinstance(text(steps), str)
