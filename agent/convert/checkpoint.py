"""Export a Hugging Face checkpoint folder (``config.json`` + safetensors) to an onnx-community repo.

``export_checkpoint`` is what ``hflocal import DIR`` runs for a checkpoint. The export itself needs
the ``convert`` extra (optimum-onnx, transformers, torch 2.13.0) and runs **in a child process**
(``python -m agent.convert.checkpoint``): torch never enters the worker, the export's peak memory
(~3 GB for a 135M model, FACTS §2) is returned to the system when it ends, and a crash in the
exporter fails the import instead of the worker.

What the child writes into ``dest``:

- ``onnx/model.onnx`` (fp32): optimum's ``text-generation-with-past`` export, the optimum I/O
  contract the engine reads (``input_ids, attention_mask, position_ids, past_key_values.N.*`` →
  ``logits, present.N.*``);
- ``onnx/model_quantized.onnx`` (q8): weight-only 8-bit ``MatMulNBits`` (symmetric, block 32);
  never dynamic activation quantization, which ruins small models (FACTS §3);
- ``onnx/model_q4.onnx`` (q4): 4-bit ``MatMulNBits`` (asymmetric, block 32);
- ``onnx/model_fp16.onnx`` (fp16): onnxruntime's float16 converter with float32 inputs/outputs;
- the config, generation config, tokenizer and chat-template files (optimum's, else the source's).

A tied lm_head is exported by optimum as ``MatMul(x, Transpose(embed))``; the quantizers leave it in
float (it shares the embedding's bytes, and a float head keeps greedy answers intact, FACTS §3).
Graphs over ~1.8 GB keep their weights in ``<file>_data`` beside them (the protobuf limit is 2 GB).
For a checkpoint that large (as float32) optimum's post-processing, which folds the tied head back
onto the embedding, cannot serialise the graph and fails; it is skipped there, and the head stays a
separate (transposed) initializer that the quantizers quantize like any other matrix.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from agent.convert.weight_forms import QUANT_FILES
from agent.variant_files import FALLBACK_TOKENIZER_FILES, SUPPORT_FILES

Progress = Callable[[str, int, int], None]

COPIED_FILES = (*SUPPORT_FILES, *FALLBACK_TOKENIZER_FILES, "tokenizer.model")
"""Files the engine (or Transformers.js) reads beside the graph, copied from the source when the
export did not write them."""
EXTERNAL_DATA_ABOVE = 1_800_000_000
BLOCK_SIZE = 32


class CheckpointExportError(RuntimeError):
    """The export failed; ``code`` is the import error code (``unsupported`` or ``internal``)."""

    def __init__(self, message: str, code: str = "internal") -> None:
        super().__init__(message)
        self.code = code


def export_checkpoint(source: Path, dest: Path, quants: Sequence[str], report: Progress) -> None:
    """Export ``source`` into the repo folder ``dest`` with one graph per quantization in ``quants``.

    Blocks until the child process ends; ``report(stage, done, total)`` is called from this thread
    with stages ``export`` then one per derived quantization (``fp16``, ``q8``, ``q4``). Raises
    ``CheckpointExportError`` with the child's reason (the last lines of its log for a crash).
    """
    unknown = [q for q in quants if q not in QUANT_FILES]
    if unknown:
        raise ValueError(f"unknown quantization {unknown[0]!r}: use one of {', '.join(QUANT_FILES)}")
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "agent.convert.checkpoint", str(source), str(dest)]
    for q in quants:
        cmd += ["--quant", q]
    # Offline on purpose: the source is a local folder and nothing may reach for the Hub.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        assert proc.stdout is not None
        failure: dict[str, Any] | None = None
        for line in proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "error" in message:
                failure = message
            elif "stage" in message:
                report(str(message["stage"]), int(message["done"]), int(message["total"]))
        status = proc.wait()
        if failure is not None:
            raise CheckpointExportError(str(failure["error"]), str(failure.get("code", "internal")))
        if status != 0:
            log.seek(0)
            tail = " | ".join(line.strip() for line in log.read().splitlines()[-5:] if line.strip())
            raise CheckpointExportError(f"the checkpoint export exited with status {status}: {tail}")


# --------------------------------------------------------------------------- the child process


def _copy_support_files(source: Path, exported: Path, dest: Path) -> None:
    for name in COPIED_FILES:
        for origin in (exported / name, source / name):
            if origin.is_file():
                shutil.copy2(origin, dest / name)
                break


def _initializer_bytes(model: Any) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def _save(model: Any, path: Path) -> None:
    """Write ``model`` at ``path``; weights go to ``<file>_data`` when a single file could not hold them."""
    import onnx

    for stale in path.parent.glob(path.name + "_data*"):
        stale.unlink()
    if _initializer_bytes(model) > EXTERNAL_DATA_ABOVE:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + "_data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


def _quantize(fp32: Path, bits: int, out: Path) -> None:
    """Weight-only ``MatMulNBits`` (8-bit symmetric or 4-bit asymmetric, block 32); activations stay float."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32)), bits=bits, block_size=BLOCK_SIZE, is_symmetric=bits == 8)
    quantizer.process()
    _save(quantizer.model.model, out)


