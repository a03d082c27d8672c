"""Constants and static computations: what a converter settles once, at conversion time.

A node is static when every input is a constant (an initializer, or the output of another static node)
or, for ``Shape``/``Size``, a tensor whose shape is known. Converters fold such nodes (shape arithmetic
such as Shape -> Cast -> Concat, a Reshape of a constant bias) into constant tensors, so the emulator
evaluates them once at bind time, exactly, on onnxruntime. A folded shape tensor can make shapes
inferable downstream (a Reshape to a computed shape), so shapes are inferred again after folding.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qdiverge.encodings.schema import Encoding, EncodingSet, encoding_from_range
from qdiverge.engines.base import make_session
from qdiverge.engines.emulator.requant import quantize_float
from qdiverge.loading.model import Model, Node, _infer_shapes
from qdiverge.quant import dequantize

SHAPE_OPS = frozenset({"Shape", "Size"})  # read only the shape of their input
_NEVER_FOLDED = frozenset({"If", "Loop", "Scan"})  # subgraphs: left to the run time


def subgraph_model(
    model: Model,
    nodes: Iterable[Node],
    inputs: Mapping[str, int],
    outputs: Iterable[str],
    constants: Mapping[str, np.ndarray],
) -> onnx.ModelProto:
    """``nodes`` of ``model`` alone: graph ``inputs`` (name -> ONNX element type), ``constants`` as
    initializers (only those the nodes read), ``outputs`` of unknown shape."""
    wanted = {tuple(n.outputs) for n in nodes}
    protos = [p for p in model.proto.graph.node if tuple(p.output) in wanted]
    used = {i for p in protos for i in p.input if i} - set(inputs)
    inits = [numpy_helper.from_array(np.asarray(constants[n]), n) for n in sorted(used & set(constants))]
    graph = helper.make_graph(
        protos,
        "subgraph",
        [helper.make_tensor_value_info(n, t, None) for n, t in inputs.items()],
        [onnx.ValueInfoProto(name=o) for o in outputs],
        inits,
    )
    out = helper.make_model(graph, opset_imports=list(model.proto.opset_import))
    out.ir_version = model.proto.ir_version
    return out


@dataclass(frozen=True)
class Folded:
    """Values of the static node outputs, the folded node indices, and shapes inferred after folding."""

    values: dict[str, np.ndarray]
    nodes: frozenset[int]
    shapes: dict[str, tuple[int, ...]]


def _is_static(node: Node, known: set[str], shapes: Mapping[str, tuple[int, ...]]) -> bool:
    inputs = [i for i in node.inputs if i]
    if not inputs or node.domain not in ("", "ai.onnx") or node.op_type in _NEVER_FOLDED:
        return False
    if node.op_type.startswith("Random"):
        return False  # not a function of its inputs
    if node.op_type in SHAPE_OPS:
        return inputs[0] in known or shapes.get(inputs[0]) is not None
    return all(i in known for i in inputs)


def _evaluate(
    model: Model,
    nodes: list[Node],
    types: Mapping[str, int],
    constants: Mapping[str, np.ndarray],
    shapes: Mapping[str, tuple[int, ...]],
) -> dict[str, np.ndarray]:
    """Run ``nodes`` once; a shape-only input is fed as zeros of its known shape."""
    produced = {o for n in nodes for o in n.outputs if o}
    feeds = {
        i: np.zeros(shapes[i], dtype=helper.tensor_dtype_to_np_dtype(types.get(i, onnx.TensorProto.FLOAT)))
        for n in nodes
        for i in n.inputs
        if i and i not in produced and i not in constants
    }
    outputs = [o for n in nodes for o in n.outputs if o]
    proto = subgraph_model(
        model,
        nodes,
        {n: helper.np_dtype_to_tensor_dtype(a.dtype) for n, a in feeds.items()},
        outputs,
        constants,
    )
    results = make_session(proto, threads=1, optimize=False).run(outputs, feeds)
    return {name: np.asarray(value) for name, value in zip(outputs, results, strict=True)}


def _reinfer(model: Model, values: Mapping[str, np.ndarray], folded: set[int]) -> dict[str, tuple[int, ...]]:
    """Shapes of the graph with the folded outputs as initializers (their producers removed)."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    graph = proto.graph
    folded_outputs = {o for n in model.nodes if n.index in folded for o in n.outputs}
    kept = [p for p in graph.node if not set(p.output) & folded_outputs]
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(numpy_helper.from_array(v, n) for n, v in values.items())
    del graph.value_info[:]
    return _infer_shapes(proto)


