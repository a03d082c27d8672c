"""Element-wise integer kernels: Add, Sub, Mul, Div, Relu, Clip, LeakyRelu, PRelu.

Add/Sub schemes (``Profile.eltwise_method``, §2.5 / §4.5 / §3.2):

* ``tflite``: both inputs shifted left by ``L`` bits, brought to ``2*max(s1, s2)`` with their own Q31
  multipliers, summed, then requantized to the output: three roundings of ``profile.eltwise``.
  ``L = min(profile.eltwise_left_shift, 30 - bitwidth)`` so the shifted value fits int32 at 16 bit.
* ``hexagon_nn``: ``a_scale = RHAZ(a_f 2^rsh 256)`` (about 14 bits, float32 prepare), floor ``>> 8``,
  int16-saturated offset, then ``(p + 2^(rsh-1)) >> rsh`` (8-bit only). Sub negates ``b_scale``
  [inferred: §4.5 quotes only the add].
* ``float``: ONNX Runtime's QLinearAdd (AVX2 kernel, ``qladd_avx2.cpp``): ``r_i = f(s_i) / f(s_out)``,
  ``fixed = z_out - (r_a z_a + r_b z_b)``, ``y = R(fma(q_a, r_a, fma(q_b, r_b, fixed)))`` in the float
  precision of ``profile.eltwise.multiplier``, rounded with ``profile.eltwise.rounding``. (ORT's SSE2 and
  16-bit paths round the products separately, so they can differ at near-ties.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np

from qdiverge.encodings.schema import Encoding
from qdiverge.engines.emulator.code_tables import PairTable
from qdiverge.engines.emulator.fixed_point import (
    INT16_MAX,
    INT16_MIN,
    INT32_MAX,
    INT32_MIN,
    quantize_multiplier,
    round_to_int,
    rounding_divide,
)
from qdiverge.engines.emulator.kernels.activation import Table, lookup, prepare_table
from qdiverge.engines.emulator.kernels.rescale import (
    RescaleParams,
    encoding_of,
    float_dtype,
    prepare_rescale,
    ratio,
    rescale,
    scalar_encoding,
)
from qdiverge.engines.emulator.registry import Binding, Unsupported, kernel
from qdiverge.engines.emulator.requant import RequantParams, apply_requant, prepare_requant, quantize_float
from qdiverge.quant import dequantize, quantize_aimet


def _binary_encodings(b: Binding) -> tuple[float, int, float, int, float, int, Encoding]:
    """``(s_a, z_a, s_b, z_b, s_out, z_out, output encoding)`` of a two-input op, all per-tensor integer."""
    sa, za = scalar_encoding(encoding_of(b, 0), "input A")
    sb, zb = scalar_encoding(encoding_of(b, 1), "input B")
    out = b.output_encodings[0]
    so, zo = scalar_encoding(out, "output")
    assert out is not None
    return sa, za, sb, zb, so, zo, out


# ---------------------------------------------------------------------------------------------- add, sub


@dataclass(frozen=True)
class AddParams:
    method: str
    sign: int  # +1 Add, -1 Sub
    za: int
    zb: int
    qmin: int
    qmax: int
    left_shift: int = 0
    rq_a: RequantParams | None = None
    rq_b: RequantParams | None = None
    rq_out: RequantParams | None = None
    a_scale: int = 0  # hexagon_nn
    b_scale: int = 0
    offset: int = 0
    rsh: int = 0
    ua: int = 0  # qmin of each input: hexagon_nn works on unsigned codes
    ub: int = 0
    ratios: tuple[float, float, float] = (0.0, 0.0, 0.0)  # float: r_a, r_b, fixed part
    dtype: Any = np.float64
    rounding: str = "half_even"
    table: PairTable | None = None  # 8-bit inputs: this arithmetic on every code pair (``code_tables``)


def _tabled(params: Any, arithmetic: Callable[[Any, np.ndarray, np.ndarray], np.ndarray], b: Binding) -> Any:
    """``params`` with the pair table of ``arithmetic`` when both inputs are 8-bit codes."""
    table = PairTable.build(partial(arithmetic, params), encoding_of(b, 0), encoding_of(b, 1))
    return replace(params, table=table)


def _run_pair(
    p: Any, arithmetic: Callable[[Any, np.ndarray, np.ndarray], np.ndarray], a: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """The table when there is one, else ``arithmetic`` on int64 codes (the kernels get narrow inputs)."""
    if p.table is not None:
        return p.table(a, b)
    return arithmetic(p, a.astype(np.int64, copy=False), b.astype(np.int64, copy=False))


def _prepare_add(b: Binding, sign: int) -> AddParams:
    sa, za, sb, zb, so, zo, out = _binary_encodings(b)
    ea, eb = encoding_of(b, 0), encoding_of(b, 1)
    spec, method = b.profile.eltwise, b.profile.eltwise_method
    base = dict(sign=sign, za=za, zb=zb, qmin=out.qmin, qmax=out.qmax)
    if method == "tflite":
        bits = max(e.bitwidth for e in (ea, eb) if e is not None)
        shift = min(b.profile.eltwise_left_shift, 30 - bits)
        twice_max = 2.0 * max(sa, sb)
        return AddParams(
            "tflite",
            left_shift=shift,
            rq_a=prepare_requant(ratio(spec, sa, 1.0, twice_max), spec, 0),
            rq_b=prepare_requant(ratio(spec, sb, 1.0, twice_max), spec, 0),
            rq_out=prepare_requant(ratio(spec, twice_max, 1.0, (1 << shift) * so), spec, zo),
            **base,
        )
    if method == "hexagon_nn":
        encs = (ea, eb, out)
        if any(e is None or e.bitwidth > 8 for e in encs):
            raise Unsupported("hexagon_nn add is 8-bit only")
        f32 = np.float32
        out_scl = f32(1.0) / f32(so)
        a_f, b_f = f32(out_scl * f32(sa)), f32(out_scl * f32(sb))
        _, scexp = np.frexp(f32(f32(a_f + b_f) * f32(16384.0 / 16380.0)))
        rsh = min(6 - int(scexp), 7)
        if rsh < 0:
            raise Unsupported("hexagon_nn add: input/output scale ratio too large")
        a_scale = int(round_to_int(np.array([a_f * f32(2.0**rsh * 256.0)]), "half_away")[0])
        b_scale = int(round_to_int(np.array([b_f * f32(2.0**rsh * 256.0)]), "half_away")[0]) * sign
        ua, ub = za - encs[0].qmin, zb - encs[1].qmin  # zero points as unsigned codes
        intzero = (ua * a_scale + ub * b_scale) >> 8
        z_out_u = zo - out.qmin
        offset = int(round_to_int(np.array([z_out_u * 2.0**rsh]), "half_away")[0]) - intzero
        offset = int(np.clip(offset, INT16_MIN, INT16_MAX))
        return AddParams(
            "hexagon_nn",
            a_scale=a_scale,
            b_scale=b_scale,
            offset=offset,
            rsh=rsh,
            ua=encs[0].qmin,
            ub=encs[1].qmin,
            **base,
        )
    if method == "float":
        dt = float_dtype(spec)
        r_a, r_b = dt(dt(sa) / dt(so)), dt(dt(dt(sb) / dt(so)) * dt(sign))
        fixed = dt(dt(zo) - dt(dt(r_a * dt(za)) + dt(r_b * dt(zb))))
        ratios = (float(r_a), float(r_b), float(fixed))
        return AddParams("float", ratios=ratios, dtype=dt, rounding=spec.rounding, **base)
    raise Unsupported(f"eltwise_method {method!r}")


def _run_add(p: AddParams, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if p.method == "tflite":
        assert p.rq_a is not None and p.rq_b is not None and p.rq_out is not None
        xa = apply_requant((a - p.za) << p.left_shift, p.rq_a, INT32_MIN, INT32_MAX)
        xb = apply_requant((b - p.zb) << p.left_shift, p.rq_b, INT32_MIN, INT32_MAX)
        return apply_requant(xa + p.sign * xb, p.rq_out, p.qmin, p.qmax)
    if p.method == "hexagon_nn":
        p1 = ((a - p.ua) * p.a_scale + (b - p.ub) * p.b_scale) >> 8
        p2 = np.clip(p1 + p.offset, INT16_MIN, INT16_MAX)
        return np.clip((p2 + ((1 << p.rsh) >> 1)) >> p.rsh, 0, 255) + p.qmin
    # two fused multiply-adds, one rounding each: q * r (<= 24 + 17 bits) plus a float32 addend is exact in
    # float64 whenever their exponents span < 53 bits (any practical scale ratio), then rounded once
    dt, r_a, r_b, fixed = p.dtype, *p.ratios
    t = (b.astype(np.float64) * r_b + fixed).astype(dt)
    v = (a.astype(np.float64) * r_a + t.astype(np.float64)).astype(dt)
    return np.clip(round_to_int(v, p.rounding), p.qmin, p.qmax)


@kernel("Add")
class Add:
    narrow_inputs = True

    @staticmethod
    def prepare(b: Binding) -> AddParams:
        return _tabled(_prepare_add(b, 1), _run_add, b)

    @staticmethod
    def run(p: AddParams, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _run_pair(p, _run_add, a, b)


@kernel("Sub")
class Sub:
    narrow_inputs = True

    @staticmethod
    def prepare(b: Binding) -> AddParams:
        return _tabled(_prepare_add(b, -1), _run_add, b)

    @staticmethod
    def run(p: AddParams, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _run_pair(p, _run_add, a, b)


# ---------------------------------------------------------------------------------------------- mul, div


@dataclass(frozen=True)
class MulParams:
    za: int
    zb: int
    zo: int
    qmin: int
    qmax: int
    requant: RequantParams | None = None  # Mul; Div by a constant
    sign: int = 1  # Div by a constant: its sign
    qm: int = 0  # Div: M ~= qm * 2^(shift - 31)
    shift: int = 0
    rounding: str = "half_even"
    table: PairTable | None = None  # 8-bit inputs: this arithmetic on every code pair (``code_tables``)


@kernel("Mul")
class Mul:
    """``y = clamp(R((a - z_a)(b - z_b) * M) + z_out)``, one multiplier ``M = s_a s_b / s_out``."""

    @staticmethod
    def prepare(b: Binding) -> MulParams:
        sa, za, sb, zb, so, zo, out = _binary_encodings(b)
        spec = b.profile.eltwise
        ranges = [max(z - e.qmin, e.qmax - z) for z, e in ((za, encoding_of(b, 0)), (zb, encoding_of(b, 1)))]
        if spec.multiplier not in ("float32", "float64") and ranges[0] * ranges[1] > INT32_MAX:
            raise Unsupported("Mul: the product of the inputs does not fit int32")  # asymmetric 16-bit inputs
        rq = prepare_requant(ratio(spec, sa, sb, so), spec, zo)
        return _tabled(MulParams(za, zb, zo, out.qmin, out.qmax, requant=rq), _run_mul, b)

    @staticmethod
    def run(p: MulParams, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _run_pair(p, _run_mul, a, b)


def _run_mul(p: MulParams, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    assert p.requant is not None
    return apply_requant((a - p.za) * (b - p.zb), p.requant, p.qmin, p.qmax)


def _scalar_divisor(b: Binding, sb: float, zb: int) -> float:
    """The real value the target holds for a one-element constant divisor, ``s_b (q_b - z_b)``; 0.0 when
    input B is not such a constant (or is zero: the general kernel saturates)."""
    const = b.constants[1] if len(b.constants) > 1 else None
    enc = encoding_of(b, 1)
    if const is None or const.size != 1 or enc is None:
        return 0.0
    code = quantize_float(np.asarray(const, dtype=np.float64).reshape(1), enc, b.profile.weight_rounding)
    return sb * (int(code[0]) - zb)


@kernel("Div")
class Div:
    """``y = clamp(R((a - z_a) * qm / ((b - z_b) * 2^(31 - shift))) + z_out)``: one exact rational rounding.

    ``M = s_a / (s_b s_out)`` becomes a Q31 multiplier ``(qm, shift)``; the quotient of two integers is then
    rounded once with ``profile.eltwise.rounding`` (an integer divider, no reciprocal table). A zero divisor
    saturates to ``qmax``/``qmin`` by the sign of the numerator (``z_out`` for 0/0), like a float ``inf``
    clamped to the output range.

    A one-element constant divisor ``c`` (HardSwish's ``/ 6`` as Paddle exports it) is what a converter
    turns into a multiply by the static ``1/c``: one requantization ``R((a - z_a) * M) + z_out`` with
    ``M = s_a / (|c| s_out)`` (sign of ``c`` applied to ``a - z_a``), ``c`` at its quantized value.
    """

    @staticmethod
    def prepare(b: Binding) -> MulParams:
        sa, za, sb, zb, so, zo, out = _binary_encodings(b)
        spec = b.profile.eltwise
        divisor = _scalar_divisor(b, sb, zb)
        if divisor:
            rq = prepare_requant(ratio(spec, sa, 1.0, abs(divisor) * so), spec, zo)
            params = MulParams(za, zb, zo, out.qmin, out.qmax, requant=rq, sign=1 if divisor > 0 else -1)
            return _tabled(params, _run_div, b)
        qm, shift = quantize_multiplier(ratio(spec, sa, 1.0, sb * so))
        if 31 - int(shift[0]) > 62 - 17:  # (b - z_b) << (31 - shift) must fit int64 for 16-bit inputs
            raise Unsupported("Div: multiplier below 2^-14")
        qm0, shift0 = int(qm[0]), int(shift[0])
        params = MulParams(za, zb, zo, out.qmin, out.qmax, qm=qm0, shift=shift0, rounding=spec.rounding)
        return _tabled(params, _run_div, b)

    @staticmethod
    def run(p: MulParams, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _run_pair(p, _run_div, a, b)


def _run_div(p: MulParams, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if p.requant is not None:  # constant divisor: a multiply by its reciprocal
        return apply_requant((a - p.za) * p.sign, p.requant, p.qmin, p.qmax)
    num, den = np.broadcast_arrays((a - p.za) * p.qm, (b - p.zb) << (31 - p.shift))
    safe = np.where(den == 0, 1, den)
    y = rounding_divide(num, safe, p.rounding) + p.zo
    y = np.where(den == 0, np.where(num > 0, p.qmax, np.where(num < 0, p.qmin, p.zo)), y)
    return np.clip(y, p.qmin, p.qmax)


# ---------------------------------------------------------------------------------------------- clamps


def _code_of(value: float, scale: float, zero: int, rounding: str) -> int:
    """``z + R(v / s)``: the output code of a real bound (TFLite ``CalculateActivationRangeQuantized``)."""
    return zero + int(round_to_int(np.array([value / scale]), rounding)[0])


def _clip_codes(b: Binding, so: float, zo: int) -> tuple[int | None, int | None]:
    """Output codes of a Clip's (optional) real bounds, ``z + R(bound / s)`` (rounding ``profile.rescale``)."""
    bounds: list[float | None] = [b.node.attr("min"), b.node.attr("max")]
    for k in (1, 2):  # opset 11+: min and max are (optional) inputs
        if k < len(b.node.inputs) and b.node.inputs[k]:
            if k >= len(b.constants) or b.constants[k] is None:
                raise Unsupported("Clip bounds computed at run time")
            bounds[k - 1] = float(np.asarray(b.constants[k]).reshape(-1)[0])
    rounding = b.profile.rescale.rounding
    lo = None if bounds[0] is None else _code_of(bounds[0], so, zo, rounding)
    hi = None if bounds[1] is None else _code_of(bounds[1], so, zo, rounding)
    return lo, hi


@kernel("Relu", "Clip")
class Clamp:
    """Integer clamp, after a rescale when the encodings differ: Relu at the output zero point, Clip to
    ``[z + R(min/s), z + R(max/s)]`` (``_clip_codes``)."""

    @staticmethod
    def prepare(b: Binding) -> RescaleParams | None:
        out = b.output_encodings[0]
        so, zo = scalar_encoding(out, "output")
        assert out is not None
        lo, hi = (zo, None) if b.node.op_type == "Relu" else _clip_codes(b, so, zo)
        return prepare_rescale(b.input_encodings[0], out, b.profile, lo=lo, hi=hi)

    @staticmethod
    def run(p: RescaleParams | None, x: np.ndarray, *bounds: np.ndarray | None) -> np.ndarray:
        return x if p is None else rescale(p, x)


# ---------------------------------------------------------------------------------------------- slopes


@dataclass(frozen=True)
class SlopeParams:
    """``y = R(v s_in/s_out) + z`` for ``v = q - z_in >= 0``, else ``R(v * slope * s_in/s_out) + z``.

    Negative slopes are applied as ``R((-v) * |M|)``: the same real value, so the same rounding.
    ``index`` maps each slope element to one of the distinct slopes (PRelu broadcasts it against x).
    """

    zero_in: int
    zero_out: int
    qmin: int
    qmax: int
    positive: RequantParams
    negative: tuple[tuple[bool, RequantParams | None], ...]  # None: slope 0, output z_out
    index: np.ndarray


def _prepare_slopes(b: Binding, slopes: np.ndarray) -> SlopeParams:
    s_in, z_in = scalar_encoding(b.input_encodings[0], "input")
    out = b.output_encodings[0]
    s_out, z_out = scalar_encoding(out, "output")
    assert out is not None
    spec = b.profile.rescale
    distinct, index = np.unique(slopes, return_inverse=True)
    negative = tuple(
        (bool(s < 0), prepare_requant(ratio(spec, s_in, abs(float(s)), s_out), spec, z_out) if s else None)
        for s in distinct
    )
    positive = prepare_requant(ratio(spec, s_in, 1.0, s_out), spec, z_out)
    return SlopeParams(z_in, z_out, out.qmin, out.qmax, positive, negative, index.reshape(slopes.shape))


def _run_slopes(p: SlopeParams, x: np.ndarray) -> np.ndarray:
    v = x - p.zero_in
    y = apply_requant(v, p.positive, p.qmin, p.qmax)
    index = np.broadcast_to(p.index, np.broadcast_shapes(p.index.shape, x.shape))
    v, y = np.broadcast_to(v, index.shape), np.array(np.broadcast_to(y, index.shape))
    for k, (flip, params) in enumerate(p.negative):
        mask = (v < 0) & (index == k)
        if params is None:
            y[mask] = np.clip(p.zero_out, p.qmin, p.qmax)
        else:
            y[mask] = apply_requant(-v[mask] if flip else v[mask], params, p.qmin, p.qmax)
    return y


@kernel("LeakyRelu")
class LeakyRelu:
    """Two multipliers (TFLite), or a table when ``"LeakyRelu"`` is in ``profile.lut.ops`` (ONNX Runtime)."""

    @staticmethod
    def prepare(b: Binding) -> SlopeParams | Table:
        if "LeakyRelu" in b.profile.lut.ops:
            return prepare_table(b)
        return _prepare_slopes(b, np.array([float(b.node.attr("alpha", 0.01))]))

    @staticmethod
    def run(p: SlopeParams | Table, x: np.ndarray) -> np.ndarray:
        return lookup(p, x) if isinstance(p, Table) else _run_slopes(p, x)


@kernel("PRelu")
class PRelu:
    """Per-element slope (a constant, taken at its quantized value when it has a param encoding)."""

    @staticmethod
    def prepare(b: Binding) -> SlopeParams:
        slope = b.constants[1] if len(b.constants) > 1 else None
        if slope is None:
            raise Unsupported("PRelu slope computed at run time")
        enc = b.param_encodings[1] if len(b.param_encodings) > 1 else None
        values = np.asarray(slope, dtype=np.float64)
        if enc is not None and not enc.is_float:
            values = dequantize(quantize_aimet(values, enc), enc).astype(np.float64)
        return _prepare_slopes(b, values)

    @staticmethod
    def run(p: SlopeParams, x: np.ndarray, *slope_codes: np.ndarray) -> np.ndarray:
        return _run_slopes(p, x)
