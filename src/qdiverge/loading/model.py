"""Load an ONNX model safely and give a topological view of its nodes and tensors.

External data must live inside the model's folder: a file naming ``../../etc/passwd`` or an absolute
path is refused before anything is read. ``Constant`` nodes are folded into initializers so that
every engine sees constants in one place.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qdiverge.errors import InputError, UnsupportedError
from qdiverge.fileio import not_found

CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan"})


@dataclass(frozen=True)
class Node:
    """One ONNX node; ``attrs`` holds plain Python values (tensors as numpy arrays)."""

    index: int
    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape and element type of a graph input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype


class Initializers(Mapping[str, np.ndarray]):
    """The graph's initializers as numpy arrays, decoded from the proto when read.

    Small tensors (shapes, scalars, biases) are decoded once and kept; a large weight is decoded on each read
    and not kept, so the model's weights live once (in the proto) instead of twice. Callers that need an
    array repeatedly keep their own reference."""

    def __init__(self, graph: onnx.GraphProto):
        self._tensors = {t.name: t for t in graph.initializer}
        self._small: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._small:
            return self._small[name]
        tensor = self._tensors[name]
        value = numpy_helper.to_array(tensor)
        if value.size <= _SMALL_INITIALIZER:
            self._small[name] = value
        return value

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of initializer ``name``, without decoding it."""
        return tuple(int(d) for d in self._tensors[name].dims)