def fold_static(model: Model, types: Mapping[str, int], constant: Callable[[str], np.ndarray]) -> Folded:
    """Fold every static node of ``model``; ``constant(name)`` is an initializer's value as the target
    holds it (fake-quantized when it has an encoding)."""
    values: dict[str, np.ndarray] = {}
    folded: set[int] = set()
    shapes = dict(model.shapes)
    while True:
        known = set(model.initializers) | set(values)
        batch = []
        for node in model.nodes:
            if node.index not in folded and _is_static(node, known, shapes):
                batch.append(node)
                known.update(o for o in node.outputs if o)
        if not batch:
            break
        reads = {i for n in batch for i in n.inputs if i in model.initializers}
        consts = {**{n: constant(n) for n in reads}, **values}
        values.update(_evaluate(model, batch, types, consts, shapes))
        folded.update(n.index for n in batch)
        unknown = any(o and o not in shapes for n in model.nodes if n.index not in folded for o in n.outputs)
        if unknown:
            shapes = {**shapes, **_reinfer(model, values, folded)}
    shapes.update({n: tuple(v.shape) for n, v in values.items()})
    return Folded(values, frozenset(folded), shapes)


def _value_range(value: np.ndarray) -> tuple[float, float]:
    return (float(value.min()), float(value.max())) if value.size else (0.0, 0.0)


def static_encoding(name: str, value: np.ndarray) -> Encoding:
    """The encoding a converter gives a static float tensor the export left un-quantized: 8-bit, over its
    value range widened to include 0 (``encoding_from_range``, QNN's ``tf`` scheme)."""
    return encoding_from_range(name, *_value_range(value), 8)


class Constants:
    """Constant tensors as the target holds them: initializers plus folded static tensors, each with its
    integer encoding (the export's; the target's for a folded tensor, set in ``target`` once resolved;
    or one ``derive``d for a float constant the export left un-quantized)."""

    def __init__(self, model: Model, encodings: EncodingSet, weight_rounding: str, types: Mapping[str, int]):
        self.model = model
        self.encodings = encodings
        self.rounding = weight_rounding
        # folded tensors first, then the initializers (decoded from the model when read, not copied here)
        self.values: ChainMap[str, np.ndarray] = ChainMap({}, model.initializers)  # type: ignore[arg-type]
        self.derived: dict[str, Encoding] = {}
        self.target: Mapping[str, Encoding | None] = {}
        folded = fold_static(model, types, self.held)
        self.values.maps[0].update(folded.values)
        self.folded_nodes = folded.nodes
        self.shapes = folded.shapes

    def encoding(self, name: str) -> Encoding | None:
        """The integer encoding of constant ``name`` (``None`` for a non-constant or a float one)."""
        if name not in self.values:
            return None
        enc = self.encodings.get(name) or self.target.get(name) or self.derived.get(name)
        return None if enc is None or enc.is_float else enc

    def codes(self, name: str) -> np.ndarray:
        """Codes on its encoding when it has one, else the raw array (shapes, indices, float values)."""
        value, enc = self.values[name], self.encoding(name)
        if enc is None or not np.issubdtype(value.dtype, np.floating):
            return value
        return quantize_float(value, enc, self.rounding)

    def held(self, name: str) -> np.ndarray:
        """The real value the target holds: on its encoding's grid when it has one."""
        value, enc = self.values[name], self.encoding(name)
        if enc is None or not np.issubdtype(value.dtype, np.floating):
            return value
        return dequantize(self.codes(name), enc).astype(value.dtype)

    def derive(self, names: Iterable[str]) -> list[str]:
        """Give the float initializers among ``names`` that lack an encoding a ``static_encoding``; returns
        the names that use one (flagged by the caller: the converter chose it, not the export)."""
        used = []
        for name in names:
            value = self.model.initializers.get(name)
            if value is None or not np.issubdtype(value.dtype, np.floating):
                continue
            if name in self.derived or self.encoding(name) is None:
                self.derived.setdefault(name, static_encoding(name, value))
                used.append(name)
        return used
