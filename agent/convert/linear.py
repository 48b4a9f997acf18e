"""Emit ``y = x @ W.T`` for a weight in whatever form it has (float, fp16-stored, 4/8-bit blocks).

Speed facts this encodes (onnxruntime 1.32 CPU, measured on a 3072x576 projection, one token):
4-bit ``MatMulNBits`` with uint8 or default zero points runs 2x faster than the fp32 MatMul at
``accuracy_level`` 0 and 5x at level 4 (int8 activations per block). 8-bit weights have a fast
kernel only at level 4 (level 0 falls back to dequantizing the whole matrix on every call, 10x
slower than fp32), so by default 8-bit nodes get level 4 and 4-bit nodes level 0. Float zero points
(GGUF Q4_1: ``w = d*q + m``) also fall back, so such blocks are split exactly into
``MatMulNBits(q, d, zero point 0) + blocksum(x) @ m.T``: the fast kernel plus a tiny matmul.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from agent.convert.graph_builder import MS_DOMAIN, GraphBuilder
from agent.convert.quantize import BlockQuantized, can_concat_rows, concat_rows, pack_codes
from agent.convert.weight_forms import Weight

AUTO_ACCURACY = {4: 0, 8: 4}


class LinearEmitter:
    """Writes projections into ``g``; ``fp16`` stores float weights as fp16 (cast back in-graph)."""

    def __init__(self, g: GraphBuilder, *, fp16: bool = False, accuracy_level: int | None = None) -> None:
        self.g, self.fp16, self.accuracy_level = g, fp16, accuracy_level
        self._block_sums: dict[tuple[str, int], str] = {}

    def float_table(self, name: str, w: np.ndarray) -> str:
        """A float initializer that reads as float32 in the graph."""
        if not self.fp16:
            return self.g.initializer(name, np.asarray(w, np.float32))
        init = self.g.initializer(name, np.asarray(w).astype(np.float16))
        return str(self.g.op("Cast", [init], name=f"/{name}/Cast", to=TensorProto.FLOAT))

    def matmul_nbits(
        self, x: str, w: BlockQuantized, name: str, *, qweight: str | None = None, output: str | None = None
    ) -> str:
        """``MatMulNBits`` over ``w``; ``qweight`` reuses an existing code initializer (tied head)."""
        g = self.g
        level = AUTO_ACCURACY[w.bits] if self.accuracy_level is None else self.accuracy_level
        inputs = [x, qweight or g.initializer(f"{name}.qweight", w.data), g.initializer(f"{name}.scales", w.scales)]
        float_zp = w.zero_point_kind == "float"
        if float_zp:
            zeros = pack_codes(np.zeros((w.n, w.blocks), np.uint8), w.bits)
            inputs.append(g.initializer(f"{name}.qzeros", zeros))
        elif w.zero_points is not None:
            inputs.append(g.initializer(f"{name}.qzeros", w.zero_points))
        attrs = {"K": w.k, "N": w.n, "bits": w.bits, "block_size": w.block_size, "accuracy_level": level}
        if not float_zp:
            outputs = [output] if output else 1
            return str(
                g.op("MatMulNBits", inputs, name=f"/{name}/MatMulNBits", outputs=outputs, domain=MS_DOMAIN, **attrs)
            )
        y = g.op("MatMulNBits", inputs, name=f"/{name}/MatMulNBits", domain=MS_DOMAIN, **attrs)
        assert w.zero_points is not None
        offsets = -(w.zero_points.astype(np.float32) * w.scales)  # [N, blocks]: the block's "m"
        corr = g.op(
            "MatMul",
            [self.block_sums(x, w), g.initializer(f"{name}.offsets_t", offsets.T.copy())],
            name=f"/{name}/offsets/MatMul",
        )
        return str(g.op("Add", [y, corr], name=f"/{name}/offsets/Add", outputs=[output] if output else 1))

    def block_sums(self, x: str, w: BlockQuantized) -> str:
        """``x`` summed over each block of K: ``[..., blocks]`` (computed once per input)."""
        key = (x, w.block_size)
        if key not in self._block_sums:
            if w.k % w.block_size:
                raise ValueError("float zero points need K to be a multiple of the block size")
            g = self.g
            blocks = g.op("Reshape", [x, g.const([0, 0, w.blocks, w.block_size])], name="/block_sums/Reshape")
            self._block_sums[key] = str(
                g.op("ReduceSum", [blocks, g.const([-1])], name="/block_sums/ReduceSum", keepdims=0)
            )
        return self._block_sums[key]

    def linear(self, x: str, w: Weight, name: str) -> str:
        if isinstance(w, BlockQuantized):
            return self.matmul_nbits(x, w, name)
        return str(self.g.op("MatMul", [x, self.float_table(f"{name}.weight_t", w.T)], name=f"/{name}/MatMul"))

    def fused(self, x: str, parts: list[Weight], name: str) -> str | list[str]:
        """One projection over row-stacked weights when their layouts allow it, else one per part."""
        floats = [p for p in parts if not isinstance(p, BlockQuantized)]
        if len(floats) == len(parts):
            return self.linear(x, np.concatenate(floats), name)
        blocks = [p for p in parts if isinstance(p, BlockQuantized)]
        if len(blocks) == len(parts) and can_concat_rows(blocks):
            return self.linear(x, concat_rows(blocks), name)
        return [self.linear(x, p, f"{name}.{i}") for i, p in enumerate(parts)]