def _to_fp16(fp32: Path, out: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    _save(model, out)


def _check_source(source: Path) -> None:
    config_path = source / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointExportError(f"{config_path} cannot be read: {exc}", "unsupported") from None
    if not isinstance(config, dict) or not config.get("model_type"):
        raise CheckpointExportError(f"{config_path} has no model_type", "unsupported")


def fp32_bytes(source: Path) -> int:
    """The checkpoint's weights as float32 (what the export writes), from its safetensors headers."""
    total = 0
    for path in source.glob("*.safetensors"):
        try:
            with path.open("rb") as f:
                size = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(size)) if 0 < size <= 100_000_000 else {}
        except (OSError, ValueError):
            continue  # unreadable here: the export names the file
        for name, tensor in header.items() if isinstance(header, dict) else ():
            if name != "__metadata__" and isinstance(tensor, dict):
                total += 4 * math.prod(int(d) for d in tensor.get("shape", []))
    return total


def _export(source: Path, dest: Path, quants: Sequence[str], report: Progress) -> None:
    """The export proper; imports torch/optimum (only ever in the child process)."""
    import logging
    import warnings

    _check_source(source)
    warnings.simplefilter("ignore")  # tracer and deprecation chatter from torch/transformers
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    report("export", 0, 1)
    from optimum.exporters.onnx import main_export

    onnx_dir = dest / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=dest) as tmp:
        exported = Path(tmp)
        try:
            main_export(str(source), output=exported, task="text-generation-with-past", device="cpu",
                        do_validation=False, local_files_only=True,
                        no_post_process=fp32_bytes(source) > EXTERNAL_DATA_ABOVE)
        except (ValueError, KeyError, NotImplementedError) as exc:
            reason = str(exc).strip().split("\n\n")[0]  # the cause, without transformers' upgrade advice
            raise CheckpointExportError(f"optimum cannot export {source.name}: {reason}", "unsupported") from None
        graph = exported / "model.onnx"
        if not graph.is_file():
            raise CheckpointExportError(f"optimum wrote no model.onnx for {source.name}")
        for item in exported.iterdir():
            if item.name == "model.onnx" or item.name.startswith("model.onnx_data"):
                shutil.move(str(item), onnx_dir / item.name)
        _copy_support_files(source, exported, dest)
    report("export", 1, 1)
    fp32 = onnx_dir / QUANT_FILES["fp32"]
    for quant in dict.fromkeys(quants):
        if quant == "fp32":
            continue
        report(quant, 0, 1)
        if quant == "fp16":
            _to_fp16(fp32, onnx_dir / QUANT_FILES["fp16"])
        else:
            _quantize(fp32, 8 if quant == "q8" else 4, onnx_dir / QUANT_FILES[quant])
        report(quant, 1, 1)
    if "fp32" not in quants:
        for item in onnx_dir.glob("model.onnx*"):
            item.unlink()


def _emit(out: IO[str], payload: dict[str, Any]) -> None:
    out.write(json.dumps(payload) + "\n")
    out.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.convert.checkpoint", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--quant", action="append", choices=list(QUANT_FILES), required=True)
    args = parser.parse_args(argv)
    # Progress goes to the real stdout; everything the libraries print goes to stderr (the log).
    progress_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def report(stage: str, done: int, total: int) -> None:
        _emit(progress_out, {"stage": stage, "done": done, "total": total})

    try:
        _export(args.source, args.dest, args.quant, report)
    except CheckpointExportError as exc:
        _emit(progress_out, {"error": str(exc), "code": exc.code})
        return 1
    except MemoryError:
        _emit(progress_out, {"error": "the export ran out of memory", "code": "internal"})
        return 1
    except Exception as exc:  # the parent turns this into import.failed
        import traceback

        traceback.print_exc()
        _emit(progress_out, {"error": f"{type(exc).__name__}: {exc}", "code": "internal"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
