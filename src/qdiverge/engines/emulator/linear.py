"""What Conv, ConvTranspose, Gemm and MatMul share: weight and bias quantization, the exact-accumulation
bound, and the epilogue (bias, int32 accumulator, requantization, fused activation).

Accumulation runs on float kernels (onnxruntime's under the float32 bound, see ``accumulate``; numpy BLAS
otherwise) because they are fast and, under a bound, exact: every product and partial
sum is an integer of magnitude at most ``max|x - z_x| * max_c sum|w_c - z_w|``. Below ``2^24`` float32
holds all of them exactly whatever order BLAS sums in; below ``2^53`` float64 does. ``prepare`` computes
the bound from the actual weights and the input encoding's code range and picks the dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from qdiverge.encodings.schema import Encoding
from qdiverge.engines.emulator import fixed_point as fx
from qdiverge.engines.emulator.registry import Binding, Unsupported
from qdiverge.engines.emulator.requant import (
    RequantParams,
    along_axis,
    apply_requant,
    effective_multiplier,
    prepare_requant,
    quantize_bias,
    quantize_float,
)
from qdiverge.loading.model import Node

FLOAT32_EXACT = 1 << 24
FLOAT64_EXACT = 1 << 53


def _hardswish(v: np.ndarray) -> np.ndarray:
    return v * np.clip(v + 3.0, 0.0, 6.0) / 6.0


def _activation(node: Node, constants: Sequence[np.ndarray | None]) -> Callable[[np.ndarray], np.ndarray]:
    """Float formula of a fused non-linear activation (ONNX definitions, default attributes)."""
    op = node.op_type
    if op == "HardSwish":
        return _hardswish
    if op == "HardSigmoid":
        alpha, beta = float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5))
        return lambda v: np.clip(alpha * v + beta, 0.0, 1.0)
    if op == "Sigmoid":
        return lambda v: 1.0 / (1.0 + np.exp(-v))
    if op == "Tanh":
        return np.tanh
    if op == "LeakyRelu":
        alpha = float(node.attr("alpha", 0.01))
        return lambda v: np.where(v >= 0, v, alpha * v)
    raise Unsupported(f"fused activation {op} has no fixed-point model")


def _clip_bounds(node: Node, constants: Sequence[np.ndarray | None]) -> tuple[float, float]:
    if node.op_type == "Relu":
        return 0.0, np.inf
    lo, hi = node.attr("min", -np.inf), node.attr("max", np.inf)  # opset < 11 attributes
    for i, default in ((1, lo), (2, hi)):
        if len(node.inputs) > i and node.inputs[i]:
            if constants[i] is None:
                raise Unsupported("Clip with non-constant bounds")
            value = float(np.asarray(constants[i]).reshape(()))
            lo, hi = (value, hi) if i == 1 else (lo, value)
        else:
            lo, hi = (default, hi) if i == 1 else (lo, default)
    return float(lo), float(hi)


@dataclass(frozen=True)
class Epilogue:
    """Everything after the exact sum: ``acc + bias`` -> int32 -> requant (or fused activation) -> codes."""

    bias: np.ndarray  # int32-range int64 per output channel, or shape (1,) zero
    overflow: str  # profile.accumulator: wrap | saturate
    needs_int32: bool  # False when the static bound proves |acc + bias| < 2^31 (the wrap is a no-op)
    requant: RequantParams
    qmin: int
    qmax: int
    acc_scale: np.ndarray  # s_in * s_w[c] (float64), real value of one accumulator step
    activation: Callable[[np.ndarray], np.ndarray] | None  # fused non-linear activation, float formula
    out_scale: float
    out_zero_point: int
    act_rounding: str
    float_exact: bool  # float32/float64 multiplier, no fold, no activation, |acc + bias| exact in that float
    activation_op: str = ""  # op type of ``activation`` (lets the accumulator session build it in ONNX ops)
    float32_sum: bool = False  # |acc + bias| < 2^24: the biased accumulator is exact in float32
    act_dtype: type = np.float64  # precision of the fused activation (``profile.lut.compute``)

    def __call__(self, acc: np.ndarray, axis: int) -> np.ndarray:
        if self.float_exact and acc.dtype == self.requant.multiplier.dtype:
            # float multiplier, and |acc + bias| below the float's exact-integer range: the int32 -> float
            # conversion is exact, so the whole requantization can stay in place in the float array
            if np.any(self.bias):
                acc += along_axis(self.bias.astype(acc.dtype), acc.ndim, axis)
            acc *= along_axis(self.requant.multiplier, acc.ndim, axis)
            y = fx.round_to_int(acc, self.requant.rounding)
            if np.any(self.requant.zero_point):
                y += along_axis(self.requant.zero_point, y.ndim, axis)
            return np.clip(y, self.qmin, self.qmax, out=y)
        acc = acc.astype(np.int64)
        if np.any(self.bias):
            acc += along_axis(self.bias, acc.ndim, axis)
        if self.needs_int32:
            acc = fx.to_int32(acc, self.overflow)
        if self.activation is None:
            return apply_requant(acc, self.requant, self.qmin, self.qmax, axis, overwrite=True)
        # fused non-linear activation: applied to the un-requantized accumulator's real value in the profile's
        # LUT precision, rounded once to the output grid (HTP's own error is up to 0.06 LSB, probe fusion)
        dt = self.act_dtype
        real = acc.astype(dt) * along_axis(self.acc_scale.astype(dt), acc.ndim, axis)
        q = (
            fx.round_to_int(self.activation(real) / dt(self.out_scale), self.act_rounding)
            + self.out_zero_point
        )
        return np.clip(q, self.qmin, self.qmax)


class WeightKernel:
    """Base of the weight-bearing kernels (Conv, ConvTranspose, Gemm, MatMul): how the runner treats them."""

    fuses = True  # applies Binding.fused activations in its epilogue
    reads_constants = False  # weights and bias are prepared from the binding
    narrow_inputs = True  # any integer dtype: the input is converted to float once anyway


def code_radius(enc: Encoding) -> int:
    """``max |q - z|`` over the encoding's code range."""
    z = int(np.asarray(enc.zero_point).reshape(-1)[0])
    return max(z - enc.qmin, enc.qmax - z)


