"""Tiny QDQ ONNX graphs for probes: integer-code inputs, chosen encodings, integer-code outputs.

Inputs are graph inputs of an integer dtype feeding a ``DequantizeLinear``, so the backend sees exactly the
codes the probe chose. Outputs are ``QuantizeLinear`` outputs, so the probe reads exactly the codes the
backend wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import onnx
from onnx import helper, numpy_helper

DTYPES = {"uint8": np.uint8, "int8": np.int8, "uint16": np.uint16, "int16": np.int16, "int32": np.int32}


@dataclass(frozen=True)
class QParams:
    """ONNX quantization ``real = (code - zero_point) * scale``; arrays are per channel along ``axis``."""

    scale: float | tuple[float, ...]
    zero_point: int | tuple[int, ...] = 0
    dtype: str = "uint8"
    axis: int = 1

    @property
    def scales(self) -> np.ndarray:
        return np.atleast_1d(np.asarray(self.scale, dtype=np.float32))

    @property
    def zero_points(self) -> np.ndarray:
        return np.atleast_1d(np.asarray(self.zero_point, dtype=np.int64))

    @property
    def qmin(self) -> int:
        return int(np.iinfo(DTYPES[self.dtype]).min)

    @property
    def qmax(self) -> int:
        return int(np.iinfo(DTYPES[self.dtype]).max)

    def fractions(self) -> list[Fraction]:
        """The float32 scales as exact rationals."""
        return [Fraction(float(s)) for s in self.scales]

    def tensors(self, prefix: str) -> list[onnx.TensorProto]:
        per_channel = np.ndim(self.scale) > 0
        scale = self.scales if per_channel else self.scales[0]
        zp = self.zero_points.astype(DTYPES[self.dtype])
        return [
            numpy_helper.from_array(np.asarray(scale, np.float32), prefix + "_scale"),
            numpy_helper.from_array(zp if per_channel else zp[0], prefix + "_zp"),
        ]


class QdqGraph:
    """Builder for a one- or two-op QDQ model."""

    def __init__(self, name: str = "probe"):
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []

    def _qparams(self, prefix: str, qp: QParams) -> list[str]:
        self.inits.extend(qp.tensors(prefix))
        return [prefix + "_scale", prefix + "_zp"]

    def _dq(self, codes: str, qp: QParams, out: str) -> str:
        attrs = {"axis": qp.axis} if np.ndim(qp.scale) > 0 else {}
        self.nodes.append(
            helper.make_node("DequantizeLinear", [codes, *self._qparams(codes, qp)], [out], **attrs)
        )
        return out

    def code_input(self, name: str, shape: tuple[int, ...], qp: QParams) -> str:
        """A graph input of integer codes; returns the float tensor its ``DequantizeLinear`` produces."""
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(DTYPES[qp.dtype]))
        self.inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        return self._dq(name, qp, name + "_f")

    def float_input(self, name: str, shape: tuple[int, ...]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(shape)))
        return name

    def const(self, name: str, codes: np.ndarray, qp: QParams) -> str:
        """A constant of integer codes (weights, bias) behind a ``DequantizeLinear``."""
        self.inits.append(numpy_helper.from_array(np.asarray(codes, DTYPES[qp.dtype]), name))
        return self._dq(name, qp, name + "_f")

    def op(self, op_type: str, inputs: list[str], out: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def requant(self, tensor: str, qp: QParams) -> str:
        """Q then DQ on ``tensor`` (an intermediate encoding); returns the dequantized tensor."""
        codes = self.quantize(tensor, qp)
        return self._dq(codes, qp, tensor + "_qdq")

    def quantize(self, tensor: str, qp: QParams) -> str:
        out = tensor + "_q"
        attrs = {"axis": qp.axis} if np.ndim(qp.scale) > 0 else {}
        self.nodes.append(
            helper.make_node("QuantizeLinear", [tensor, *self._qparams(out, qp)], [out], **attrs)
        )
        return out

    def output(self, tensor: str, qp: QParams) -> str:
        """Quantize ``tensor`` and make its codes a graph output; returns the output name."""
        codes = self.quantize(tensor, qp)
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(DTYPES[qp.dtype]))
        self.outputs.append(helper.make_tensor_value_info(codes, elem, None))
        return codes

    def model(self, opset: int = 21) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 10
        return model
