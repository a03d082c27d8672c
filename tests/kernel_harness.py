"""Shared test scaffolding for emulator kernels: encodings, bindings, profiles, single-node ORT oracles."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np
import onnxruntime as ort
from onnx import helper, numpy_helper

from qdiverge.encodings.schema import Encoding, make_encoding
from qdiverge.engines.emulator.fixed_point import quantize_multiplier
from qdiverge.engines.emulator.registry import Binding, lookup
from qdiverge.loading.model import Node
from qdiverge.profiles.schema import LutSpec, Profile, RequantSpec

ORT_SPEC = RequantSpec(multiplier="float32", rounding="half_even", scale_precision="float32")
# ONNX Runtime's integer contrib kernels, as profile data (float32 scales, RNE, float LUTs)
ORT_PROFILE = Profile(
    name="ort-test",
    eltwise=ORT_SPEC,
    rescale=ORT_SPEC,
    eltwise_method="float",
    concat_method="lut",
    pool_method="float",
    lut=LutSpec(ops=("Sigmoid", "LeakyRelu"), rounding="half_even", compute="float32"),
)
TFLITE_SPEC = RequantSpec(multiplier="q31", rounding="half_away", double_rounding=True)
TFLITE_PROFILE = Profile(name="tflite-test", eltwise=TFLITE_SPEC, rescale=TFLITE_SPEC, pool_method="tflite")
SINGLE_SPEC = RequantSpec(multiplier="q31", rounding="half_up")
SINGLE_PROFILE = Profile(name="single-test", eltwise=SINGLE_SPEC, rescale=SINGLE_SPEC)


def enc(scale: float, zero_point: int, bits: int = 8, signed: bool = False, name: str = "t") -> Encoding:
    """Per-tensor encoding from ONNX-style (scale, zero point in the storage domain); scale made float32."""
    qmin = -(1 << (bits - 1)) if signed else 0
    return make_encoding(name, bits, float(np.float32(scale)), qmin - zero_point, signed=signed)


def s_z(e: Encoding) -> tuple[Fraction, int]:
    return Fraction(float(e.scale[0])), int(e.zero_point[0])


def bind(
    op: str,
    ins: Sequence[Encoding | None],
    outs: Sequence[Encoding | None],
    profile: Profile,
    attrs: dict[str, Any] | None = None,
    constants: Sequence[np.ndarray | None] | None = None,
    shapes: Sequence[tuple[int, ...] | None] | None = None,
    param_encodings: Sequence[Encoding | None] | None = None,
    n_outputs: int = 1,
) -> Binding:
    n = len(ins)
    node = Node(
        0,
        "n0",
        op,
        "",
        tuple(f"i{k}" for k in range(n)),
        tuple(f"o{k}" for k in range(n_outputs)),
        attrs or {},
    )
    return Binding(
        node=node,
        input_encodings=list(ins),
        output_encodings=list(outs),
        constants=list(constants) if constants is not None else [None] * n,
        param_encodings=list(param_encodings) if param_encodings is not None else [None] * n,
        input_shapes=list(shapes) if shapes is not None else [None] * n,
        profile=profile,
    )


def run_kernel(b: Binding, *inputs: np.ndarray) -> Any:
    k = lookup(b.node.op_type)
    assert k is not None, b.node.op_type
    return k.run(k.prepare(b), *(np.asarray(x, dtype=np.int64) if x is not None else None for x in inputs))


def q31(m: float, cap_shift: bool = False) -> tuple[int, int]:
    """``(qm, shift)`` of one real multiplier, ``m ~= qm * 2^(shift - 31)`` (``quantize_multiplier``)."""
    qm, shift = quantize_multiplier(np.array([m]), cap_shift=cap_shift)
    return int(qm[0]), int(shift[0])


def round_fraction(v: Fraction, rounding: str) -> int:
    """Exact rounding of a rational with a named tie rule (the independent oracle)."""
    f = v.numerator // v.denominator
    rem = v - f
    if rounding == "floor":
        return f
    if rounding == "trunc":
        return f + (1 if rem and v < 0 else 0)
    if rem > Fraction(1, 2):
        return f + 1
    if rem < Fraction(1, 2):
        return f
    return {"half_up": f + 1, "half_away": f + (1 if v > 0 else 0), "half_even": f + (f & 1)}[rounding]


def ort_run(
    op_type: str,
    inputs: Sequence[tuple[str, np.ndarray] | None],
    attrs: dict[str, Any] | None = None,
    domain: str = "com.microsoft",
    n_outputs: int = 1,
    out_dtype: np.dtype | None = None,
) -> list[np.ndarray]:
    """Run one node; inputs are (name, array); scalars become initializers, the rest graph inputs."""
    graph_inputs, inits, names = [], [], []
    for item in inputs:
        if item is None:
            names.append("")
            continue
        name, arr = item
        names.append(name)
        if arr.ndim == 0 or name.endswith(("_scale", "_zero_point", "_const")):
            inits.append(numpy_helper.from_array(np.asarray(arr), name))
        else:
            elem = helper.np_dtype_to_tensor_dtype(arr.dtype)
            graph_inputs.append(helper.make_tensor_value_info(name, elem, list(arr.shape)))
    outs = [f"y{k}" for k in range(n_outputs)]
    node = helper.make_node(op_type, names, outs, domain=domain, **(attrs or {}))
    first = next(a for i in inputs if i is not None for n, a in [i] if n in {g.name for g in graph_inputs})
    elem_out = helper.np_dtype_to_tensor_dtype(np.dtype(out_dtype or first.dtype))
    graph = helper.make_graph(
        [node],
        "g",
        graph_inputs,
        [helper.make_tensor_value_info(o, elem_out, None) for o in outs],
        initializer=inits,
    )
    opsets = [helper.make_opsetid("", 17)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {n: a for n, a in (i for i in inputs if i is not None) if n in {g.name for g in graph_inputs}}
    return sess.run(None, feeds)


def qparams(prefix: str, e: Encoding) -> list[tuple[str, np.ndarray]]:
    """ORT (scale, zero_point) initializers for an encoding."""
    return [
        (f"{prefix}_scale", np.array(float(e.scale[0]), dtype=np.float32)),
        (f"{prefix}_zero_point", np.array(int(e.zero_point[0]), dtype=e.storage_dtype)),
    ]
