"""Exact integer sums of Conv / Gemm / MatMul on onnxruntime's float32 kernels, one small session per node.

Under ``linear``'s float32 bound every product and partial sum of ``sum (x - z_x)(w - z_w)`` is an integer
below ``2^24``, so MLAS's float32 Conv and GEMM compute it exactly whatever blocking, layout (NCHWc) or
summation order they pick, and they are 10-50x faster than numpy im2col (multi-threaded, no im2col copy).
Padding is with 0 = the zero point, because the session is fed the centred codes ``x - z_x``.

When the requantization is float32 too (ORT-style targets: float32 multiplier, ties to even, zero point
after, no fused non-linear activation, ``|acc + bias| < 2^24``) the session also does it, as the numpy
epilogue would: the bias in the Conv/Gemm (exact), ``Mul`` by the float32 multiplier (one IEEE rounding),
an optional ``Clip`` for a fused Relu/Clip, then ``QuantizeLinear`` with scale 1 and the output zero point
(``x / 1`` is exact; MLAS clamps to the type range and rounds half to even). The multiplier is fed at run time
so no graph optimizer can fold it into the weights. Otherwise the session returns the float32 accumulator
and the numpy ``Epilogue`` finishes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qdiverge.engines.emulator.linear import Epilogue
from qdiverge.engines.emulator.requant import along_axis

# QuantizeLinear output types (opset 21) by code range
_CODE_TYPES = {
    (0, 255): TensorProto.UINT8,
    (-128, 127): TensorProto.INT8,
    (0, 65535): TensorProto.UINT16,
    (-32768, 32767): TensorProto.INT16,
}


class OrtSum:
    """``x`` (codes) -> exact accumulator (float32), or output codes when ``requantizes``; session built lazily."""

    def __init__(self, model: onnx.ModelProto, x_zero: int, feeds: dict[str, np.ndarray], requantizes: bool):
        self.model = model
        self.x_zero = x_zero
        self.feeds = feeds
        self.requantizes = requantizes
        self._session: Any = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self._session is None:
            from qdiverge.engines.base import make_session  # base imports onnxruntime: only when first run

            self._session = make_session(self.model)
        # one numpy pass from int64 codes (faster than an ORT Cast + Sub); exact, codes are below 2^24
        centred = np.subtract(x, self.x_zero, dtype=np.float32)
        return self._session.run(None, {"x": centred, **self.feeds})[0]


def _code_type(ep: Epilogue) -> int | None:
    """QuantizeLinear output type holding ``[qmin, qmax]`` and the zero point, or None (numpy epilogue)."""
    req = ep.requant
    if not (ep.float_exact and req.multiplier.dtype == np.float32 and req.rounding == "half_even"):
        return None
    for (lo, hi), onnx_type in _CODE_TYPES.items():
        if lo <= ep.qmin <= ep.qmax <= hi and lo <= ep.out_zero_point <= hi:
            return onnx_type
    return None


def _session_model(
    node: onnx.NodeProto, inits: list[onnx.TensorProto], ep: Epilogue, rank: int, axis: int
) -> tuple[onnx.ModelProto, dict[str, np.ndarray], bool]:
    """Graph ``x -> node [-> Mul -> Clip -> QuantizeLinear]``; ``node`` reads ``x`` and writes ``acc``."""
    nodes, feeds, out, out_type = [node], {}, "acc", TensorProto.FLOAT
    code_type = _code_type(ep)
    if code_type is not None:
        m = ep.requant.multiplier
        feeds["m"] = np.ascontiguousarray(along_axis(m, rank, axis)) if m.size > 1 else m.reshape(())
        nodes.append(helper.make_node("Mul", ["acc", "m"], ["scaled"]))
        z = ep.out_zero_point
        lo, hi = next(r for r, t in _CODE_TYPES.items() if t == code_type)
        source = "scaled"
        if (ep.qmin, ep.qmax) != (lo, hi):  # a fused Relu/Clip: clamping before rounding to integer bounds
            inits += [
                numpy_helper.from_array(np.float32(ep.qmin - z), "lo"),
                numpy_helper.from_array(np.float32(ep.qmax - z), "hi"),
            ]
            nodes.append(helper.make_node("Clip", ["scaled", "lo", "hi"], ["clipped"]))
            source = "clipped"
        z_type = helper.tensor_dtype_to_np_dtype(code_type)
        inits += [
            numpy_helper.from_array(np.float32(1.0), "one"),
            numpy_helper.from_array(np.asarray(z, dtype=z_type), "z"),
        ]
        nodes.append(helper.make_node("QuantizeLinear", [source, "one", "z"], ["y"]))
        out, out_type = "y", code_type
    graph = helper.make_graph(
        nodes,
        "exact_sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None] * rank)]
        + [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in feeds.items()],
        [helper.make_tensor_value_info(out, out_type, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model, {k: v.astype(np.float32) for k, v in feeds.items()}, code_type is not None


def _bias_input(ep: Epilogue, requantizes: bool, channels: int) -> np.ndarray | None:
    """The int32 bias as the node's float32 bias input, when the session requantizes (then it is exact)."""
    if not requantizes or not np.any(ep.bias):
        return None
    return np.broadcast_to(ep.bias, (channels,)).astype(np.float32)


def conv_sum(attrs: dict[str, Any], weights: np.ndarray, x_zero: int, ep: Epilogue) -> OrtSum:
    """A Conv with ONNX ``attrs`` and centred float32 ``weights`` (M, C/G, *kernel)."""
    rank = weights.ndim
    requantizes = _code_type(ep) is not None
    bias = _bias_input(ep, requantizes, weights.shape[0])
    inits = [numpy_helper.from_array(weights, "w")]
    inputs = ["x", "w"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "b"))
        inputs.append("b")
    node = helper.make_node("Conv", inputs, ["acc"], **attrs)
    model, feeds, requantizes = _session_model(node, inits, ep, rank, 1)
    return OrtSum(model, x_zero, feeds, requantizes)


def matmul_sum(weights: np.ndarray, x_zero: int, ep: Epilogue, rank: int, trans_a: bool = False) -> OrtSum:
    """``x @ weights`` for centred float32 ``weights`` (K, N); ``x`` of rank ``rank`` (Gemm: 2, may be
    transposed)."""
    requantizes = _code_type(ep) is not None
    bias = _bias_input(ep, requantizes, weights.shape[1])
    inits = [numpy_helper.from_array(weights, "w")]
    if rank == 2:
        inputs = ["x", "w"]
        if bias is not None:
            inits.append(numpy_helper.from_array(bias, "b"))
            inputs.append("b")
        node = helper.make_node("Gemm", inputs, ["acc"], transA=int(trans_a))
    else:
        assert bias is None and not trans_a, "N-D MatMul has no bias and no transpose"
        node = helper.make_node("MatMul", ["x", "w"], ["acc"])
    model, feeds, requantizes = _session_model(node, inits, ep, rank, -1)
    return OrtSum(model, x_zero, feeds, requantizes)
