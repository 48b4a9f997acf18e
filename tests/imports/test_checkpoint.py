"""``hflocal import CHECKPOINT_DIR``: a real (tiny, random) LlamaForCausalLM saved by transformers,
exported by the worker with optimum (the ``convert`` extra), then chatted with over the API.

These tests need torch, so they run where the extra is installed; ``scripts/test`` installs it, and
under ``CI=true`` a skip counts as a failure.
"""

from __future__ import annotations

import json
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import pytest

from tests.fakes.tiny_model import CHAT_TEMPLATE, IM_END_ID, IM_START_ID, train_tokenizer
from tests.imports.support import http_json
from tests.support.agentproc import AgentProcess, cli, start_agent

pytest.importorskip("torch", reason="needs the convert extra: pip install -c constraints.txt -e '.[convert]'")
pytest.importorskip("optimum.exporters.onnx", reason="needs the convert extra")

QUANTS = ("fp32", "q8", "q4", "fp16")
MESSAGES = [{"role": "user", "content": "Hello world! How are you today?"}]
NEW_TOKENS = 24


def key(quant: str) -> str:
    return f"huggingface-local/local/Tiny-Llama::{quant}::auto"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random LlamaForCausalLM (std 0.2, so greedy output varies) with the tiny ChatML tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("checkpoint") / "Tiny-Llama"
    tokenizer = train_tokenizer()
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=IM_START_ID, eos_token_id=IM_END_ID, pad_token_id=IM_END_ID, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LlamaForCausalLM(config)
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim > 1:
                    p.normal_(0.0, 0.2)
        model.save_pretrained(out)
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>",
            pad_token="<|im_end|>", unk_token="<|endoftext|>",
        )
        fast.chat_template = CHAT_TEMPLATE
        fast.save_pretrained(out)
    return out


