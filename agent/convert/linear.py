"""Emit ``y = x @ W.T`` for a weight in whatever form it has (float, fp16-stored, 4/8-bit blocks).

Speed facts this encodes (onnxruntime 1.32 CPU, measured on a 3072x576 projection, one token):
4-bit ``MatMulNBits`` with uint8 or default zero points runs 2x faster than the fp32 MatMul at
``accuracy_level`` 0 and 5x at level 4 (int8 activations per block). 8-bit weights have a fast
kernel only at level 4 (level 0 falls back to dequantizing the whole matrix on every call, 10x
slower than fp32). Float zero points
(GGUF Q4_1: ``w = d*q + m``) also fall back, so such blocks are split exactly into
``MatMulNBits(q, d, default zero point 8) + blocksum(x) @ (m + 8d).T``: the fast kernel plus a tiny
matmul. The split is centred on purpose: with int8 activations the kernel's error is the sum of
``d*(q - zero point) * error(x)``; a zero point of 0 makes every coefficient the same sign and up to
twice as large, and on SmolLM2 gave 5x the KL divergence from the float model (9.9e-3 against
2.2e-3; llama.cpp, which sums its own int8 blocks, 2.0e-3).

The default levels (``accuracy_level`` None) are therefore 4 for every node but one kind: the
attention's input projection (q, k and v, fused or not) keeps float activations for 4-bit weights
(:data:`EXACT_INPUT_ACCURACY`). That input is the normed hidden state, whose few large channels make
int8 blocks coarse, and the error is amplified by the softmax of q.k. Measured on SmolLM2-135M
(Q4_1, KL divergence from the float model over 714 teacher-forced positions): int8 everywhere
2.2e-3, float activations in q/k/v only 1.2e-3 (in q, k or v alone 1.5-1.9e-3; in the MLP or o_proj
none better than 1.1e-3 and slower), all-float 0.13e-3; llama.cpp 2.0e-3. It costs ~8 % of decode
speed against int8 everywhere; all-float runs at ~60 %.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import numpy as np
from onnx import TensorProto

from agent.convert.graph_builder import MS_DOMAIN, GraphBuilder
from agent.convert.quantize import BlockQuantized, can_concat_rows, concat_rows
from agent.convert.weight_forms import Weight

AccuracyLevel: TypeAlias = "int | Literal['float'] | None"
"""What a converter caller asks for: None, the default per node (below); ``"float"``, float
activations wherever a fast kernel allows (every 4-bit node: exact, slower); or one level for all."""
AUTO_ACCURACY = {4: 4, 8: 4}
"""Default ``accuracy_level`` per weight width: int8 activations (level 4)."""
EXACT_INPUT_ACCURACY = {4: 0, 8: 4}
"""Default for projections whose input needs float activations (the attention's q/k/v); 8-bit
weights still take level 4, their only fast kernel."""


class LinearEmitter:
    """Writes projections into ``g``; ``fp16`` stores float weights as fp16 (cast back in-graph)."""

    def __init__(
        self,
        g: GraphBuilder,
        *,
        fp16: bool = False,
        accuracy_level: int | None = None,
        auto: dict[int, int] = AUTO_ACCURACY,
    ) -> None:
        """``accuracy_level`` forces one level on every node; None takes ``auto[bits]``."""
        self.g, self.fp16, self.accuracy_level, self.auto = g, fp16, accuracy_level, auto
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
        level = self.auto[w.bits] if self.accuracy_level is None else self.accuracy_level
        inputs = [x, qweight or g.initializer(f"{name}.qweight", w.data), g.initializer(f"{name}.scales", w.scales)]
        float_zp = w.zero_point_kind == "float"
        if w.zero_points is not None and not float_zp:
            inputs.append(g.initializer(f"{name}.qzeros", w.zero_points))
        attrs = {"K": w.k, "N": w.n, "bits": w.bits, "block_size": w.block_size, "accuracy_level": level}
        if not float_zp:
            outputs = [output] if output else 1
            return str(
                g.op("MatMulNBits", inputs, name=f"/{name}/MatMulNBits", outputs=outputs, domain=MS_DOMAIN, **attrs)
            )
        y = g.op("MatMulNBits", inputs, name=f"/{name}/MatMulNBits", domain=MS_DOMAIN, **attrs)
        assert w.zero_points is not None
        # No zero-point input: the kernel subtracts the default 2**(bits-1); the rest of each
        # block's float zero point becomes its offset [N, blocks].
        offsets = -((w.zero_points.astype(np.float32) - 2 ** (w.bits - 1)) * w.scales)
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
