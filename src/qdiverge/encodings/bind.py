"""Bind an unbound ``EncodingSet`` to a model: names, param/activation split, channel and block axes.

Axis rules are aimet-onnx's (``quantsim.py::_get_quantization_axes``): Conv weights are per output
channel on axis 0 with blocks along axis 1, ConvTranspose 1/0, Gemm 0/1 with ``transB=1`` else 1/0,
MatMul -1/-2, and 1-D params (bias, norm weights) axis 0. 0.6.1/1.0.0 files do not store the axis,
so it comes from the consuming op; 2.0.0 and QDQ models store it and are checked against the shape.
"""

from __future__ import annotations

import difflib
from dataclasses import replace

import numpy as np
import onnx

from qdiverge.encodings.schema import Encoding, EncodingSet, validate_encoding
from qdiverge.errors import InputError
from qdiverge.loading.model import Model, Node

# input index -> AIMET param type, for ops whose constant inputs aimet-onnx treats as params
PARAM_SLOTS: dict[str, dict[int, str]] = {
    "Conv": {1: "weight", 2: "bias"},
    "ConvTranspose": {1: "weight", 2: "bias"},
    "Gemm": {1: "weight", 2: "bias"},
    "MatMul": {1: "weight"},
    "BatchNormalization": {1: "weight", 2: "bias", 3: "running_mean", 4: "running_var"},
    "InstanceNormalization": {1: "weight", 2: "bias"},
    "LayerNormalization": {1: "weight", 2: "bias"},
    "GroupNormalization": {1: "weight", 2: "bias"},
    "PRelu": {1: "weight"},
    "LSTM": {1: "weight", 2: "recurrent_weight", 3: "bias"},
    "GRU": {1: "weight", 2: "recurrent_weight", 3: "bias"},
    "RNN": {1: "weight", 2: "recurrent_weight", 3: "bias"},
}

# ops whose output lies on the input's grid: aimet-onnx gives them no output quantizer
# (op_outputs_to_ignore plus _is_grid_preserving_op); 2.0.0 exports a copied ("derived") entry
DATA_MOVEMENT_OPS = frozenset(
    {
        "Reshape",
        "Transpose",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Split",
        "Gather",
        "GatherElements",
        "GatherND",
        "Identity",
        "MaxPool",
        "MaxRoiPool",
        "Slice",
        "Pad",
        "Tile",
        "Expand",
        "Compress",
        "DepthToSpace",
        "SpaceToDepth",
        "Dropout",
        "TopK",
        "ReduceMax",
        "ReduceMin",
        "Col2Im",
        "NonZero",
        "Shape",
        "BatchToSpace",
        "SpaceToBatch",
    }
)

GRAPH_CLASSIFIED_VERSIONS = ("2.0.0", "2.1.0", "qdq")
_FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.DOUBLE,
}


def param_slot(model: Model, name: str) -> tuple[Node, str] | None:
    """The first node consuming constant ``name`` as a param, and the param type, if any."""
    if not model.is_constant(name):
        return None
    for node in model.consumers.get(name, []):
        slots = PARAM_SLOTS.get(node.op_type, {})
        for index, inp in enumerate(node.inputs):
            if inp == name and index in slots:
                return node, slots[index]
    return None


def weight_axes(node: Node, rank: int) -> tuple[int, int] | None:
    """(channel axis, block axis) of the weight input of ``node``, non-negative for ``rank``."""
    if node.op_type == "Conv":
        return 0, 1
    if node.op_type == "ConvTranspose":
        return 1, 0
    if node.op_type == "Gemm":
        return (0, 1) if node.attr("transB", 0) else (1, 0)
    if node.op_type == "MatMul" and rank >= 2:
        return rank - 1, rank - 2
    return None


def upstream_encoding(model: Model, encset: EncodingSet, name: str) -> Encoding | None:
    """The encoding ``name`` carries, looking back through data-movement ops (which keep the grid)."""
    while True:
        enc = encset.activations.get(name) or encset.derived.get(name)
        if enc is not None:
            return enc
        producer = model.producer.get(name)
        if producer is None or producer.op_type not in DATA_MOVEMENT_OPS or not producer.inputs:
            return None
        name = producer.inputs[0]