def activation_encoding(enc: Encoding | None, what: str) -> Encoding:
    if enc is None or enc.is_float:
        raise Unsupported(f"{what} has no integer encoding")
    if enc.per_channel or enc.block_size:
        raise Unsupported(f"{what} has a per-channel activation encoding")
    return enc


def quantized_weights(b: Binding, index: int, channel_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(``w - z_w`` as int64 codes, weight scales ``(C,)`` or ``(1,)``) of constant input ``index``."""
    w, enc = b.constants[index], b.param_encodings[index]
    if w is None:
        raise Unsupported(f"input {index} is not a constant")
    if enc is None or enc.is_float or enc.block_size:
        raise Unsupported(f"weight {b.node.inputs[index]!r} has no per-tensor/per-channel integer encoding")
    if enc.per_channel and (enc.axis or 0) % w.ndim != channel_axis % w.ndim:
        raise Unsupported(f"weight {b.node.inputs[index]!r} is per-channel along a non-output axis")
    codes = quantize_float(w, enc, b.profile.weight_rounding)
    zero = enc.broadcast(enc.zero_point.astype(np.int64), w.ndim)
    return codes - zero, np.asarray(enc.scale, dtype=np.float64).reshape(-1)


def constant_weight(b: Binding) -> np.ndarray:
    """The float weight input 1 of a Conv/ConvTranspose; a computed one is ``Unsupported``."""
    w = b.constants[1]
    if w is None:
        raise Unsupported(f"{b.node.op_type} with non-constant weights")
    return w


def constant_bias(b: Binding) -> np.ndarray | None:
    """The float bias input 2 of a Conv/ConvTranspose, ``None`` when absent; a computed one is ``Unsupported``."""
    bias = b.constants[2] if len(b.constants) > 2 else None
    if len(b.node.inputs) > 2 and b.node.inputs[2] and bias is None:
        raise Unsupported(f"{b.node.op_type} with a non-constant bias")
    return bias


def stacked_matmul(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``w @ x`` for ``w`` (G, M, K) and ``x`` (N, G, K, P), one 2-D BLAS call per (n, g).

    ``np.matmul`` on broadcast stacks takes a slow non-BLAS loop (measured 200x slower), so loop here.
    """
    n, g = x.shape[:2]
    out = np.empty((n, g, w.shape[1], x.shape[3]), dtype=np.result_type(w, x))
    for i in range(n):
        for j in range(g):
            np.matmul(w[j], x[i, j], out=out[i, j])
    return out


def compact_ints(a: np.ndarray) -> np.ndarray:
    """``a`` (integers) in the smallest signed integer dtype that holds it: weights kept for reference
    only (the onnxruntime path holds its own float32 copy) cost 1-2 bytes per value, not 4-8."""
    for dtype in (np.int8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if a.size == 0 or (info.min <= a.min() and a.max() <= info.max):
            return a.astype(dtype)
    return a


def accumulator_dtype(bound: float, what: str) -> type:
    """float32 when every partial sum is provably below 2^24, else float64 (below 2^53), else refuse."""
    if bound < FLOAT32_EXACT:
        return np.float32
    if bound < FLOAT64_EXACT:
        return np.float64
    raise Unsupported(f"{what}: accumulator bound {bound:.3g} exceeds exact float64 accumulation")


def prepare_accumulation(
    b: Binding,
    in_enc: Encoding,
    w_scale: np.ndarray,
    bias: np.ndarray | None,
    bound: float,
    alpha: float = 1.0,
) -> tuple[type, Epilogue]:
    """(float dtype of the exact sum, ``accumulator_dtype`` of ``bound``; the epilogue after it: bias
    quantization, requantization and the fused activations) of a weight-bearing node ``b``."""
    dtype = accumulator_dtype(bound, b.node.name)
    prof = b.profile
    out = activation_encoding(b.output_encodings[0] if b.output_encodings else None, "output")
    acc_scale = float(in_enc.scale[0]) * w_scale * alpha
    bias_q = np.zeros(1, dtype=np.int64)
    if bias is not None:
        bias_q = quantize_bias(bias, acc_scale, prof.bias_bits, prof.bias_rounding)
    z_out = int(out.zero_point[0])
    s_out = float(out.scale[0])
    m = effective_multiplier(in_enc.scale[0], w_scale * alpha, out.scale[0], prof.conv.scale_precision)
    qmin, qmax = out.qmin, out.qmax
    activation, activation_op = None, ""
    for node, consts in zip(b.fused, b.fused_constants, strict=True):
        if node.op_type in ("Relu", "Clip"):
            lo, hi = _clip_bounds(node, consts)
            # clamp bounds are codes of the real bounds on the output grid
            if np.isfinite(lo):
                qmin = max(qmin, int(fx.round_to_int(np.float64(lo / s_out), prof.conv.rounding)) + z_out)
            if np.isfinite(hi):
                qmax = min(qmax, int(fx.round_to_int(np.float64(hi / s_out), prof.conv.rounding)) + z_out)
        elif activation is None:
            activation, activation_op = _activation(node, consts), node.op_type
        else:
            raise Unsupported("more than one fused non-linear activation")
    if activation is not None and (qmin, qmax) != (out.qmin, out.qmax):
        raise Unsupported("clamp fused around a non-linear activation")
    total = bound + float(np.abs(bias_q).max())
    spec = prof.conv
    float_exact = (
        activation is None
        and spec.zero_point == "after"
        and (spec.multiplier == "float64" or (spec.multiplier == "float32" and total < FLOAT32_EXACT))
    )
    return dtype, Epilogue(
        bias=bias_q,
        overflow=prof.accumulator,
        needs_int32=total >= 1 << 31,
        requant=prepare_requant(m, prof.conv, z_out, out.bitwidth),
        qmin=qmin,
        qmax=qmax,
        acc_scale=np.asarray(acc_scale, dtype=np.float64).reshape(-1),
        activation=activation,
        out_scale=s_out,
        out_zero_point=z_out,
        act_rounding=prof.lut.rounding,
        float_exact=float_exact,
        activation_op=activation_op,
        float32_sum=total < FLOAT32_EXACT,
        act_dtype=np.float32 if prof.lut.compute == "float32" else np.float64,
    )
