"""A tied head that the export kept as a matrix of its own.

optimum folds a tied lm_head back onto the embedding (``MatMul(x, Transpose(embed))``) in its
post-processing, which cannot serialise a graph past 2 GB: exports of ~1B models (and
``hflocal import`` of such a checkpoint) keep the head as a separate, transposed initializer, which
the quantizers then quantize apart from the embedding. The rewrite runs such a graph as the tied
model it is (one table, the embedding's floats quantized once), instead of refusing it ("would drop
lm_head.weight").
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
from onnx import numpy_helper

from agent.convert.fast_cache import FAST_DIR
from agent.convert.fast_path import fast_graph
from tests.convert.hub_exports import NEW_TOKENS, PROMPT
from tests.fakes.decoder import Decoder


def _head_as_its_own_matrix(graph: Path) -> None:
    model = onnx.load(str(graph))
    inits = {i.name: i for i in model.graph.initializer}
    producer = {out: n for n in model.graph.node for out in n.output}
    head = next(n for n in model.graph.node if n.name.startswith("/lm_head/") and n.op_type == "MatMul")
    transpose = producer[head.input[1]]
    assert transpose.op_type == "Transpose" and transpose.input[0] in inits  # the tied form
    matrix = numpy_helper.to_array(inits[transpose.input[0]]).T.copy()
    model.graph.initializer.append(numpy_helper.from_array(matrix, "onnx::MatMul_head"))
    head.input[1] = "onnx::MatMul_head"
    model.graph.node.remove(transpose)
    onnx.save(model, str(graph))


def test_a_tied_head_kept_as_its_own_matrix_is_rewritten_tied(exports: Path, tmp_path: Path) -> None:
    source = exports / "llama" / "repo"
    assert json.loads((source / "config.json").read_text())["tie_word_embeddings"] is True
    repo = tmp_path / "repo"
    shutil.copytree(source, repo, ignore=shutil.ignore_patterns(FAST_DIR, "model_*.onnx*"))
    _head_as_its_own_matrix(repo / "onnx" / "model.onnx")

    fast = fast_graph(repo, repo / "onnx" / "model.onnx", "fp32")
    assert fast.path is not None, fast.reason
    want = json.loads((exports / "llama" / "transformers.json").read_text())
    assert Decoder(repo / "onnx" / "model.onnx").greedy(PROMPT, NEW_TOKENS) == want  # the edit kept the model
    assert Decoder(fast.path).greedy(PROMPT, NEW_TOKENS) == want
    vocab, hidden = (json.loads((repo / "config.json").read_text())[k] for k in ("vocab_size", "hidden_size"))
    tables = [i.name for i in onnx.load(str(fast.path), load_external_data=False).graph.initializer
              if list(i.dims) in ([vocab, hidden], [hidden, vocab])]
    assert len(tables) == 1, tables  # the embedding, read by the head as well: not a second copy
