"""Float scales to fixed point, once, at bind time; and the integer rescale every kernel applies.

``prepare_requant`` is the only place a real multiplier ``M = s_in * s_w / s_out`` becomes integers (or a
float32 scale, for ORT-style targets); ``apply_requant`` is the integer stage

    y = clamp(R((x + folded_offset) * M) + zero_point, qmin, qmax)

for every ``RequantSpec.multiplier`` form (see ``fixed_point`` for each primitive); HTP's 8-bit form
``q12_prescaled`` is ``y = clamp(R((2 * floor(x / 2^g) + 1) * mq / 2^16) + zero_point)`` with a 12-bit ``mq``.
``quantize_float`` turns float tensors (weights, graph inputs, float-fallback results) into codes and
``quantize_bias`` does the int32 bias. Per-channel values broadcast along one axis of the accumulator;
per-tensor is one channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qdiverge.encodings.schema import Encoding
from qdiverge.engines.emulator import compiled
from qdiverge.engines.emulator import fixed_point as fx
from qdiverge.profiles.schema import RequantSpec
from qdiverge.quant import float32_params


@dataclass(frozen=True)
class RequantParams:
    """One rescale stage, per channel (arrays of shape ``(C,)``; ``C = 1`` per tensor).

    ``multiplier`` is int64 for the fixed-point forms and float for ``float32``/``float64`` (float32 values in
    a float32 array). ``left_shift`` is applied to the int32 value before the multiply (wrapping, as on the
    target); ``right_shift`` is the rounding shift after it (after SRDHM when ``double_rounding``).
    ``folded_offset`` is added to the accumulator before the multiply, ``zero_point`` after rounding.
    """

    form: str
    rounding: str
    double_rounding: bool
    multiplier: np.ndarray
    left_shift: np.ndarray
    right_shift: np.ndarray
    zero_point: np.ndarray
    folded_offset: np.ndarray

    @property
    def channels(self) -> int:
        return int(self.multiplier.size)


def effective_multiplier(
    in_scale: np.ndarray | float, w_scale: np.ndarray | float, out_scale: np.ndarray | float, precision: str
) -> np.ndarray:
    """``M = s_in * s_w / s_out`` evaluated left to right in ``precision`` (ORT and Hexagon NN: float32;
    TFLite per-channel: float64 of float32 scales)."""
    dtype = np.float32 if precision == "float32" else np.float64
    s_in, s_w, s_out = (
        np.asarray(v, dtype=np.float64).astype(dtype).reshape(-1) for v in (in_scale, w_scale, out_scale)
    )
    return ((s_in * s_w) / s_out).astype(np.float64)


def prepare_requant(
    real_multiplier: np.ndarray, spec: RequantSpec, zero_point: np.ndarray | int, out_bits: int = 8
) -> RequantParams:
    """Fixed-point form of ``real_multiplier`` (shape ``(C,)``, > 0) under ``spec``.

    ``out_bits``: the output encoding's bitwidth; ``q12_prescaled`` is HTP's 8-bit path, its 16-bit outputs
    matched ``q31`` (exact) instead.
    """
    m = np.atleast_1d(np.asarray(real_multiplier, dtype=np.float64))
    assert np.all(m > 0) and np.all(np.isfinite(m)), "real multipliers must be finite and > 0"
    zp = np.broadcast_to(np.atleast_1d(np.asarray(zero_point)).astype(np.int64), m.shape).copy()
    zeros = np.zeros(m.shape, dtype=np.int64)
    folded = zeros
    if spec.zero_point == "folded":
        # Hexagon NN supernode: Z_p = round(z_out / M) joins the accumulator; nothing is added afterwards
        folded = fx.round_to_int(zp / m, spec.zero_point_rounding)
        zp = zeros
    form = spec.multiplier
    if form == "q12_prescaled" and out_bits > 8:
        form = "q31"
    left, right = zeros, zeros
    if form == "q12_prescaled":
        mult, g = fx.q12_prescale(m)
        left, right = np.maximum(-g, 0), np.maximum(g, 0)
    elif form == "q31":
        mult, shift = fx.quantize_multiplier(m, cap_shift=not spec.double_rounding)
        if spec.double_rounding:
            left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
        else:
            right = 31 - shift
    elif form == "q31_unnormalized":
        mult, left = fx.hexnn_recip(m)
        right = np.full(m.shape, 31, dtype=np.int64)
    elif form in ("q15", "q15_truncated"):
        mult, right = fx.q15_gain(m, truncate=form == "q15_truncated")
    elif form == "float32":
        mult = m.astype(np.float32)
    elif form == "float64":
        mult = m
    else:
        raise ValueError(f"unknown multiplier form {form!r}")
    return RequantParams(form, spec.rounding, spec.double_rounding, mult, left, right, zp, folded)


def along_axis(values: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """Per-channel ``values`` shaped to broadcast along ``axis`` of a rank-``ndim`` array (or 0-d)."""
    if values.size == 1:
        return values.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = values.size
    return values.reshape(shape)


def apply_requant(
    acc: np.ndarray, p: RequantParams, qmin: int, qmax: int, axis: int = 1, overwrite: bool = False
) -> np.ndarray:
    """Rescale int32-range ``acc`` (int64) to output codes in ``[qmin, qmax]``; channels along ``axis``.

    ``overwrite``: ``acc`` is a temporary of the caller's (int64) and may hold the result, which saves
    the int64 temporaries of the common forms (each a pass over the whole output).
    """
    x = np.asarray(acc, dtype=np.int64)
    overwrite = overwrite and x is acc
    nd = x.ndim
    if np.any(p.folded_offset):
        x = fx.wrap_int32(x + along_axis(p.folded_offset, nd, axis))
    mult = along_axis(p.multiplier, nd, axis)
    left, right = along_axis(p.left_shift, nd, axis), along_axis(p.right_shift, nd, axis)
    if p.form == "q12_prescaled":
        y = fx.prescaled_requant(x, mult, right - left, p.rounding)
    elif p.form == "q31" and p.double_rounding:
        y = fx.mbqm_double(x, mult, left - right, p.rounding)  # left = max(shift, 0), right = max(-shift, 0)
    elif p.form in ("float32", "float64"):
        y = fx.round_to_int(
            x.astype(mult.dtype) * mult, p.rounding
        )  # int32 -> float32 rounds above 2^24, as MLAS
    else:
        if np.any(p.left_shift):
            x, overwrite = fx.wrap_int32(x << left), True  # Hexagon vasl: not saturating
        in_place = overwrite and x.shape == np.broadcast(x, mult).shape
        prod = np.multiply(x, mult, out=x) if in_place else x * mult  # |x|, mult < 2^31: exact in int64
        y = fx.rounding_right_shift(prod, right, p.rounding, overwrite=True)
    if np.any(p.zero_point):
        y += along_axis(p.zero_point, nd, axis)
    return np.clip(y, qmin, qmax, out=y)


def quantize_float(
    x: np.ndarray,
    enc: Encoding,
    rounding: str,
    reciprocal: bool = False,
    fp16: bool = False,
    dtype: type = np.int64,
) -> np.ndarray:
    """Storage-domain codes of float ``x`` under ``enc`` (float32 arithmetic, as converters and runtimes do),
    as ``dtype`` (int64 for arithmetic; the storage type for tensors that are only passed on).

    ``reciprocal=False``: ONNX ``QuantizeLinear``, ``R(x / s) + z``. ``reciprocal=True``: HTP core
    ``saturate_round(z + x * (1/s))`` (the zero point joins before rounding, which matters at ties).
    ``fp16=True`` (HTP 8-bit graph inputs, probe ``input``): ``R(fp16(x * (1/s))) + z``.
    """
    x = np.asarray(x, dtype=np.float32)
    scale, offset, _, _ = float32_params(enc, x.shape)
    if fp16 and enc.bitwidth <= 8:
        if compiled.enabled() and rounding in compiled.ROUNDING_RULES and scale.size == 1:
            inv = np.float32(1.0) / scale.reshape(())
            return compiled.quantize_fp16(
                x, inv, float(offset.reshape(-1)[0]), enc.num_steps, enc.qmin, rounding, dtype
            )
        # float16 values are small integers' neighbours: every step below is exact in float32
        product = (x * (np.float32(1.0) / scale)).astype(np.float16).astype(np.float32)
        q_f = fx.round_to_float(product, rounding) - offset
        return (np.clip(q_f, 0, enc.num_steps) + enc.qmin).astype(dtype)
    if reciprocal:
        q_u = fx.round_to_int(x * (np.float32(1.0) / scale) - offset, rounding)
    else:
        q_u = fx.round_to_int(x / scale, rounding) - offset.astype(np.int64)
    return (np.clip(q_u, 0, enc.num_steps) + enc.qmin).astype(dtype, copy=False)


def quantize_bias(bias: np.ndarray, acc_scale: np.ndarray, bits: int, rounding: str) -> np.ndarray:
    """int32 bias codes at ``acc_scale = s_in * s_w[c]`` (float64), saturated.

    ``bits == 8`` models the converters' default 8-bit bias: first a symmetric 8-bit quantize-dequantize with
    ``s_b = max|b| / 127``, then the same re-expression at ``acc_scale``.
    """
    b = np.asarray(bias, dtype=np.float64).reshape(-1)
    if bits == 8 and np.any(b):
        s_b = np.abs(b).max() / 127.0
        b = s_b * np.clip(fx.round_to_int(b / s_b, rounding), -127, 127)
    return fx.saturate_int32(fx.round_to_int(b / np.asarray(acc_scale, dtype=np.float64), rounding))
