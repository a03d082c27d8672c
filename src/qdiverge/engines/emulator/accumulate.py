"""Exact integer sums of Conv / Gemm / MatMul on onnxruntime's float32 kernels, one small session per node.

Under ``linear``'s float32 bound every product and partial sum of ``sum (x - z_x)(w - z_w)`` is an integer
below ``2^24``, so MLAS's float32 Conv and GEMM compute it exactly whatever blocking, layout (NCHWc) or
summation order they pick, and they are 10-50x faster than numpy im2col (multi-threaded, no im2col copy).
Padding is with 0 = the zero point, because the session is fed the centred codes ``x - z_x``.

When the requantization is HTP's ``q12_prescaled`` (8-bit outputs, no fused non-linear activation, no
int32 wrap to model) and ``|acc + bias| < 2^24``, the session finishes it in float32. The weights and the bias
are scaled by ``2^-g`` per channel (a power of two: the Conv still sums exactly, now multiples of ``2^-g``),
so the Conv yields ``(acc + bias) * 2^-g`` and ``Floor`` gives ``k``; then ``u = k * 2mq + mq`` and
``QuantizeLinear(u, 2^16, zp)``, which rounds ``u / 2^16`` (never a tie) and saturates. Every value whose
code does not saturate has ``|u| <= 2^24``, where float32 is exact; beyond, float32 rounding is monotone and
keeps ``|u| >= 2^24``, which saturates too. A fused Relu/Clip clamps ``u`` to ``(q - zp) * 2^16`` first.
Otherwise (a larger bias) the session finishes it in float64, where every step is an exact integer operation:
``k = floor((acc + bias) * 2^-g)``, ``t = (2k + 1) * mq`` (below 2^53 once ``k`` is clipped to +-2^30, which
saturates every code anyway), ``y = floor(t * 2^-16 + 1/2)`` (never a tie, so the tie rule cannot matter),
then the zero point, the clamp and a cast to the code type.

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

from qdiverge.engines.base import make_session
from qdiverge.engines.emulator.linear import Epilogue
from qdiverge.engines.emulator.requant import along_axis

# QuantizeLinear output types (opset 21) by code range
_CODE_TYPES = {
    (0, 255): TensorProto.UINT8,
    (-128, 127): TensorProto.INT8,
    (0, 65535): TensorProto.UINT16,
    (-32768, 32767): TensorProto.INT16,
}


# rows (batch items) per session call: at most about this many output elements, so the session's float32
# intermediates (NCHWc copies, products) stay a few MB instead of several times the int64 output
_CHUNK_ELEMENTS = 1 << 20


class OrtSum:
    """``x`` (codes, any integer dtype) -> exact accumulator (float32), or output codes (the narrow
    QuantizeLinear type, e.g. uint8) when ``requantizes``.

    The session is built on the first call, so binding a graph stays cheap. Rows along axis 0 are
    independent (batch items, or Gemm rows) unless ``chunkable`` is False (a transposed Gemm input).
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        x_zero: int,
        feeds: dict[str, np.ndarray],
        requantizes: bool,
        chunkable: bool = True,
    ):
        self.model: onnx.ModelProto | None = model
        self.x_zero = x_zero
        self.feeds = feeds
        self.requantizes = requantizes
        self.chunkable = chunkable
        self._session: Any = None
        self._row_size: dict[tuple[int, ...], int] = {}  # output elements per input row, by row shape

    def codes(self, x: np.ndarray, epilogue: Epilogue, axis: int) -> np.ndarray:
        """Output codes of ``x``: the session's own, or its accumulator finished by ``epilogue`` (channels
        along ``axis``)."""
        y = self(x)
        return y if self.requantizes else epilogue(y, axis=axis)

    def _run(self, x: np.ndarray) -> np.ndarray:
        # one numpy pass from integer codes (faster than an ORT Cast + Sub); exact, codes are below 2^24
        centred = np.subtract(x, self.x_zero, dtype=np.float32)
        return self._session.run(None, {"x": centred, **self.feeds})[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self._session is None:
            assert self.model is not None
            self._session = make_session(self.model, shared_arena=True)
            self.model = None  # the session holds the weights now
        n, key = x.shape[0], x.shape[1:]
        small = n == 1 or self._row_size.get(key, n) * n <= _CHUNK_ELEMENTS
        if not self.chunkable or x.ndim < 2 or small:  # a 1-D MatMul input is one row
            out = self._run(x)
            if self.chunkable and x.ndim >= 2 and n:
                self._row_size[key] = out.size // n
            return out
        rows = max(1, _CHUNK_ELEMENTS // max(self._row_size[key], 1))
        out = None
        for i in range(0, n, rows):
            part = self._run(x[i : i + rows])
            if out is None:
                out = np.empty((n, *part.shape[1:]), dtype=part.dtype)
            out[i : i + rows] = part
        return out


def _code_type(ep: Epilogue) -> int | None:
    """QuantizeLinear output type holding ``[qmin, qmax]`` and the zero point, or None (numpy epilogue)."""
    req = ep.requant
    if not (ep.float_exact and req.multiplier.dtype == np.float32 and req.rounding == "half_even"):
        return None
    for (lo, hi), onnx_type in _CODE_TYPES.items():
        if lo <= ep.qmin <= ep.qmax <= hi and lo <= ep.out_zero_point <= hi:
            return onnx_type
    return None


def _range_type(lo: int, hi: int) -> int | None:
    """The narrowest integer tensor type holding ``[lo, hi]`` (None: wider than 16 bits)."""
    return next((t for (a, b), t in _CODE_TYPES.items() if a <= lo and hi <= b), None)


def _prescaled_type(ep: Epilogue) -> int | None:
    """Output type when the session can finish HTP's ``q12_prescaled`` requantization exactly, else None."""
    req = ep.requant
    exact = (
        req.form == "q12_prescaled"
        and req.rounding in ("half_up", "half_away", "half_even")  # no ties occur: all three agree
        and ep.activation is None
        and not ep.needs_int32
        and not np.any(req.folded_offset)
    )
    return _range_type(ep.qmin, ep.qmax) if exact else None


class _Float64Tail:
    """The float64 end of an accumulator session: ``acc`` (+ int32 bias) -> ops -> clamp -> output codes.

    Every intermediate is an exact float64 value or one IEEE operation the numpy epilogue also performs."""

    def __init__(self, ep: Epilogue, channel_shape: tuple[int, ...]):
        self.ep, self.channel_shape = ep, channel_shape
        self.inits: list[onnx.TensorProto] = []
        self.nodes = [helper.make_node("Cast", ["acc"], ["a"], to=TensorProto.DOUBLE)]
        self.source = "a"
        if np.any(ep.bias):
            self.nodes.append(helper.make_node("Add", ["a", self.const("b64", ep.bias, True)], ["ab"]))
            self.source = "ab"

    def const(self, name: str, value: np.ndarray | float, per_channel: bool = False) -> str:
        arr = np.asarray(value, dtype=np.float64)
        arr = arr.reshape(self.channel_shape) if per_channel and arr.size > 1 else arr.reshape(())
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def finish(self, last: str, code_type: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
        """Clamp ``last`` to ``[qmin, qmax]`` and cast it to the code type as ``y``."""
        bounds = [self.const("qmin", float(self.ep.qmin)), self.const("qmax", float(self.ep.qmax))]
        self.nodes += [
            helper.make_node("Clip", [last, *bounds], ["rc"]),
            helper.make_node("Cast", ["rc"], ["y"], to=code_type),
        ]
        return self.nodes, self.inits


def _prescaled_nodes(
    ep: Epilogue, channel_shape: tuple[int, ...], code_type: int
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """float32 ``acc`` -> codes: ``q12_prescaled`` in exact float64 integer arithmetic (module docstring)."""
    req = ep.requant
    tail = _Float64Tail(ep, channel_shape)
    g = (req.right_shift - req.left_shift).astype(np.float64)
    mq = req.multiplier.astype(np.float64)
    # (2k + 1) * mq / 2^16 + 1/2 + zp  ==  k * (mq / 2^15) + (mq / 2^16 + 1/2 + zp): both terms exact (k * mq
    # < 2^53, 16 fractional bits) while |k| < 2^21; beyond that every code saturates, so rounding cannot matter
    slope = mq * 2.0**-15
    intercept = mq * 2.0**-16 + 0.5 + req.zero_point.astype(np.float64)
    tail.nodes += [
        helper.make_node("Mul", [tail.source, tail.const("step", 2.0**-g, True)], ["s"]),
        helper.make_node("Floor", ["s"], ["k"]),
        helper.make_node("Mul", ["k", tail.const("slope", slope, True)], ["t"]),
        helper.make_node("Add", ["t", tail.const("intercept", intercept, True)], ["u"]),
        helper.make_node("Floor", ["u"], ["r"]),
    ]
    return tail.finish("r", code_type)


def _prescaled_steps(ep: Epilogue) -> np.ndarray | None:
    """Per-channel ``2^-g`` when the session finishes ``q12_prescaled`` in float32 (module docstring)."""
    if _prescaled_type(ep) is None or not ep.float32_sum:
        return None
    return 2.0 ** -(ep.requant.right_shift - ep.requant.left_shift).astype(np.float64)


def _prescaled_f32_nodes(
    ep: Epilogue, channel_shape: tuple[int, ...], code_type: int
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """``(acc + bias) * 2^-g`` (float32) -> codes: ``q12_prescaled`` in float32 (module docstring)."""
    mq = ep.requant.multiplier.astype(np.float32)
    z = ep.out_zero_point

    def const(name: str, value: np.ndarray | float) -> onnx.TensorProto:
        arr = np.asarray(value, dtype=np.float32)
        return numpy_helper.from_array(arr.reshape(channel_shape) if arr.size > 1 else arr.reshape(()), name)

    inits = [const("mq2", 2 * mq), const("mq", mq), const("unit", 2.0**16)]
    inits.append(numpy_helper.from_array(np.asarray(z, helper.tensor_dtype_to_np_dtype(code_type)), "z"))
    nodes = [
        helper.make_node("Floor", ["acc"], ["k"]),
        helper.make_node("Mul", ["k", "mq2"], ["k2"]),
        helper.make_node("Add", ["k2", "mq"], ["u"]),
    ]
    lo, hi = next(r for r, t in _CODE_TYPES.items() if t == code_type)
    source = "u"
    if (ep.qmin, ep.qmax) != (lo, hi):  # a fused Relu/Clip: u at (q - zp) * 2^16 rounds to exactly q
        inits += [const("lo", (ep.qmin - z) * 2.0**16), const("hi", (ep.qmax - z) * 2.0**16)]
        nodes.append(helper.make_node("Clip", ["u", "lo", "hi"], ["uc"]))
        source = "uc"
    nodes.append(helper.make_node("QuantizeLinear", [source, "unit", "z"], ["y"]))
    return nodes, inits


def _hardswish_type(ep: Epilogue) -> int | None:
    """Output type when the session can apply a fused HardSwish exactly as ``Epilogue`` does, else None."""
    exact = (
        ep.activation_op == "HardSwish"
        and ep.act_rounding == "half_even"  # ONNX Round is half to even; the other rules need tie fix-ups
        and not ep.needs_int32
        and not np.any(ep.requant.folded_offset)
    )
    return _range_type(ep.qmin, ep.qmax) if exact else None


def _hardswish_nodes(
    ep: Epilogue, channel_shape: tuple[int, ...], code_type: int
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """float32 ``acc`` -> codes: the fused-HardSwish epilogue, the same float64 operations in the same order
    (``real = (acc + bias) * acc_scale``, ``real * clip(real + 3, 0, 6) / 6``, ``/ s_out``, round half to even,
    ``+ zp``, clamp), so each IEEE result is identical to numpy's."""
    tail = _Float64Tail(ep, channel_shape)
    tail.nodes += [
        helper.make_node("Mul", [tail.source, tail.const("acc_scale", ep.acc_scale, True)], ["v"]),
        helper.make_node("Add", ["v", tail.const("three", 3.0)], ["v3"]),
        helper.make_node("Clip", ["v3", tail.const("zero", 0.0), tail.const("six", 6.0)], ["gate"]),
        helper.make_node("Mul", ["v", "gate"], ["vg"]),
        helper.make_node("Div", ["vg", "six"], ["hs"]),
        helper.make_node("Div", ["hs", tail.const("s_out", ep.out_scale)], ["q"]),
        helper.make_node("Round", ["q"], ["r"]),
        helper.make_node("Add", ["r", tail.const("zp", float(ep.out_zero_point))], ["rz"]),
    ]
    return tail.finish("rz", code_type)


def _session_model(
    node: onnx.NodeProto, inits: list[onnx.TensorProto], ep: Epilogue, channel_shape: tuple[int, ...]
) -> tuple[onnx.ModelProto, dict[str, np.ndarray], bool]:
    """Graph ``x -> node [-> requantization]``; ``node`` reads ``x`` and writes ``acc``.

    ``channel_shape`` is how a per-channel multiplier broadcasts against the accumulator.
    """
    nodes, feeds, out, out_type = [node], {}, "acc", TensorProto.FLOAT
    code_type = _code_type(ep)
    prescaled_type, hardswish_type = _prescaled_type(ep), _hardswish_type(ep)
    if prescaled_type is not None and _prescaled_steps(ep) is not None:
        more_nodes, more_inits = _prescaled_f32_nodes(ep, channel_shape, prescaled_type)
        nodes += more_nodes
        inits += more_inits
        out, out_type = "y", prescaled_type
    elif prescaled_type is not None:
        more_nodes, more_inits = _prescaled_nodes(ep, channel_shape, prescaled_type)
        nodes += more_nodes
        inits += more_inits
        out, out_type = "y", prescaled_type
    elif hardswish_type is not None:
        more_nodes, more_inits = _hardswish_nodes(ep, channel_shape, hardswish_type)
        nodes += more_nodes
        inits += more_inits
        out, out_type = "y", hardswish_type
    elif code_type is not None:
        m = ep.requant.multiplier
        feeds["m"] = m.reshape(channel_shape) if m.size > 1 else m.reshape(())
        z = ep.out_zero_point
        lo, hi = next(r for r, t in _CODE_TYPES.items() if t == code_type)
        acc = "acc"
        if ep.qmin == z > lo:
            # a fused Relu clamps at the zero point: since m > 0, R(acc * m) <= 0 exactly when R(max(acc, 0)
            # * m) = 0, so the clamp can be a Relu on the accumulator, which onnxruntime fuses into the Conv
            nodes.append(helper.make_node("Relu", ["acc"], ["acc_relu"]))
            acc, lo = "acc_relu", z
        nodes.append(helper.make_node("Mul", [acc, "m"], ["scaled"]))
        source = "scaled"
        if (ep.qmin, ep.qmax) != (lo, hi):  # a fused Clip: clamping before rounding to integer bounds
            inits += [
                numpy_helper.from_array(np.float32(ep.qmin - z), "lo"),
                numpy_helper.from_array(np.float32(ep.qmax - z), "hi"),
            ]
            nodes.append(helper.make_node("Clip", ["scaled", "lo", "hi"], ["clipped"]))
            source = "clipped"
        inits += [
            numpy_helper.from_array(np.float32(1.0), "one"),
            numpy_helper.from_array(np.asarray(z, dtype=helper.tensor_dtype_to_np_dtype(code_type)), "z"),
        ]
        nodes.append(helper.make_node("QuantizeLinear", [source, "one", "z"], ["y"]))
        out, out_type = "y", code_type
    graph = helper.make_graph(
        nodes,
        "exact_sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)]
        + [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in feeds.items()],
        [helper.make_tensor_value_info(out, out_type, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    feeds = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feeds.items()}
    return model, feeds, out == "y"


def _scaled_weights_and_bias(
    ep: Epilogue, weights: np.ndarray, axis: int
) -> tuple[np.ndarray, list[onnx.TensorProto]]:
    """(The session's float32 weights, its bias input ``b`` if it adds the bias itself).

    The session adds the int32 bias (exact in float32) when it requantizes; for the float32 ``q12_prescaled``
    tail weights and bias are scaled by ``2^-g`` per output channel along ``axis`` (exact: a power of two).
    """
    channels = weights.shape[axis]
    steps = _prescaled_steps(ep)
    if steps is not None:
        weights = (weights * along_axis(steps, weights.ndim, axis)).astype(np.float32)
    if not np.any(ep.bias) or (steps is None and _code_type(ep) is None):
        return weights, []
    bias = np.broadcast_to(ep.bias, (channels,)) * (1.0 if steps is None else steps)
    return weights, [numpy_helper.from_array(bias.astype(np.float32), "b")]


def conv_sum(attrs: dict[str, Any], weights: np.ndarray, x_zero: int, ep: Epilogue) -> OrtSum:
    """A Conv with ONNX ``attrs`` and centred float32 ``weights`` (M, C/G, *kernel)."""
    weights, bias = _scaled_weights_and_bias(ep, weights, 0)
    inits = [numpy_helper.from_array(weights, "w"), *bias]
    node = helper.make_node("Conv", ["x", "w", "b"][: len(inits) + 1], ["acc"], **attrs)
    channel_shape = (weights.shape[0],) + (1,) * (weights.ndim - 2)
    model, feeds, requantizes = _session_model(node, inits, ep, channel_shape)
    return OrtSum(model, x_zero, feeds, requantizes)


def matmul_sum(weights: np.ndarray, x_zero: int, ep: Epilogue, trans_a: bool | None) -> OrtSum:
    """``x @ weights`` for centred float32 ``weights`` (K, N): a Gemm (2-D ``x``, transposed if
    ``trans_a``), or with ``trans_a=None`` a MatMul (any rank; a bias is a separate Add)."""
    weights, bias = _scaled_weights_and_bias(ep, weights, 1)
    inits = [numpy_helper.from_array(weights, "w"), *bias]
    if trans_a is None:
        node = helper.make_node("MatMul", ["x", "w"], ["acc" if not bias else "acc_nobias"])
    else:
        node = helper.make_node("Gemm", ["x", "w", "b"][: len(inits) + 1], ["acc"], transA=int(trans_a))
    model, feeds, requantizes = _session_model(node, inits, ep, (weights.shape[1],))
    if trans_a is None and bias:
        model.graph.node.insert(1, helper.make_node("Add", ["acc_nobias", "b"], ["acc"]))
    return OrtSum(model, x_zero, feeds, requantizes, chunkable=not trans_a)
