"""A small ONNX graph writer: nodes by name, initializers inline or streamed to external data.

Large models keep their weights in one ``<file>_data`` file beside the graph (Transformers.js naming).
Tensors are appended to that file as they are created, page-aligned so onnxruntime can mmap them, so a
conversion never holds a second copy of every weight in memory and never hits protobuf's 2 GB limit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17  # ai.onnx; every op used exists there and in onnxruntime >= 1.20
MS_DOMAIN = "com.microsoft"
IR_VERSION = 9
_ALIGN = 4096
_EXTERNAL_MIN_BYTES = 1024


class GraphBuilder:
    """Collects nodes and initializers; ``op`` returns the output name(s) so code reads like math."""

    def __init__(self, name: str, external_data: Path | None = None, external_location: str | None = None) -> None:
        """``external_data`` is where weight bytes are written now; ``external_location`` is the file
        name the graph records (defaults to that file's name; differs while writing to a temp file)."""
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._counts: dict[str, int] = {}
        self._consts: dict[tuple[str, bytes, tuple[int, ...]], str] = {}
        self._external_path = external_data
        self._location = external_location or (external_data.name if external_data else "")
        self._external: BinaryIO | None = open(external_data, "wb") if external_data else None  # noqa: SIM115

    def _unique(self, base: str) -> str:
        n = self._counts.get(base, 0)
        self._counts[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def op(
        self,
        op_type: str,
        inputs: list[str],
        *,
        name: str,
        outputs: int | list[str] = 1,
        domain: str = "",
        **attrs: Any,
    ) -> Any:
        """Add a node named ``name``; returns its single output name, or a list if several."""
        node_name = self._unique(name)
        if isinstance(outputs, int):
            out_names = [f"{node_name}/out{i}" if outputs > 1 else f"{node_name}/output" for i in range(outputs)]
        else:
            out_names = outputs
        self.nodes.append(helper.make_node(op_type, inputs, out_names, name=node_name, domain=domain or None, **attrs))
        return out_names[0] if len(out_names) == 1 else out_names

    def initializer(self, name: str, array: np.ndarray) -> str:
        """Add a weight; large ones go to the external data file when this graph has one."""
        array = np.ascontiguousarray(array)
        if self._external is None or array.nbytes < _EXTERNAL_MIN_BYTES:
            self.initializers.append(numpy_helper.from_array(array, name))
            return name
        f = self._external
        offset = f.tell()
        pad = -offset % _ALIGN
        if pad:
            f.write(b"\0" * pad)
            offset += pad
        f.write(array.tobytes())
        t = TensorProto()
        t.name = name
        t.dims.extend(array.shape)
        t.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self._location), ("offset", offset), ("length", array.nbytes)):
            entry = t.external_data.add()
            entry.key, entry.value = key, str(value)
        self.initializers.append(t)
        return name

    def const(self, array: np.ndarray | list[int] | list[float], dtype: Any = np.int64) -> str:
        """A small constant, shared between identical uses."""
        arr = np.asarray(array, dtype=dtype)
        key = (arr.dtype.str, arr.tobytes(), arr.shape)
        if key not in self._consts:
            self._consts[key] = self.initializer(self._unique("const"), arr)
        return self._consts[key]

    def add_input(self, name: str, elem_type: int, shape: list[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def add_output(self, name: str, elem_type: int, shape: list[int | str]) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    def model(self, producer: str = "hflocal") -> onnx.ModelProto:
        """The finished model; closes the external data file."""
        if self._external is not None:
            self._external.close()
            self._external = None
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, initializer=self.initializers)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
            producer_name=producer,
        )
        model.ir_version = IR_VERSION
        return model

    def abort(self) -> None:
        """Close and delete a half-written external data file."""
        if self._external is not None:
            self._external.close()
            self._external = None
        if self._external_path is not None and self._external_path.exists():
            os.unlink(self._external_path)
