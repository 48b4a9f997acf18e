"""File selection per quantization (pure functions, no hub)."""

from __future__ import annotations

import pytest

from agent.variant_files import external_data_files, offered_quantizations, quantization_of, select_files

SUPPORT = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


def test_transformers_js_layout_each_quant_gets_its_graph_data_and_support_files() -> None:
    names = SUPPORT + [
        "README.md", ".gitattributes",
        "onnx/model.onnx", "onnx/model.onnx_data",
        "onnx/model_fp16.onnx",
        "onnx/model_q4.onnx", "onnx/model_q4.onnx_data_1", "onnx/model_q4.onnx_data",
        "onnx/model_q4f16.onnx", "onnx/model_quantized.onnx", "onnx/model_bnb4.onnx",
    ]
    assert select_files(names, "q4") == ["onnx/model_q4.onnx", "onnx/model_q4.onnx_data", "onnx/model_q4.onnx_data_1", *SUPPORT]
    assert select_files(names, "fp32") == ["onnx/model.onnx", "onnx/model.onnx_data", *SUPPORT]
    assert select_files(names, "fp16") == ["onnx/model_fp16.onnx", *SUPPORT]
    assert select_files(names, "q8") == ["onnx/model_quantized.onnx", *SUPPORT]
    assert offered_quantizations(names) == ["q4", "q8", "fp16", "fp32"]


def test_external_data_is_sorted_numerically_and_accepts_dot_data() -> None:
    names = ["onnx/model.onnx", "onnx/model.onnx_data_10", "onnx/model.onnx_data_2", "onnx/model.onnx_data",
             "onnx/model.onnx.data", "onnx/model.onnx_data_x", "onnx/model_q4.onnx_data"]
    assert external_data_files(names, "onnx/model.onnx") == [
        "onnx/model.onnx.data", "onnx/model.onnx_data", "onnx/model.onnx_data_2", "onnx/model.onnx_data_10"
    ]


def test_chat_template_and_fallback_tokenizer_files() -> None:
    names = ["onnx/model_q4.onnx", "config.json", "vocab.json", "merges.txt", "chat_template.jinja", "added_tokens.json"]
    assert select_files(names, "q4") == [
        "onnx/model_q4.onnx", "config.json", "chat_template.jinja", "added_tokens.json", "vocab.json", "merges.txt"
    ]
    # with a tokenizer.json, vocab/merges are not needed
    assert "vocab.json" not in select_files(names + ["tokenizer.json"], "q4")


def test_q8_alternatives_and_root_layout() -> None:
    assert select_files(["onnx/model_int8.onnx", "onnx/model_uint8.onnx"], "q8") == ["onnx/model_int8.onnx"]
    assert select_files(["onnx/model_uint8.onnx"], "q8") == ["onnx/model_uint8.onnx"]
    # optimum exports put model.onnx at the root; onnx/ wins when both exist
    assert select_files(["model.onnx", "model.onnx_data", "config.json"], "fp32") == ["model.onnx", "model.onnx_data", "config.json"]
    assert select_files(["model.onnx", "onnx/model.onnx"], "fp32") == ["onnx/model.onnx"]


def test_not_offered_is_empty_and_bad_quant_raises() -> None:
    assert select_files(["onnx/model.onnx", "config.json"], "q4") == []
    assert offered_quantizations(["config.json", "model.safetensors"]) == []
    with pytest.raises(ValueError, match="invalid quantization"):
        select_files(["onnx/model.onnx"], "int3")


def test_quantization_of() -> None:
    assert quantization_of("onnx/model_q4.onnx") == "q4"
    assert quantization_of("onnx/model_quantized.onnx") == "q8"
    assert quantization_of("model.onnx") == "fp32"
    assert quantization_of("onnx/model_q4f16.onnx") == "q4"  # the q4 of -web repos (rewritten at load)
    assert quantization_of("onnx/model_bnb4.onnx") is None


def test_q4f16_is_the_q4_only_where_there_is_no_model_q4() -> None:
    assert select_files(["onnx/model_q4f16.onnx", "config.json"], "q4") == ["onnx/model_q4f16.onnx", "config.json"]
    assert offered_quantizations(["onnx/model_q4f16.onnx", "onnx/model_fp16.onnx"]) == ["q4", "fp16"]
    assert select_files(["onnx/model_q4f16.onnx", "onnx/model_q4.onnx"], "q4") == ["onnx/model_q4.onnx"]


@pytest.mark.parametrize(
    ("names", "said"),
    [
        (["genai_config.json", "model.onnx", "model.onnx.data"], "onnxruntime-genai layout"),
        (["onnx/decoder_model_merged.onnx", "onnx/decoder_model_merged_quantized.onnx"], "merged decoder (onnx/decoder_model_merged.onnx"),
        (["onnx/model_bnb4.onnx", "config.json"], "bitsandbytes 4-bit"),
        (["onnx/encoder_model.onnx"], "are not decoder files"),
        (["model-Q4_K_M.gguf"], "hflocal import FILE.gguf"),
        (["model.safetensors", "config.json"], "only a safetensors checkpoint"),
        (["README.md"], ""),
    ],
)
def test_a_repo_without_runnable_files_is_told_what_it_has(names: list[str], said: str) -> None:
    from agent.errors import NoOnnxError
    from agent.variant_files import layout_problem

    assert offered_quantizations(names) == []
    found = layout_problem(names)
    assert (said in found) if said else found == ""
    message = str(NoOnnxError("org/name", found))
    assert message.startswith("org/name has no ONNX weights hflocal runs (") and said in message
