"""A small ONNX graph writer: nodes by name, initializers inline or streamed to external data.

Large models keep their weights in one ``<file>_data`` file beside the graph (Transformers.js naming).
Tensors are appended to that file as they are created, page-aligned so onnxruntime can mmap them, so a
conversion never holds a second copy of every weight in memory and never hits protobuf's 2 GB limit.

Single-file models are written by :meth:`GraphBuilder.save` without passing the weights through
protobuf (which copies every byte several times: ~10 s for 540 MB): the graph is serialized without
its large initializers, then each is appended as its own ``ModelProto{graph{initializer}}`` record,
which protobuf parsers merge into the same graph (repeated fields of repeated messages concatenate).
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
_DEFERRED_MIN_BYTES = 1 << 16


class GraphBuilder:
    """Collects nodes and initializers; ``op`` returns the output name(s) so code reads like math."""

    def __init__(self, name: str, external_data: Path | None = None, external_location: str | None = None) -> None:
        """``external_data`` is where weight bytes are written now; ``external_location`` is the file
        name the graph records (defaults to that file's name; differs while writing to a temp file)."""
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._deferred: list[tuple[TensorProto, np.ndarray]] = []  # large inline weights, raw_data unset
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._counts: dict[str, int] = {}
        self._consts: dict[tuple[str, bytes, tuple[int, ...]], str] = {}
        self.metadata: dict[str, str] = {}
        """Model metadata (``metadata_props``) written with the graph."""
        self._external_path = external_data
        self._location = external_location or (external_data.name if external_data else "")
        self._external: BinaryIO | None = open(external_data, "wb") if external_data else None

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
        header = TensorProto()
        header.name = name
        header.dims.extend(array.shape)
        header.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        if self._external is None:
            if array.nbytes >= _DEFERRED_MIN_BYTES:
                self._deferred.append((header, array))
            else:
                self.initializers.append(numpy_helper.from_array(array, name))
            return name
        if array.nbytes < _EXTERNAL_MIN_BYTES:
            self.initializers.append(numpy_helper.from_array(array, name))
            return name
        f = self._external
        offset = f.tell()
        pad = -offset % _ALIGN
        if pad:
            f.write(b"\0" * pad)
            offset += pad
        f.write(array.data)
        header.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self._location), ("offset", offset), ("length", array.nbytes)):
            entry = header.external_data.add()
            entry.key, entry.value = key, str(value)
        self.initializers.append(header)
        return name

    def const(self, array: Any, dtype: Any = np.int64) -> str:
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

    def _model(self, initializers: list[TensorProto], producer: str) -> onnx.ModelProto:
        if self._external is not None:
            self._external.close()
            self._external = None
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, initializer=initializers)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
            producer_name=producer,
        )
        model.ir_version = IR_VERSION
        if self.metadata:
            helper.set_model_props(model, self.metadata)
        return model

    def model(self, producer: str = "hflocal") -> onnx.ModelProto:
        """The finished model as one proto (copies every weight; :meth:`save` does not)."""
        deferred = [numpy_helper.from_array(a, h.name) for h, a in self._deferred]
        return self._model(self.initializers + deferred, producer)

    def save(self, path: Path, producer: str = "hflocal") -> None:
        """Write the finished model to ``path`` (external data, if any, is already written)."""
        model = self._model(self.initializers, producer)
        with open(path, "wb") as f:
            f.write(model.SerializeToString())
            for header, array in self._deferred:
                tensor_head = header.SerializeToString() + _tag(9) + _varint(array.nbytes)  # raw_data
                tensor_len = len(tensor_head) + array.nbytes
                initializer = _tag(5) + _varint(tensor_len)  # GraphProto.initializer
                f.write(_tag(7) + _varint(len(initializer) + tensor_len))  # ModelProto.graph
                f.write(initializer + tensor_head)
                f.write(array.data)

    def abort(self) -> None:
        """Close and delete a half-written external data file."""
        if self._external is not None:
            self._external.close()
            self._external = None
        if self._external_path is not None and self._external_path.exists():
            os.unlink(self._external_path)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _tag(field: int) -> bytes:
    """Key of a length-delimited protobuf field."""
    return _varint(field << 3 | 2)
