"""Small ONNX test models built with ``onnx.helper``; every builder returns a ``ModelProto``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class GraphBuilder:
    """Append ops one by one; each method returns the name of the tensor it produced."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.inits: list[TensorProto] = []

    def input(self, name: str, shape: tuple[int, ...]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        return name

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, name: str, shape: tuple[int, ...], scale: float = 0.2) -> str:
        return self.const(name, (self.rng.standard_normal(shape) * scale).astype(np.float32))

    def op(self, op_type: str, inputs: list[str], out: str, name: str | None = None, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [out], name or out.removesuffix("_out"), **attrs))
        return out

    def conv(
        self, x: str, name: str, cin: int, cout: int, k: int = 3, group: int = 1, bias: bool = True
    ) -> str:
        w = self.weight(f"{name}.weight", (cout, cin // group, k, k))
        inputs = [x, w] + ([self.weight(f"{name}.bias", (cout,))] if bias else [])
        return self.op("Conv", inputs, f"{name}_out", name, pads=[k // 2] * 4, group=group)

    def gemm(self, x: str, name: str, n_in: int, n_out: int, trans_b: int = 1) -> str:
        w = self.weight(f"{name}.weight", (n_out, n_in) if trans_b else (n_in, n_out))
        b = self.weight(f"{name}.bias", (n_out,))
        return self.op("Gemm", [x, w, b], f"{name}_out", name, transB=trans_b)

    def matmul(self, x: str, name: str, n_in: int, n_out: int) -> str:
        return self.op("MatMul", [x, self.weight(f"{name}.weight", (n_in, n_out))], f"{name}_out", name)

    def add(self, x: str, y: str, name: str) -> str:
        return self.op("Add", [x, y], f"{name}_out", name)

    def act(self, op_type: str, x: str, name: str) -> str:
        return self.op(op_type, [x], f"{name}_out", name)

    def reshape(self, x: str, name: str, shape: tuple[int, ...]) -> str:
        s = self.const(f"{name}.shape", np.asarray(shape, dtype=np.int64))
        return self.op("Reshape", [x, s], f"{name}_out", name)

    def output(self, x: str) -> None:
        self.outputs.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, None))

    def build(self, opset: int = 17) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "test", self.inputs, self.outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 10
        return model


def conv_act_model(
    cin: int = 3, cout: int = 4, group: int = 1, act: str = "Relu", opset: int = 17
) -> onnx.ModelProto:
    """input[1,cin,8,8] -> Conv -> act -> output."""
    g = GraphBuilder()
    x = g.conv(g.input("input", (1, cin, 8, 8)), "conv", cin, cout, group=group)
    g.output(g.act(act, x, "act"))
    return g.build(opset)


def small_net(opset: int = 17) -> onnx.ModelProto:
    """input -> Conv -> Relu -> Reshape -> Gemm(transB=1) -> Add(const) -> output (names as AIMET exports)."""
    g = GraphBuilder()
    x = g.conv(g.input("input", (1, 3, 8, 8)), "conv1", 3, 4)
    x = g.act("Relu", x, "relu1")
    x = g.reshape(x, "flat", (1, 256))
    x = g.gemm(x, "fc", 256, 2)
    g.output(g.add(x, g.weight("addconst", (2,)), "add"))
    return g.build(opset)


def save(model: onnx.ModelProto, folder: Path, name: str = "model.onnx") -> Path:
    path = folder / name
    onnx.save(model, str(path))
    return path
