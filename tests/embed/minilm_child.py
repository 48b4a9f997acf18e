"""Child process of ``test_real_model``: export all-MiniLM-L6-v2 to ONNX and compute its reference.

``python -m tests.embed.minilm_child SOURCE DEST TEXTS.json`` writes DEST (the Hub repo: the
package's sentence-transformers files, ``onnx/model.onnx`` from optimum's ``feature-extraction``
export and a dynamic-int8 ``onnx/model_quantized.onnx``) and ``DEST/../reference.npy``: the model
card's PyTorch recipe (transformers' BertModel, mean pooling over the mask, L2 normalisation, at
most 256 tokens) for the texts. torch and its warnings stay in this process.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np

REPO_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
              "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
              "1_Pooling/config.json", "README.md")


def export_repo(source: Path, dest: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from optimum.exporters.onnx import main_export

    exported = dest.parent / "exported"
    main_export(str(source), output=exported, task="feature-extraction", device="cpu", do_validation=False,
                local_files_only=True)
    for rel in REPO_FILES:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / rel, dest / rel)
    (dest / "onnx").mkdir()
    shutil.move(exported / "model.onnx", dest / "onnx" / "model.onnx")
    quantize_dynamic(str(dest / "onnx" / "model.onnx"), str(dest / "onnx" / "model_quantized.onnx"),
                     weight_type=QuantType.QInt8, per_channel=True)


def card_reference(source: Path, texts: list[str], max_length: int = 256) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    model = AutoModel.from_pretrained(str(source)).eval()
    rows = []
    for text in texts:  # one at a time: no padding in the reference
        batch = tokenizer([text], truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            states = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        rows.append(torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()[0])
    return np.stack(rows)


def main() -> None:
    source, dest, texts_file = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    warnings.simplefilter("ignore")  # tracer and deprecation chatter from torch/transformers
    logging.getLogger().setLevel(logging.ERROR)
    export_repo(source, dest)
    np.save(dest.parent / "reference.npy", card_reference(source, json.loads(texts_file.read_text())))


if __name__ == "__main__":
    main()
