"""The fast path: a Hub export (optimum graph, MatMulNBits 4/8-bit, fp16) rewritten into the fused graph.

Each family's tiny random model (tests/convert/hub_exports.py: Llama, Llama 3 with rope scaling and an
untied head, Mistral with a sliding window, Qwen2 with q/k/v biases, Qwen3 with q/k norms, Phi-3.5
with fused qkv/gate_up projections and longrope, Phi-4-mini with a partial rotary, SmolLM3 with a
NoPE layer, Gemma 2 with soft-caps, a sliding layer and its norms, Gemma 3 with q/k norms and a local
rope base) is exported the way onnx-community's
repos are, then:

- fp32 and fp16 rewrites generate greedily exactly what transformers generates (for fp16, with the
  same fp16-rounded weights, which on a random model can sway a token from the fp32 answer);
- q4 and q8 rewrites keep the export's blocks byte for byte (never quantized twice) and, with float
  activations and a float head, generate exactly what the export itself generates;
- at the defaults (int8 activations where fast, the 8-bit head rescored) they agree with the export's
  own top-1 choice on at least :data:`DEFAULT_AGREEMENT` of teacher-forced positions (the stated
  tolerance; measured 90-100 %);
- past the original context of a longrope model the fp32 rewrite takes the long factors, as
  transformers does (the export itself keeps the short ones it was traced with), and Gemma 2's
  rewrite soft-caps its attention scores (the export, like transformers' sdpa path, does not);
- loading takes the rewrite (cached beside the files, rebuilt when the source or converter changes)
  and falls back to the original graph, saying why, for what it cannot rewrite or load.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from agent.convert import fast_path
from agent.convert.fast_cache import cache_dir_for
from agent.convert.fast_path import fast_graph, rewrite, shape_from_config
from agent.engine.model import load_model
from agent.engine.model_files import onnx_path
from tests.convert.hub_exports import EXPORT_DEPARTS, FAMILIES, FP16_REFERENCE, LONG_TOP1, NEW_TOKENS, PROMPT, TEACHER
from tests.fakes.decoder import Decoder

DEFAULT_AGREEMENT = 0.85


def _repo(exports: Path, family: str) -> Path:
    return exports / family / "repo"


def _shape(repo: Path):  # type: ignore[no-untyped-def]
    return shape_from_config(json.loads((repo / "config.json").read_text()))


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("quant", ["fp32", "fp16"])
def test_float_rewrite_generates_what_transformers_generates(exports: Path, family: str, quant: str) -> None:
    repo = _repo(exports, family)
    fast = fast_graph(repo, onnx_path(repo, quant), quant)
    assert fast.path is not None, fast.reason
    reference = FP16_REFERENCE if quant == "fp16" else "transformers.json"
    want = json.loads((exports / family / reference).read_text())
    assert len(set(want)) > 5  # random weights that say something
    assert Decoder(fast.path).greedy(PROMPT, NEW_TOKENS) == want


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("quant", ["q4", "q8"])
def test_quantized_rewrite_keeps_the_blocks_and_the_answers(
    exports: Path, family: str, quant: str, tmp_path: Path
) -> None:
    repo = _repo(exports, family)
    source = onnx_path(repo, quant)
    shape = _shape(repo)
    if family in EXPORT_DEPARTS:  # compared with what the export computes (no attention soft-cap)
        shape = dataclasses.replace(shape, attn_softcap=None)
    exact = rewrite(shape, source, tmp_path, quant, accuracy_level=0, head_bits=32)
    assert Decoder(exact).greedy(PROMPT, NEW_TOKENS) == Decoder(source).greedy(PROMPT, NEW_TOKENS)

    def codes(path: Path) -> list[bytes]:
        model = onnx.load(str(path))
        inits = {t.name: t for t in model.graph.initializer}
        return sorted(
            numpy_helper.to_array(inits[n.input[1]]).tobytes()
            for n in model.graph.node if n.op_type == "MatMulNBits" and "lm_head" not in n.name
        )

    original, rewritten = codes(source), codes(exact)
    assert original and rewritten
    # The rewrite stacks q/k/v and gate/up: each original block matrix is a run inside one of its own.
    joined = b"\n".join(rewritten)
    assert all(blob in joined for blob in original)
    assert sum(map(len, rewritten)) == sum(map(len, original))


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("quant", ["q4", "q8"])
def test_default_quantized_rewrite_agrees_within_tolerance(exports: Path, family: str, quant: str) -> None:
    repo = _repo(exports, family)
    source = onnx_path(repo, quant)
    fast = fast_graph(repo, source, quant)
    assert fast.path is not None, fast.reason
    # A longrope export is traced with its short factors: compared within the original context only.
    teacher = TEACHER[: FAMILIES[family].get("original_max_position_embeddings", len(TEACHER))]
    agreement = float(np.mean(Decoder(fast.path).teacher_forced_top1(teacher) == Decoder(source).teacher_forced_top1(teacher)))
    assert agreement >= DEFAULT_AGREEMENT, (family, quant, agreement)


@pytest.mark.parametrize("family", list(EXPORT_DEPARTS))
def test_where_the_export_departs_the_rewrite_is_what_transformers_computes(exports: Path, family: str) -> None:
    """One prefill longer than ``original_max_position_embeddings``: transformers rotates it with the
    long factors; so does the rewrite (its If picks the caches by sequence length). Gemma 2: the
    rewrite soft-caps attention scores as transformers' eager attention does."""
    repo = _repo(exports, family)
    want = np.array(json.loads((exports / family / LONG_TOP1).read_text()))
    fast = fast_graph(repo, onnx_path(repo, "fp32"), "fp32")
    assert fast.path is not None, fast.reason
    assert Decoder(fast.path).teacher_forced_top1(TEACHER).tolist() == want.tolist()
    # The export (short factors only, no soft-cap) answers otherwise: the test can fail.
    assert (Decoder(onnx_path(repo, "fp32")).teacher_forced_top1(TEACHER) != want).any()