def bind_encodings(encset: EncodingSet, model: Model) -> tuple[EncodingSet, list[str]]:
    """Check ``encset`` against ``model`` and resolve what the file left open; return it and warnings."""
    src = encset.source
    _check_names(encset, model)
    bound = EncodingSet(source=src, version=encset.version, sha256=encset.sha256)
    by_graph = encset.version in GRAPH_CLASSIFIED_VERSIONS
    for name, enc in encset.params.items():
        if not model.is_constant(name):
            raise InputError(
                f"{src}: param encoding {name!r} names a tensor that is not a constant of the model"
            )
        slot = param_slot(model, name)
        target = bound.int32_bias if enc.bitwidth == 32 and slot and slot[1] == "bias" else bound.params
        target[name] = _bind_one(enc, model, True, src)
    for name, enc in encset.activations.items():
        if by_graph and param_slot(model, name):
            bound.params[name] = _bind_one(enc, model, True, src)
        elif by_graph and _is_derived(model, encset, name, enc):
            bound.derived[name] = _bind_one(enc, model, False, src)
        else:
            bound.activations[name] = _bind_one(enc, model, False, src)
    for name, enc in encset.int32_bias.items():
        if not model.is_constant(name):
            raise InputError(f"{src}: int32 (bias) encoding {name!r} names a tensor that is not a constant")
        bound.int32_bias[name] = _bind_one(enc, model, True, src)
    for name, enc in encset.derived.items():
        bound.derived[name] = _bind_one(enc, model, False, src)
    return bound, _missing_warnings(model, bound)


def _check_names(encset: EncodingSet, model: Model) -> None:
    known = model.tensor_names
    unknown = sorted(encset.all_names - known)
    if not unknown:
        return
    shown = ", ".join(repr(n) for n in unknown[:5]) + (
        f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    )
    # a few stray names are likely typos or renames; most names missing means the wrong file
    mostly = len(unknown) > 2 and len(unknown) > len(encset.all_names) / 2
    close = [] if mostly else difflib.get_close_matches(unknown[0], sorted(known), n=1)
    hint = f" (did you mean {close[0]!r} for {unknown[0]!r}?)" if close else ""
    advice = (
        "the encodings belong to another model: give the .encodings exported together with this .onnx"
        if mostly
        else "the encodings probably belong to another model (or to the model before BN folding/export)"
    )
    raise InputError(
        f"{encset.source}: {len(unknown)} encoded tensor(s) are not in the model {model.path}: {shown}{hint};"
        f" {advice}"
    )


def _same_grid(a: Encoding, b: Encoding) -> bool:
    return (
        a.dtype == b.dtype
        and a.bitwidth == b.bitwidth
        and a.signed == b.signed
        and a.scale.shape == b.scale.shape
        and np.array_equal(a.scale, b.scale)
        and np.array_equal(a.offset, b.offset)
    )


def _is_derived(model: Model, encset: EncodingSet, name: str, enc: Encoding) -> bool:
    """A data-movement output whose entry just copies its input's: it had no quantizer in the sim.

    A data-movement output with a *different* encoding had a real quantizer (a config that lists the
    op), so it stays an activation.
    """
    producer = model.producer.get(name)
    if producer is None or producer.op_type not in DATA_MOVEMENT_OPS or not producer.inputs:
        return False
    up = encset.activations.get(producer.inputs[0]) or encset.derived.get(producer.inputs[0])
    return up is not None and _same_grid(up, enc)


def _bind_one(enc: Encoding, model: Model, is_param: bool, src: str) -> Encoding:
    enc = replace(enc, is_param=is_param)
    shape = model.shapes.get(enc.name)
    if not enc.is_float and enc.block_size:
        enc = _bind_blocks(enc, model, shape, src)
    elif not enc.is_float and (enc.scale.size > 1 or enc.axis is not None):
        enc = _bind_channels(enc, model, shape, src)
    validate_encoding(enc, src)
    return enc


def _axes(enc: Encoding, model: Model, rank: int, src: str) -> tuple[int, int | None]:
    if rank == 1:
        return 0, None
    slot = param_slot(model, enc.name)
    axes = weight_axes(slot[0], rank) if slot else None
    if axes is None:
        user = slot[0] if slot else next(iter(model.consumers.get(enc.name, [])), None)
        used = f"consumed by {user.op_type} {user.name!r}" if user else "with no consumer"
        raise InputError(
            f"{src}: {enc.name!r} has {enc.scale.size} per-channel scales but the file gives no axis and"
            f" the tensor ({used}) is not a Conv/ConvTranspose/Gemm/MatMul weight"
        )
    return axes


def _bind_channels(enc: Encoding, model: Model, shape: tuple[int, ...] | None, src: str) -> Encoding:
    if shape is None:
        if enc.axis is None:
            raise InputError(f"{src}: {enc.name!r} has per-channel scales but its shape is unknown")
        return enc
    rank = len(shape)
    axis = enc.axis if enc.axis is not None else _axes(enc, model, rank, src)[0]
    if not -rank <= axis < rank:
        raise InputError(f"{src}: {enc.name!r} axis {axis} is out of range for shape {shape}")
    axis %= rank
    if enc.scale.size == 1 and shape[axis] != 1:  # one scale broadcasts: per-tensor whatever the axis
        return replace(enc, axis=None)
    if enc.scale.size != shape[axis]:
        raise InputError(
            f"{src}: {enc.name!r} has {enc.scale.size} per-channel scales but axis {axis} of its shape"
            f" {shape} has {shape[axis]} channels"
        )
    return replace(enc, axis=axis)