@dataclass
class Model:
    """A loaded ONNX graph: nodes in topological order plus tensor metadata."""

    path: Path
    proto: onnx.ModelProto
    nodes: list[Node]
    initializers: Initializers
    inputs: dict[str, TensorInfo]
    outputs: list[str]
    shapes: dict[str, tuple[int, ...]]
    producer: dict[str, Node]
    consumers: dict[str, list[Node]]
    opset: int
    sha256: str

    def is_constant(self, name: str) -> bool:
        return name in self.initializers

    def node_by_name(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise InputError(f"{self.path}: no node named {name!r}")

    @property
    def tensor_names(self) -> set[str]:
        names = set(self.inputs) | set(self.initializers)
        for node in self.nodes:
            names.update(o for o in node.outputs if o)
        return names


def _attr_value(attr: onnx.AttributeProto) -> Any:
    if attr.type == onnx.AttributeProto.TENSOR:
        return numpy_helper.to_array(attr.t)
    if attr.type == onnx.AttributeProto.GRAPH:
        return attr.g
    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8") for v in value]
    return value


def _check_external_data(proto: onnx.ModelProto, base: Path, path: Path) -> None:
    """Refuse external data that points outside the model folder (path traversal, absolute paths)."""
    base_resolved = base.resolve()
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        target = (base_resolved / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(base_resolved):
            raise InputError(
                f"{path}: tensor {tensor.name!r} names external data {location!r} outside the model folder;"
                " refusing to read it"
            )
        if not target.is_file():
            raise InputError(
                f"{path}: external data file {location!r} for tensor {tensor.name!r} is missing"
                f" (expected next to the model)"
            )


def _read_proto(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise not_found(path, "model file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, ValueError, ... on garbage
        raise InputError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from exc
    if not proto.graph.node:
        raise InputError(f"{path}: the ONNX graph has no nodes (truncated or not an ONNX model?)")
    _check_external_data(proto, path.parent, path)
    try:
        onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:
        raise InputError(f"{path}: cannot read external data ({exc})") from exc
    return proto


def parse_input_shapes(specs: tuple[str, ...] | list[str]) -> dict[str, tuple[int, ...]]:
    """Parse ``--input-shape name:1,3,224,224`` options."""
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, sep, dims = spec.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shape = tuple(int(d) for d in dims.split(","))
            if any(d <= 0 for d in shape):
                raise ValueError
        except ValueError:
            raise InputError(
                f"--input-shape {spec!r}: expected NAME:D1,D2,... with positive integers"
            ) from None
        shapes[name] = shape
    return shapes


def _fix_input_shapes(
    proto: onnx.ModelProto, path: Path, init_names: set[str], overrides: Mapping[str, tuple[int, ...]]
) -> dict[str, TensorInfo]:
    graph_inputs = [i for i in proto.graph.input if i.name not in init_names]
    known = {i.name for i in graph_inputs}
    for name in overrides:
        if name not in known:
            raise InputError(f"--input-shape names {name!r}, but the model inputs are {sorted(known)}")
    infos: dict[str, TensorInfo] = {}
    for inp in graph_inputs:
        ttype = inp.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type))
        dims = ttype.shape.dim
        if inp.name in overrides:
            shape = overrides[inp.name]
            if len(shape) != len(dims):
                raise InputError(
                    f"--input-shape {inp.name}: {len(shape)} dims given, the model input has {len(dims)}"
                )
            for d, value in zip(dims, shape, strict=True):
                if d.HasField("dim_value") and d.dim_value != value:
                    raise InputError(
                        f"--input-shape {inp.name}: {shape} conflicts with the model's fixed dims"
                        f" {[x.dim_value if x.HasField('dim_value') else '?' for x in dims]}"
                    )
                d.ClearField("dim_param")
                d.dim_value = value
        else:
            if any(not d.HasField("dim_value") or d.dim_value <= 0 for d in dims):
                shown = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
                example = ",".join("1" if not isinstance(s, int) else str(s) for s in shown)
                raise InputError(
                    f"{path}: input {inp.name!r} has dynamic shape {shown}; fix it with"
                    f" --input-shape {inp.name}:{example}"
                )
            shape = tuple(d.dim_value for d in dims)
        infos[inp.name] = TensorInfo(inp.name, shape, dtype)
    return infos


def _fold_constant_nodes(proto: onnx.ModelProto, path: Path) -> None:
    """Turn ``Constant`` nodes into initializers with the same output name."""
    keep = []
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            attrs = {a.name: _attr_value(a) for a in node.attribute}
            if len(attrs) != 1 or "sparse_value" in attrs:
                raise InputError(
                    f"{path}: Constant node {node.name or node.output[0]!r} needs exactly one dense value"
                    f" attribute, has {sorted(attrs) or 'none'}"
                )
            if "value" in attrs:
                value = np.asarray(attrs["value"])
            else:
                key = next(iter(attrs))
                value = np.asarray(attrs[key], dtype=np.float32 if "float" in key else np.int64)
            proto.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        else:
            keep.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)


def _topological(nodes: list[onnx.NodeProto], available: set[str], path: Path) -> list[onnx.NodeProto]:
    ready = set(available)
    ordered: list[onnx.NodeProto] = []
    pending = list(nodes)
    while pending:
        progress = []
        rest = []
        for node in pending:
            if all((not i) or i in ready for i in node.input):
                progress.append(node)
            else:
                rest.append(node)
        if not progress:
            missing = sorted({i for n in rest for i in n.input if i and i not in ready})[:5]
            raise InputError(f"{path}: graph is not a DAG or reads undefined tensors {missing}")
        for node in progress:
            ordered.append(node)
            ready.update(o for o in node.output if o)
        pending = rest
    return ordered


def _check_outputs(proto: onnx.ModelProto, nodes: list[onnx.NodeProto], given: set[str], path: Path) -> None:
    if not proto.graph.output:
        raise InputError(f"{path}: the graph declares no outputs")
    produced = given | {o for n in nodes for o in n.output if o}
    ghosts = [o.name for o in proto.graph.output if o.name not in produced]
    if ghosts:
        raise InputError(f"{path}: graph output(s) {ghosts} are not produced by any node")


_SMALL_INITIALIZER = 1024  # elements: shape tensors and scalars stay in a weightless copy (data propagation)


def weightless(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` for shape and type inference: large initializers become graph inputs of the same type and
    shape, so inference does not copy the weights (twice) and leave their memory fragmented behind."""
    graph = proto.graph
    declared = {i.name for i in graph.input}
    small, large = [], []
    for t in graph.initializer:
        (small if math.prod(t.dims) <= _SMALL_INITIALIZER else large).append(t)
    inputs = list(graph.input) + [
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        for t in large
        if t.name not in declared
    ]
    light = helper.make_model(
        helper.make_graph(
            list(graph.node), graph.name, inputs, list(graph.output), small, value_info=list(graph.value_info)
        ),
        opset_imports=list(proto.opset_import),
        functions=list(proto.functions),
    )
    light.ir_version = proto.ir_version
    return light


def _infer_shapes(proto: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(weightless(proto), data_prop=True)
    except Exception:  # inference is best effort; engines use real array shapes
        return {}
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(d.dim_value for d in dims)
    return shapes


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(path: str | Path, input_shapes: Mapping[str, tuple[int, ...]] | None = None) -> Model:
    """Load ``path`` (with external data from its folder) and build the topological view."""
    path = Path(path)
    return model_from_proto(_read_proto(path), path, input_shapes)


def model_from_proto(
    proto: onnx.ModelProto, path: Path, input_shapes: Mapping[str, tuple[int, ...]] | None = None
) -> Model:
    """Build the topological view of an in-memory ``proto`` (modified in place) read from ``path``."""
    for node in proto.graph.node:
        if node.op_type in CONTROL_FLOW_OPS:
            raise UnsupportedError(
                f"{path}: control-flow op {node.op_type} ({node.name or 'unnamed'}) is not supported"
            )
    _fold_constant_nodes(proto, path)
    initializers = Initializers(proto.graph)
    inputs = _fix_input_shapes(proto, path, set(initializers), input_shapes or {})
    ordered = _topological(list(proto.graph.node), set(inputs) | set(initializers), path)
    _check_outputs(proto, ordered, set(inputs) | set(initializers), path)
    del proto.graph.node[:]
    proto.graph.node.extend(ordered)

    nodes: list[Node] = []
    producer: dict[str, Node] = {}
    consumers: dict[str, list[Node]] = {}
    seen_names: set[str] = set()
    for index, nproto in enumerate(ordered):
        name = nproto.name or f"/{nproto.op_type}_{index}"
        if name in seen_names:
            name = f"{name}_{index}"
        seen_names.add(name)
        node = Node(
            index=index,
            name=name,
            op_type=nproto.op_type,
            domain=nproto.domain,
            inputs=tuple(nproto.input),
            outputs=tuple(nproto.output),
            attrs={a.name: _attr_value(a) for a in nproto.attribute},
        )
        nodes.append(node)
        for out in node.outputs:
            if out:
                producer[out] = node
        for inp in node.inputs:
            if inp:
                consumers.setdefault(inp, []).append(node)

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    shapes = _infer_shapes(proto)
    for info in inputs.values():
        shapes[info.name] = info.shape
    for name in initializers:
        shapes[name] = initializers.shape(name)
    return Model(
        path=path,
        proto=proto,
        nodes=nodes,
        initializers=initializers,
        inputs=inputs,
        outputs=[o.name for o in proto.graph.output],
        shapes=shapes,
        producer=producer,
        consumers=consumers,
        opset=opset,
        sha256=_file_digest(path) if path.is_file() else "",
    )


def rebatch(model: Model, factor: int) -> Model:
    """``model`` with the first dimension of every graph input multiplied by ``factor``.

    Used to run several samples in one call. Nothing here proves the graph is batch-agnostic (a Reshape
    to a constant shape is not); callers compare against per-sample runs before trusting it.
    """
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    graph_inputs = {i.name: i for i in proto.graph.input}
    for name, info in model.inputs.items():
        dims = graph_inputs[name].type.tensor_type.shape.dim
        if not dims:
            raise InputError(f"{model.path}: input {name!r} is a scalar and cannot be batched")
        dims[0].dim_value = info.shape[0] * factor
    for output in proto.graph.output:
        output.type.tensor_type.ClearField("shape")
    del proto.graph.value_info[:]
    return model_from_proto(proto, model.path)