def transformers_greedy(checkpoint: Path) -> tuple[str, str]:
    """What transformers itself answers, greedily: ``(text, finish reason)``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
        ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False)
    new = out[0, ids.shape[1]:].tolist()
    finish = "stop" if new and new[-1] == IM_END_ID else "length"
    return tokenizer.decode(new, skip_special_tokens=True), finish


@pytest.fixture(scope="module")
def imported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProcess, subprocess.CompletedProcess[str]]]:
    home = tmp_path_factory.mktemp("home")
    agent = start_agent(home)
    try:
        args = [a for q in QUANTS for a in ("--quant", q)]
        result = cli("import", str(checkpoint), *args, home=home, timeout=280)
        yield agent, result
    finally:
        agent.stop()


def chat(agent: AgentProcess, quant: str, **extra: Any) -> dict[str, Any]:
    status, body = http_json(
        f"{agent.http_url}/v1/chat/completions",
        {"model": key(quant), "messages": MESSAGES, "temperature": 0, "max_tokens": NEW_TOKENS, **extra},
    )
    assert status == 200, body
    return dict(body)


def test_checkpoint_import_installs_every_quantization(imported: tuple[AgentProcess, subprocess.CompletedProcess[str]]) -> None:
    agent, result = imported
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [w for q in QUANTS for w in ("installed", key(q))]
    listing = json.loads(cli("ls", "--json", home=agent.home).stdout)["models"]
    assert sorted(m["key"] for m in listing) == sorted(key(q) for q in QUANTS)
    folder = agent.home / "imported" / "local" / "Tiny-Llama"
    assert sorted(p.name for p in (folder / "onnx").iterdir()) == [
        "model.onnx", "model_fp16.onnx", "model_q4.onnx", "model_quantized.onnx",
    ]
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (folder / name).is_file(), name


def test_fp32_greedy_answer_equals_transformers(
    imported: tuple[AgentProcess, subprocess.CompletedProcess[str]], checkpoint: Path
) -> None:
    agent, result = imported
    assert result.returncode == 0, result.stderr
    want_text, want_finish = transformers_greedy(checkpoint)
    answer = chat(agent, "fp32")
    assert len(want_text) > 10  # random weights that say something, not one repeated token
    assert answer["choices"][0]["message"]["content"] == want_text
    assert answer["choices"][0]["finish_reason"] == want_finish


def test_every_variant_answers(imported: tuple[AgentProcess, subprocess.CompletedProcess[str]]) -> None:
    agent, result = imported
    assert result.returncode == 0, result.stderr
    for quant in QUANTS:
        answer = chat(agent, quant)
        assert answer["model"] == key(quant)
        assert answer["usage"]["completion_tokens"] > 0


def test_quantized_graphs_are_weight_only(imported: tuple[AgentProcess, subprocess.CompletedProcess[str]]) -> None:
    """q8 and q4 are MatMulNBits (8 and 4 bits), never dynamic activation quantization (FACTS §3);
    fp16 keeps float32 inputs and outputs."""
    agent, result = imported
    assert result.returncode == 0, result.stderr
    onnx_dir = agent.home / "imported" / "local" / "Tiny-Llama" / "onnx"
    for name, bits in (("model_quantized.onnx", 8), ("model_q4.onnx", 4)):
        graph = onnx.load(str(onnx_dir / name)).graph
        ops = {n.op_type for n in graph.node}
        assert not ops & {"DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul"}, name
        nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
        assert len(nbits) == 14, name  # 2 layers x (q, k, v, o, gate, up, down)
        assert {a.i for n in nbits for a in n.attribute if a.name == "bits"} == {bits}
    fp16 = onnx.load(str(onnx_dir / "model_fp16.onnx")).graph
    assert {i.type.tensor_type.elem_type for i in fp16.input if i.name.startswith("past")} == {onnx.TensorProto.FLOAT}
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.initializer)


def test_the_worker_never_loads_torch(imported: tuple[AgentProcess, subprocess.CompletedProcess[str]]) -> None:
    agent, result = imported
    assert result.returncode == 0, result.stderr
    maps = Path(f"/proc/{agent.proc.pid}/maps").read_text()
    assert "libtorch" not in maps, "the export must run in a child process"


def test_a_checkpoint_optimum_cannot_export(
    agents: list[AgentProcess], hermetic_home: Path, tmp_path: Path
) -> None:
    agent = start_agent(hermetic_home)
    agents.append(agent)
    folder = tmp_path / "Strange"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    (folder / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    result = cli("import", str(folder), home=agent.home, timeout=200)
    assert result.returncode == 1
    line = result.stderr.strip()
    assert line.startswith("hflocal: import failed:") and "no-such-architecture" in line, line
    assert "\n" not in line and "Traceback" not in line
    assert json.loads(cli("ls", "--json", home=agent.home).stdout)["models"] == []


def _safetensors_header_only(path: Path, tensors: dict[str, tuple[str, list[int], int]]) -> None:
    """A safetensors file whose header declares ``tensors`` (dtype, shape, bytes); the data is a
    sparse hole, so a multi-GB checkpoint costs nothing on disk."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape, nbytes) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    with path.open("wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.truncate(8 + len(raw) + offset)


def test_post_processing_is_skipped_only_for_checkpoints_past_the_protobuf_limit(tmp_path: Path) -> None:
    """optimum's tied-weight post-processing cannot serialise a graph over 2 GB (a 1B model): the
    export skips it there, judged by the float32 size of the weights, not by the file's bf16 size."""
    from agent.convert.checkpoint import EXTERNAL_DATA_ABOVE, fp32_bytes

    small, big = tmp_path / "small", tmp_path / "big"
    small.mkdir()
    big.mkdir()
    _safetensors_header_only(small / "model.safetensors", {"w": ("F16", [1000, 64], 128_000)})
    # 1.24 B bf16 parameters in two shards (2.5 GB of bf16, 5 GB as float32)
    half = [77_500_000, 8]
    _safetensors_header_only(big / "model-00001-of-00002.safetensors", {"a": ("BF16", half, 1_240_000_000)})
    _safetensors_header_only(big / "model-00002-of-00002.safetensors", {"b": ("BF16", half, 1_240_000_000)})
    (big / "notes.safetensors").write_bytes(b"\xff" * 8)  # garbage header: ignored, not fatal
    assert fp32_bytes(small) == 4 * 64_000 < EXTERNAL_DATA_ABOVE
    assert fp32_bytes(big) == 2 * 4 * 620_000_000 > EXTERNAL_DATA_ABOVE