def _bind_blocks(enc: Encoding, model: Model, shape: tuple[int, ...] | None, src: str) -> Encoding:
    """Put blockwise scales in the schema's (C, B) layout with explicit channel and block axes."""
    assert enc.block_size
    if shape is None or len(shape) < 2:
        raise InputError(f"{src}: blockwise encoding {enc.name!r} needs a constant tensor of rank >= 2")
    rank = len(shape)
    c_axis, b_axis = _axes(enc, model, rank, src)
    assert b_axis is not None
    if enc.block_axis is not None and enc.block_axis % rank != b_axis and rank == 2:
        c_axis, b_axis = b_axis, enc.block_axis % rank  # the file's block axis wins for 2-D weights
    elif enc.block_axis is not None and enc.block_axis % rank != b_axis:
        raise InputError(
            f"{src}: {enc.name!r} blocks along axis {enc.block_axis}, but its consumer blocks along {b_axis}"
        )
    if shape[b_axis] % enc.block_size:
        raise InputError(
            f"{src}: {enc.name!r} block_size {enc.block_size} does not divide axis {b_axis} of shape {shape}"
        )
    channels, blocks = shape[c_axis], shape[b_axis] // enc.block_size
    if enc.block_axis is None:  # 1.0.0: flat, (out_channel, block) row-major
        if enc.scale.size != channels * blocks:
            raise InputError(
                f"{src}: {enc.name!r} has {enc.scale.size} block scales; shape {shape} with block_size"
                f" {enc.block_size} needs {channels} channels x {blocks} blocks = {channels * blocks}"
            )
        scale, offset = enc.scale.reshape(channels, blocks), enc.offset.reshape(channels, blocks)
    else:  # 2.0.0 / QDQ: ONNX blocked layout, same rank as the weight
        expected = tuple(channels if i == c_axis else blocks if i == b_axis else 1 for i in range(rank))
        if enc.scale.shape != expected:
            raise InputError(
                f"{src}: {enc.name!r} block scales have shape {enc.scale.shape}; shape {shape} with"
                f" block_size {enc.block_size} on axis {b_axis} needs {expected}"
            )
        scale, offset = (blocked_to_cb(a, c_axis, b_axis) for a in (enc.scale, enc.offset))
    return replace(enc, scale=scale, offset=offset, axis=c_axis, block_axis=b_axis)


def blocked_to_cb(values: np.ndarray, c_axis: int, b_axis: int) -> np.ndarray:
    """ONNX blocked scales (weight rank, other axes 1) -> (C, B)."""
    moved = np.moveaxis(values, (c_axis, b_axis), (0, 1))
    return moved.reshape(moved.shape[0], moved.shape[1])


def cb_to_blocked(values: np.ndarray, c_axis: int, b_axis: int, rank: int) -> np.ndarray:
    """(C, B) scales -> ONNX blocked layout of a rank-``rank`` weight."""
    ordered = values if c_axis < b_axis else values.T
    shape = [1] * rank
    shape[c_axis], shape[b_axis] = values.shape
    return ordered.reshape(shape)


def _float_outputs(model: Model) -> set[str] | None:
    try:
        inferred = onnx.shape_inference.infer_shapes(model.proto)
    except Exception:  # best effort: without types every output counts as float
        return None
    infos = list(inferred.graph.value_info) + list(inferred.graph.output)
    return {vi.name for vi in infos if vi.type.tensor_type.elem_type in _FLOAT_TYPES}


class Unencoded(str):
    """A warning about a compute-op output without an encoding; ``tensor`` names it for callers."""

    tensor: str

    def __new__(cls, tensor: str, node: Node) -> Unencoded:
        text = super().__new__(cls, f"{tensor!r} (output of {node.op_type} {node.name!r}) has no encoding")
        text.tensor = tensor
        return text


def _missing_warnings(model: Model, bound: EncodingSet) -> list[str]:
    """Float outputs of compute ops that have no encoding: a target must calibrate or float them."""
    floats = _float_outputs(model)
    names = bound.all_names
    warnings = []
    for node in model.nodes:
        if node.op_type in DATA_MOVEMENT_OPS:
            continue
        for out in node.outputs:
            if out and out not in names and (floats is None or out in floats):
                warnings.append(Unencoded(out, node))
    return warnings
