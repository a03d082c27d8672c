"""Exact integer sums of Conv / Gemm / MatMul on onnxruntime's float32 kernels, one small session per node.

Under ``linear``'s float32 bound every product and partial sum of ``sum (x - z_x)(w - z_w)`` is an integer
below ``2^24``, so MLAS's float32 Conv and GEMM compute it exactly whatever blocking, layout (NCHWc) or
summation order they pick, and they are 10-50x faster than numpy im2col (multi-threaded, no im2col copy).
Padding is with 0 = the zero point, because the session centres the codes ``x - z_x`` itself
(``DequantizeLinear`` with scale 1). Pointwise convs skip the NCHWc rewrite (one GEMM, no reorders).

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
so no graph optimizer can fold it into the weights. A fused HardSwish is computed in the profile's LUT
precision with the same operations as the numpy epilogue (its scale fed at run time for the same reason).
Otherwise the session returns the float32 accumulator and the numpy ``Epilogue`` finishes.

With the ``fast`` extra, the float32 tails (prescaled, multiplier, HardSwish) run instead as one ``compiled``
pass over the session's accumulator, the same operations in the same order (``CompiledTail``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qdiverge.engines.base import make_session
from qdiverge.engines.emulator import compiled
from qdiverge.engines.emulator.code_tables import code_dtype
from qdiverge.engines.emulator.linear import Epilogue
from qdiverge.engines.emulator.requant import along_axis

# QuantizeLinear output types (opset 21) by code range
_CODE_TYPES = {
    (0, 255): TensorProto.UINT8,
    (-128, 127): TensorProto.INT8,
    (0, 65535): TensorProto.UINT16,
    (-32768, 32767): TensorProto.INT16,
}


# rows (batch items) per session call: at most about this many output elements (or one row), so the session's
# float32 intermediates (NCHWc copies, products) stay cache-sized and the shared arena small; measured on the
# MobileNetV3-Large benchmark at batch 8: 2^18 is both faster and ~60 MB smaller than 2^20 or whole batches
_CHUNK_ELEMENTS = 1 << 18


@dataclass(frozen=True)
class CompiledTail:
    """A requantization tail run by ``compiled`` on the session's float32 accumulator: the same operations as
    the session tail it replaces (``kind``: prescaled | float | hardswish), in one pass."""

    kind: str
    params: tuple[Any, ...]  # per-channel float32 arrays of shape (C,), then float32 scalars
    out_dtype: Any
    channel_last: bool  # Gemm / MatMul: channels on the last axis; Conv: axis 1

    def __call__(self, acc: np.ndarray) -> np.ndarray:
        channels = self.params[0].size
        view = acc.reshape(-1, channels, 1) if self.channel_last else acc.reshape(*acc.shape[:2], -1)
        return compiled.requant_tail(self.kind, view, self.params, self.out_dtype).reshape(acc.shape)


class OrtSum:
    """``x`` (codes, any integer dtype) -> exact accumulator (float32), or output codes (the narrow
    QuantizeLinear type, e.g. uint8) when ``requantizes``. The session takes the codes in their narrowest
    type and centres them itself (``DequantizeLinear`` with scale 1: ``x - z_x``, exact).

    The session is built on the first call, so binding a graph stays cheap. Rows along axis 0 are
    independent (batch items, or Gemm rows) unless ``chunkable`` is False (a transposed Gemm input).
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        feeds: dict[str, np.ndarray],
        requantizes: bool,
        chunkable: bool = True,
        tail: CompiledTail | None = None,
        layout: bool = True,
    ):
        self.model: onnx.ModelProto | None = model
        self.x_dtype = helper.tensor_dtype_to_np_dtype(model.graph.input[0].type.tensor_type.elem_type)
        self.feeds = feeds
        self.requantizes = requantizes or tail is not None
        self.chunkable = chunkable
        self.tail = tail  # finishes the session's accumulator in one compiled pass
        self.layout = layout  # False: no NCHWc rewrite (a pointwise conv is one GEMM without reorders)
        self._session: Any = None
        self._row_size: dict[tuple[int, ...], int] = {}  # output elements per input row, by row shape

    def codes(self, x: np.ndarray, epilogue: Epilogue, axis: int) -> np.ndarray:
        """Output codes of ``x``: the session's own, or its accumulator finished by ``epilogue`` (channels
        along ``axis``)."""
        y = self(x)
        return y if self.requantizes else epilogue(y, axis=axis)

    def _run(self, x: np.ndarray) -> np.ndarray:
        y = self._session.run(None, {"xq": x.astype(self.x_dtype, copy=False), **self.feeds})[0]
        return y if self.tail is None else self.tail(y)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self._session is None:
            assert self.model is not None
            self._session = make_session(self.model, shared_arena=True, layout=self.layout)
            self.model = None  # the session holds the weights now
        n, key = x.shape[0], x.shape[1:]
        if not self.chunkable or x.ndim < 2 or n <= 1:  # a 1-D MatMul input is one row
            return self._run(x)
        start, out = 0, None
        if key not in self._row_size:
            # one row first: its size sets the chunk, so that no call (not even the first run's, which sizes
            # the shared arena for good) holds more than about _CHUNK_ELEMENTS outputs
            first = self._run(x[:1])
            self._row_size[key] = max(first.size, 1)
            out = np.empty((n, *first.shape[1:]), dtype=first.dtype)
            out[:1] = first
            start = 1
        rows = max(1, _CHUNK_ELEMENTS // self._row_size[key])
        if out is None and rows >= n:
            return self._run(x)
        for i in range(start, n, rows):
            part = self._run(x[i : i + rows])
            if out is None:
                out = np.empty((n, *part.shape[1:]), dtype=part.dtype)
            out[i : i + rows] = part
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
    dtype = np.dtype(code_dtype(lo, hi))
    return helper.np_dtype_to_tensor_dtype(dtype) if dtype.itemsize <= 2 else None


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


class _FloatTail:
    """The float end of an accumulator session: ``acc`` (+ int32 bias) -> ops -> clamp -> output codes.

    float64: the accumulator is cast and the bias added here, both exact. float32: the node already added the
    bias (exact under ``Epilogue.float32_sum``). Every intermediate is then an exact value or one IEEE
    operation the numpy epilogue also performs, in the same precision."""

    def __init__(self, ep: Epilogue, channel_shape: tuple[int, ...], dtype: type = np.float64):
        self.ep, self.channel_shape, self.dtype = ep, channel_shape, dtype
        self.inits: list[onnx.TensorProto] = []
        self.feeds: dict[str, np.ndarray] = {}  # constants fed at run time: no optimizer folds them
        self.nodes: list[onnx.NodeProto] = []
        self.source = "acc"
        if dtype is np.float64:
            self.nodes.append(helper.make_node("Cast", ["acc"], ["a"], to=TensorProto.DOUBLE))
            self.source = "a"
            if np.any(ep.bias):
                self.nodes.append(helper.make_node("Add", ["a", self.const("b64", ep.bias, True)], ["ab"]))
                self.source = "ab"

    def const(
        self, name: str, value: np.ndarray | float, per_channel: bool = False, fed: bool = False
    ) -> str:
        """A constant input; ``fed``: a run-time input instead, so that onnxruntime cannot fold a Mul right
        after the Conv into its weights (ConvMulFusion, which would round the products)."""
        arr = np.asarray(value, dtype=np.float64).astype(self.dtype)
        arr = arr.reshape(self.channel_shape) if per_channel and arr.size > 1 else arr.reshape(())
        if fed:
            self.feeds[name] = arr
        else:
            self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def finish(self, last: str, code_type: int) -> _FloatTail:
        """Clamp ``last`` (an integer value) to ``[qmin, qmax]`` and cast it to the code type as ``y``."""
        bounds = [self.const("qmin", float(self.ep.qmin)), self.const("qmax", float(self.ep.qmax))]
        self.nodes += [
            helper.make_node("Clip", [last, *bounds], ["rc"]),
            helper.make_node("Cast", ["rc"], ["y"], to=code_type),
        ]
        return self

    def round_and_finish(self, q: str, code_type: int) -> _FloatTail:
        """``clamp(RNE(q) + zp)`` as ``y``: one ``QuantizeLinear`` (scale 1) when the clamp is the code type's
        own saturation and ``q`` is float32, else ``Round``, ``Add``, ``finish``."""
        z = self.ep.out_zero_point
        if self.dtype is np.float32 and _CODE_TYPES.get((self.ep.qmin, self.ep.qmax)) == code_type:
            zero = np.asarray(z, dtype=helper.tensor_dtype_to_np_dtype(code_type))
            self.inits.append(numpy_helper.from_array(zero, "zp"))
            self.nodes.append(helper.make_node("QuantizeLinear", [q, self.const("one", 1.0), "zp"], ["y"]))
            return self
        self.nodes += [
            helper.make_node("Round", [q], ["r"]),
            helper.make_node("Add", ["r", self.const("zp", float(z))], ["rz"]),
        ]
        return self.finish("rz", code_type)


def _prescaled_nodes(ep: Epilogue, channel_shape: tuple[int, ...], code_type: int) -> _FloatTail:
    """float32 ``acc`` -> codes: ``q12_prescaled`` in exact float64 integer arithmetic (module docstring)."""
    req = ep.requant
    tail = _FloatTail(ep, channel_shape)
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


def _prescaled_f32_nodes(ep: Epilogue, channel_shape: tuple[int, ...], code_type: int) -> _FloatTail:
    """``(acc + bias) * 2^-g`` (float32) -> codes: ``q12_prescaled`` in float32 (module docstring)."""
    tail = _FloatTail(ep, channel_shape, np.float32)
    mq = ep.requant.multiplier.astype(np.float64)
    z = ep.out_zero_point
    tail.nodes += [
        helper.make_node("Floor", ["acc"], ["k"]),
        helper.make_node("Mul", ["k", tail.const("mq2", 2 * mq, True)], ["k2"]),
        helper.make_node("Add", ["k2", tail.const("mq", mq, True)], ["u"]),
    ]
    lo, hi = next(r for r, t in _CODE_TYPES.items() if t == code_type)
    source = "u"
    if (ep.qmin, ep.qmax) != (lo, hi):  # a fused Relu/Clip: u at (q - zp) * 2^16 rounds to exactly q
        bounds = [tail.const("lo", (ep.qmin - z) * 2.0**16), tail.const("hi", (ep.qmax - z) * 2.0**16)]
        tail.nodes.append(helper.make_node("Clip", ["u", *bounds], ["uc"]))
        source = "uc"
    zero = numpy_helper.from_array(np.asarray(z, helper.tensor_dtype_to_np_dtype(code_type)), "z")
    tail.inits.append(zero)
    tail.nodes.append(helper.make_node("QuantizeLinear", [source, tail.const("unit", 2.0**16), "z"], ["y"]))
    return tail


def _hardswish_type(ep: Epilogue) -> int | None:
    """Output type when the session can apply a fused HardSwish exactly as ``Epilogue`` does, else None."""
    exact = (
        ep.activation_op == "HardSwish"
        and ep.act_rounding == "half_even"  # ONNX Round is half to even; the other rules need tie fix-ups
        and not ep.needs_int32
        and not np.any(ep.requant.folded_offset)
        and (ep.act_dtype is np.float64 or ep.float32_sum)  # float32: acc + bias must be exact there
    )
    return _range_type(ep.qmin, ep.qmax) if exact else None


def _hardswish_nodes(ep: Epilogue, channel_shape: tuple[int, ...], code_type: int) -> _FloatTail:
    """float32 ``acc`` -> codes: the fused-HardSwish epilogue, the same operations in the same order and
    precision (``real = (acc + bias) * acc_scale``, ``real * clip(real + 3, 0, 6) / 6``, ``/ s_out``, round
    half to even, ``+ zp``, clamp), so each IEEE result is identical to numpy's."""
    tail = _FloatTail(ep, channel_shape, ep.act_dtype)
    tail.nodes += [
        helper.make_node("Mul", [tail.source, tail.const("acc_scale", ep.acc_scale, True, fed=True)], ["v"]),
        helper.make_node("Add", ["v", tail.const("three", 3.0)], ["v3"]),
        helper.make_node("Clip", ["v3", tail.const("zero", 0.0), tail.const("six", 6.0)], ["gate"]),
        helper.make_node("Mul", ["v", "gate"], ["vg"]),
        helper.make_node("Div", ["vg", "six"], ["hs"]),
        helper.make_node("Div", ["hs", tail.const("s_out", ep.out_scale)], ["q"]),
    ]
    return tail.round_and_finish("q", code_type)


def _compiled_tail(ep: Epilogue, channels: int, channel_last: bool) -> CompiledTail | None:
    """The session tail as one ``compiled`` pass, when numba is in use and the tail has a compiled form."""
    if not compiled.enabled():
        return None
    f32 = np.float32

    def per_channel(values: np.ndarray) -> np.ndarray:
        return np.broadcast_to(np.asarray(values, dtype=np.float64).reshape(-1), (channels,)).astype(f32)

    last = (f32(ep.out_zero_point), f32(ep.qmin), f32(ep.qmax))
    if _prescaled_steps(ep) is not None:
        mq = ep.requant.multiplier.astype(np.float64)
        kind, params, code_type = (
            "prescaled",
            (per_channel(2 * mq), per_channel(mq), *last),
            _prescaled_type(ep),
        )
    elif _hardswish_type(ep) is not None and ep.act_dtype is np.float32:
        params = (per_channel(ep.acc_scale), f32(ep.out_scale), *last)
        kind, code_type = "hardswish", _hardswish_type(ep)
    elif _code_type(ep) is not None:
        kind, params, code_type = "float", (per_channel(ep.requant.multiplier), *last), _code_type(ep)
    else:
        return None
    assert code_type is not None
    return CompiledTail(kind, params, helper.tensor_dtype_to_np_dtype(code_type), channel_last)


def _bias_in_node(ep: Epilogue) -> bool:
    """Whether the Conv/Gemm node adds the int32 bias (float32, exact) rather than the tail or numpy."""
    if _prescaled_steps(ep) is not None or _code_type(ep) is not None:
        return True
    return _hardswish_type(ep) is not None and ep.act_dtype is np.float32


def _centring(
    x_zero: int, x_range: tuple[int, int]
) -> tuple[int, list[onnx.NodeProto], list[onnx.TensorProto]]:
    """(Input type, nodes, constants) turning codes ``xq`` in ``x_range`` into the centred float32 ``x``.

    8/16-bit codes: ``DequantizeLinear`` with scale 1 (one pass, exact); wider: ``Cast`` and ``Sub`` (exact
    below 2^24, which the accumulation bound guarantees)."""
    x_type = _range_type(*x_range)
    if x_type is not None:
        zero = numpy_helper.from_array(np.asarray(x_zero, helper.tensor_dtype_to_np_dtype(x_type)), "xz")
        one = numpy_helper.from_array(np.float32(1.0), "xs")
        return x_type, [helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["x"])], [one, zero]
    nodes = [
        helper.make_node("Cast", ["xq"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["xf", "xz"], ["x"]),
    ]
    return TensorProto.INT32, nodes, [numpy_helper.from_array(np.float32(x_zero), "xz")]


def _multiplier_nodes(ep: Epilogue, channel_shape: tuple[int, ...], code_type: int) -> _FloatTail:
    """float32 ``acc + bias`` -> codes as the float32-multiplier epilogue: ``acc * m`` (one IEEE rounding), an
    optional clamp, then ``QuantizeLinear`` with scale 1 and the zero point (rounds half to even, saturates)."""
    tail = _FloatTail(ep, channel_shape, np.float32)
    z = ep.out_zero_point
    lo, hi = next(r for r, t in _CODE_TYPES.items() if t == code_type)
    acc = "acc"
    if ep.qmin == z > lo:
        # a fused Relu clamps at the zero point: since m > 0, R(acc * m) <= 0 exactly when R(max(acc, 0)
        # * m) = 0, so the clamp can be a Relu on the accumulator, which onnxruntime fuses into the Conv
        tail.nodes.append(helper.make_node("Relu", ["acc"], ["acc_relu"]))
        acc, lo = "acc_relu", z
    multiplier = tail.const("m", ep.requant.multiplier, per_channel=True, fed=True)
    tail.nodes.append(helper.make_node("Mul", [acc, multiplier], ["scaled"]))
    source = "scaled"
    if (ep.qmin, ep.qmax) != (lo, hi):  # a fused Clip: clamping before rounding to integer bounds
        bounds = [tail.const("lo", ep.qmin - z), tail.const("hi", ep.qmax - z)]
        tail.nodes.append(helper.make_node("Clip", ["scaled", *bounds], ["clipped"]))
        source = "clipped"
    tail.inits.append(numpy_helper.from_array(np.asarray(z, helper.tensor_dtype_to_np_dtype(code_type)), "z"))
    tail.nodes.append(helper.make_node("QuantizeLinear", [source, tail.const("one", 1.0), "z"], ["y"]))
    return tail


def _session_tail(ep: Epilogue, channel_shape: tuple[int, ...]) -> tuple[_FloatTail, int] | None:
    """The requantization the session performs itself and its output type; None: it returns the accumulator."""
    prescaled_type = _prescaled_type(ep)
    if prescaled_type is not None:
        build = _prescaled_f32_nodes if _prescaled_steps(ep) is not None else _prescaled_nodes
        return build(ep, channel_shape, prescaled_type), prescaled_type
    hardswish_type = _hardswish_type(ep)
    if hardswish_type is not None:
        return _hardswish_nodes(ep, channel_shape, hardswish_type), hardswish_type
    code_type = _code_type(ep)
    if code_type is not None:
        return _multiplier_nodes(ep, channel_shape, code_type), code_type
    return None


def _session_model(
    node: onnx.NodeProto,
    inits: list[onnx.TensorProto],
    ep: Epilogue,
    channel_shape: tuple[int, ...],
    x_zero: int,
    x_range: tuple[int, int],
    compiled_tail: CompiledTail | None = None,
) -> tuple[onnx.ModelProto, dict[str, np.ndarray], bool]:
    """Graph ``xq -> x -> node [-> requantization]``; ``node`` reads the centred ``x`` and writes ``acc``.

    ``channel_shape`` is how a per-channel multiplier broadcasts against the accumulator. With a
    ``compiled_tail`` the graph ends at ``acc`` (the node adds the bias; the tail requantizes).
    """
    x_type, nodes, centring = _centring(x_zero, x_range)
    nodes.append(node)
    inits = [*inits, *centring]
    feeds: dict[str, np.ndarray] = {}
    out, out_type = "acc", TensorProto.FLOAT
    finish = None if compiled_tail is not None else _session_tail(ep, channel_shape)
    if finish is not None:
        tail, out_type = finish
        nodes += tail.nodes
        inits += tail.inits
        feeds, out = tail.feeds, "y"
    graph = helper.make_graph(
        nodes,
        "exact_sum",
        [helper.make_tensor_value_info("xq", x_type, None)]
        + [
            helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
            for k, v in feeds.items()
        ],
        [helper.make_tensor_value_info(out, out_type, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    feeds = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
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
    if not np.any(ep.bias) or not _bias_in_node(ep):
        return weights, []
    bias = np.broadcast_to(ep.bias, (channels,)) * (1.0 if steps is None else steps)
    return weights, [numpy_helper.from_array(bias.astype(np.float32), "b")]


def conv_sum(
    attrs: dict[str, Any], weights: np.ndarray, x_zero: int, x_range: tuple[int, int], ep: Epilogue
) -> OrtSum:
    """A Conv with ONNX ``attrs`` and centred float32 ``weights`` (M, C/G, *kernel) on codes in
    ``x_range`` with zero point ``x_zero``."""
    weights, bias = _scaled_weights_and_bias(ep, weights, 0)
    inits = [numpy_helper.from_array(weights, "w"), *bias]
    node = helper.make_node("Conv", ["x", "w", "b"][: len(inits) + 1], ["acc"], **attrs)
    channel_shape = (weights.shape[0],) + (1,) * (weights.ndim - 2)
    tail = _compiled_tail(ep, weights.shape[0], channel_last=False)
    model, feeds, requantizes = _session_model(node, inits, ep, channel_shape, x_zero, x_range, tail)
    # a pointwise conv runs faster as the plain GEMM than through NCHWc reorders (measured on the benchmark)
    pointwise = weights.shape[2:] == (1,) * (weights.ndim - 2) and int(attrs.get("group", 1)) == 1
    return OrtSum(model, feeds, requantizes, tail=tail, layout=not pointwise)


def matmul_sum(
    weights: np.ndarray, x_zero: int, x_range: tuple[int, int], ep: Epilogue, trans_a: bool | None
) -> OrtSum:
    """``x @ weights`` for centred float32 ``weights`` (K, N): a Gemm (2-D ``x``, transposed if
    ``trans_a``), or with ``trans_a=None`` a MatMul (any rank; a bias is a separate Add)."""
    weights, bias = _scaled_weights_and_bias(ep, weights, 1)
    inits = [numpy_helper.from_array(weights, "w"), *bias]
    if trans_a is None:
        node = helper.make_node("MatMul", ["x", "w"], ["acc" if not bias else "acc_nobias"])
    else:
        node = helper.make_node("Gemm", ["x", "w", "b"][: len(inits) + 1], ["acc"], transA=int(trans_a))
    tail = _compiled_tail(ep, weights.shape[1], channel_last=True)
    model, feeds, requantizes = _session_model(node, inits, ep, (weights.shape[1],), x_zero, x_range, tail)
    if trans_a is None and bias:
        position = [n.op_type for n in model.graph.node].index("MatMul") + 1
        model.graph.node.insert(position, helper.make_node("Add", ["acc_nobias", "b"], ["acc"]))
    return OrtSum(model, feeds, requantizes, chunkable=not trans_a, tail=tail)
