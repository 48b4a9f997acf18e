"""Write Llama-family decoder graphs as ONNX ourselves (numpy + onnx.helper, no torch).

Public API:
- ``llama_graph.write_llama_onnx(shape, weights, repo_dir, quant, ..., fused=False) -> Path`` and
  ``build_llama_model(...) -> onnx.ModelProto``: the optimum / Transformers.js I/O contract. ``fused``
  writes onnxruntime's contrib kernels (``attention.FusedAttention``: GroupQueryAttention with rotary;
  SkipSimplifiedLayerNormalization) and a ``logits_to_keep`` input that defaults to all positions;
  same cache contract, same greedy tokens, ~2x faster on CPU. A quantized lm_head recomputes its
  top-16 logits exactly (``RESCORE_TOP_K``). GGUF imports write the fused layout by default.
- ``llama_shape.LlamaShape`` / ``RopeScaling``: the hyper-parameters.
- ``weight_forms``: ``QUANT_FILES`` (quant -> ``onnx/model*.onnx`` name), how weights are stored per
  quantization, ``effective_weights`` (the float weights a quantized file computes with).
- ``gguf_import.import_gguf(path, out_dir, quants, progress) -> ImportResult`` and
  ``inspect_gguf(path) -> GGUFSummary``; ``UnsupportedModelError`` for what cannot be converted.
- ``repo_files``: config/tokenizer JSON files as transformers writes them.
- ``fast_path.fast_graph(folder, graph, quant)``: the fused rewrite of a Hub export (optimum /
  Transformers.js graph) of a Llama, Mistral, Qwen2 or Qwen3 model, cached beside the download
  (``fast_cache``); ``onnx_weights`` reads such an export's weights back by module name.

Only ``fast_path`` (and what it imports, all torch-free) is used on the serving path, at a model's
first load; import the submodules directly.
"""
