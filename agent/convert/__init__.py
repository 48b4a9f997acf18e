"""Converters that write ONNX decoder graphs ourselves (no torch): a Llama graph builder and a GGUF importer."""