def test_rewrite_is_the_fused_graph(exports: Path) -> None:
    repo = _repo(exports, "qwen3")
    fast = fast_graph(repo, onnx_path(repo, "q4"), "q4")
    assert fast.path is not None
    ops = Counter(n.op_type for n in onnx.load(str(fast.path)).graph.node)
    assert ops["GroupQueryAttention"] == 2 and ops["SkipSimplifiedLayerNormalization"] == 4
    assert not set(ops) & {"Softmax", "Cos", "Sin", "Transpose"}, ops
    plain = Counter(n.op_type for n in onnx.load(str(onnx_path(repo, "q4"))).graph.node)
    assert sum(ops.values()) * 3 < sum(plain.values())


def test_loading_takes_the_cached_rewrite_and_rebuilds_it_when_stale(
    exports: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    repo = tmp_path / "qwen2"
    shutil.copytree(_repo(exports, "qwen2"), repo)
    model = load_model(repo, quantization="q4", device="cpu")
    assert model.info.graph == "fused", model.info.graph_note
    assert model.info.onnx_file == repo / "onnx" / "model_q4.onnx"
    cached = cache_dir_for(repo) / "q4" / "onnx" / "model_q4.onnx"
    assert cached.is_file()
    built = cached.stat().st_mtime_ns

    assert load_model(repo, quantization="q4", device="cpu").info.graph == "fused"
    assert cached.stat().st_mtime_ns == built  # reused, not rebuilt

    monkeypatch.setattr(fast_path, "converter_fingerprint", lambda: "a-newer-converter")
    assert load_model(repo, quantization="q4", device="cpu").info.graph == "fused"
    rebuilt = cached.stat().st_mtime_ns
    assert rebuilt != built

    source = repo / "onnx" / "model_q4.onnx"
    source.write_bytes(source.read_bytes())  # a re-downloaded file (new mtime): rebuilt from it
    load_model(repo, quantization="q4", device="cpu")
    assert cached.stat().st_mtime_ns != rebuilt

    cached.write_bytes(b"not a graph")  # a damaged rewrite: the original runs, the rewrite is dropped
    model = load_model(repo, quantization="q4", device="cpu")
    assert model.info.graph == "original" and "did not load" in model.info.graph_note
    assert not cached.exists()
    assert load_model(repo, quantization="q4", device="cpu").info.graph == "fused"  # built afresh


def test_unknown_families_and_the_switch_keep_the_original(
    exports: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    repo = tmp_path / "other"
    shutil.copytree(_repo(exports, "llama"), repo)
    config = json.loads((repo / "config.json").read_text())
    (repo / "config.json").write_text(json.dumps({**config, "model_type": "olmo"}))
    model = load_model(repo, quantization="q4", device="cpu")
    assert model.info.graph == "original"
    assert "'olmo'" in model.info.graph_note
    assert model.encode_text("hello world")  # a working model all the same

    (repo / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("HFLOCAL_FAST_PATH", "0")
    model = load_model(repo, quantization="q4", device="cpu")
    assert model.info.graph == "original" and "HFLOCAL_FAST_PATH" in model.info.graph_note


def test_a_graph_hflocal_wrote_is_not_rewritten(tmp_path: Path) -> None:
    """What a GGUF import writes is already the fused graph: it runs as it is, and the verdict is
    remembered so the next load does not read the graph again."""
    from agent.convert.llama_graph import write_llama_onnx
    from tests.fakes.tiny_model import build_tiny_repo

    tiny = build_tiny_repo(tmp_path, quants=(), seed=0)
    write_llama_onnx(tiny.shape, tiny.weights, tmp_path, "q4", fused=True)
    model = load_model(tmp_path, quantization="q4", device="cpu")
    assert model.info.graph == "fused" and model.info.onnx_file == tmp_path / "onnx" / "model_q4.onnx"
    stamp = json.loads((cache_dir_for(tmp_path) / "q4" / "stamp.json").read_text())
    assert stamp["original"] == fast_path.ALREADY_FUSED
    assert not (cache_dir_for(tmp_path) / "q4" / "onnx").exists()  # nothing rewritten


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_a_q4f16_only_repo_is_q4_and_runs_rewritten(exports: Path, family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``model_q4f16.onnx`` (fp16 activations, I/O and cache) is the q4 variant when there is no
    ``model_q4.onnx``; the engine runs it as it is, or rewritten (float32 activations, the same
    blocks), which agrees with it within the stated tolerance."""
    from agent.hub import offered_quantizations

    web = exports / family / "web"
    names = [p.relative_to(web).as_posix() for p in web.rglob("*") if p.is_file() and ".hflocal" not in str(p)]
    assert offered_quantizations(names) == ["q4"]
    source = web / "onnx" / "model_q4f16.onnx"
    assert onnx_path(web, "q4") == source
    assert load_model(web, quantization="q4", device="cpu").info.graph == "fused"
    monkeypatch.setenv("HFLOCAL_FAST_PATH", "0")
    assert load_model(web, quantization="q4", device="cpu").info.graph == "original"  # it runs as it is too

    fast = fast_graph(web, source, "q4")
    assert fast.path is not None
    exact = Decoder(fast.path).teacher_forced_top1(TEACHER)
    original = Decoder(source).teacher_forced_top1(TEACHER)
    assert float(np.mean(exact == original)) >= DEFAULT_AGREEMENT


PHI4_MINI = {  # the shape-bearing fields of microsoft/Phi-4-mini-instruct's config.json
    "model_type": "phi3", "vocab_size": 200064, "hidden_size": 3072, "intermediate_size": 8192,
    "num_hidden_layers": 32, "num_attention_heads": 24, "num_key_value_heads": 8, "partial_rotary_factor": 0.75,
    "max_position_embeddings": 131072, "original_max_position_embeddings": 4096, "tie_word_embeddings": True,
    "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 48, "long_factor": [2.0] * 48},
}


def test_configs_the_rewrite_reads_and_the_ones_it_refuses_with_a_reason() -> None:
    """Phi-4-mini: a 96-channel rotary of 128 and transformers' longrope attention factor,
    sqrt(1 + ln(131072 / 4096) / ln(4096)); what GroupQueryAttention cannot express stays original."""
    import math

    shape = shape_from_config(PHI4_MINI)
    assert shape.rotary_dim == 96 and shape.head_dim == 128
    assert shape.rope_scaling is not None and shape.rope_scaling.original_max_position_embeddings == 4096
    assert math.isclose(shape.rope_scaling.attention_factor, math.sqrt(1 + math.log(32) / math.log(4096)))
    refused = {
        "partial rotary": {**PHI4_MINI, "partial_rotary_factor": 0.5, "rope_scaling": None},  # 64: fine
        "a rotary width of 72 (not a multiple of 16)": {**PHI4_MINI, "partial_rotary_factor": 0.5625, "rope_scaling": None},
        "longrope without long factors": {**PHI4_MINI, "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 48}},
        "smollm3 windows": {**PHI4_MINI, "model_type": "smollm3", "partial_rotary_factor": 1.0, "rope_scaling": None,
                            "use_sliding_window": True, "sliding_window": 4096},
        "gemma activation": {**PHI4_MINI, "model_type": "gemma2", "partial_rotary_factor": 1.0, "rope_scaling": None,
                             "hidden_activation": "relu"},
    }
    assert shape_from_config(refused.pop("partial rotary")).rotary_dim == 64
    for case, config in refused.items():
        with pytest.raises(fast_path.NotOnFastPath) as caught:
            shape_from_config(config)
        assert str(caught.value) and "\n" not in str(caught.value), case
