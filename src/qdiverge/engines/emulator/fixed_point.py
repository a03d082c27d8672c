"""Fixed-point primitives of DSP requantization, as pure numpy int64 functions.

Every function takes and returns int64 arrays (int32-range values unless a docstring says otherwise) and
states its formula. Tie rules are named (``qdiverge.profiles.schema.ROUNDINGS``):

* ``half_up``   ties toward +inf: ``floor(v + 1/2)`` (``(x + 2^(n-1)) >> n``, ARM ``VRSHR``, Hexagon ``:rnd``)
* ``half_away`` ties away from zero (C ``round``, gemmlowp ``RoundingDivideByPOT``)
* ``half_even`` ties to even (``nearbyint``, ``np.rint``, SSE ``cvtps2dq``)
* ``floor``     toward -inf (a plain arithmetic ``>>``)
* ``trunc``     toward zero (C integer division, float-to-int cast)

Sources of the formulas: gemmlowp ``fixedpoint/fixedpoint.h``, TFLite ``quantization_util.cc`` and
``common.cc``, Hexagon NN ``supernode_utils.h`` / ``quantize.c`` (see docs in shared/reference).
"""

from __future__ import annotations

import numpy as np

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
INT16_MIN = -(1 << 15)
INT16_MAX = (1 << 15) - 1


def _i64(x: np.ndarray | int) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)


def _round_parts(floor: np.ndarray, above: np.ndarray, tie: np.ndarray, negative: np.ndarray, rounding: str):
    """``floor(v)`` plus the tie rule's increment.

    ``above``: ``v > floor + 1/2``; ``tie``: ``v == floor + 1/2``; ``negative``: ``v < 0``.
    """
    if rounding == "floor":
        return floor
    if rounding == "half_up":
        return floor + (above | tie)
    if rounding == "half_away":
        return floor + (above | (tie & ~negative))
    if rounding == "half_even":
        return floor + (above | (tie & ((floor & 1) == 1)))
    raise ValueError(f"unknown rounding {rounding!r}")


def rounding_right_shift(
    x: np.ndarray, n: np.ndarray | int, rounding: str, overwrite: bool = False
) -> np.ndarray:
    """``R(x / 2^n)`` for integer ``x`` and ``n >= 0`` (broadcast), with tie rule ``rounding``.

    ``floor = x >> n`` and ``rem = x - floor * 2^n`` in ``[0, 2^n)``; the rule decides whether to add 1.
    ``overwrite``: ``x`` (an int64 array of the result's shape) may be reused for the result.
    """
    x, n = _i64(x), _i64(n)
    assert np.all(n >= 0) and np.all(n < 63), "shift out of range"
    if rounding == "half_up":  # the common case in one pass: (x + 2^(n-1)) >> n
        half = (np.int64(1) << n) >> 1
        if overwrite and x.shape == np.broadcast_shapes(x.shape, n.shape):
            x += half
            x >>= n
            return x
        return (x + half) >> n
    floor = x >> n
    if rounding == "floor":
        return floor
    rem = x - (floor << n)
    if rounding == "trunc":
        return floor + ((rem != 0) & (x < 0))
    half = (np.int64(1) << n) >> 1  # 0 when n == 0: no fraction, nothing to round
    return _round_parts(floor, rem > half, (rem == half) & (n > 0), x < 0, rounding)


def rounding_divide(num: np.ndarray, den: np.ndarray | int, rounding: str) -> np.ndarray:
    """``R(num / den)`` for integers, ``den != 0`` (broadcast), with tie rule ``rounding``; exact."""
    num, den = _i64(num), _i64(den)
    assert np.all(den != 0), "division by zero"
    sign = np.where(den < 0, -1, 1)
    num, den = num * sign, den * sign  # den > 0 from here; the quotient is unchanged
    floor = num // den  # numpy floor division
    rem = num - floor * den
    if rounding == "trunc":
        return floor + ((rem != 0) & (num < 0))
    return _round_parts(floor, 2 * rem > den, 2 * rem == den, num < 0, rounding)


def round_to_float(v: np.ndarray, rounding: str) -> np.ndarray:
    """Round small floats (``|v| < 2^22``, e.g. float16 values) to integers in their own float dtype.

    ``|v| + 1/2`` is exact there, so the half-up / half-away rules are one ``floor`` each, no tie test."""
    v = np.asarray(v)
    half = v.dtype.type(0.5)
    if rounding == "half_up":
        return np.floor(v + half)
    if rounding == "half_away":
        return np.copysign(np.floor(np.abs(v) + half), v)
    return round_to_int(v, rounding).astype(v.dtype)


def round_to_int(v: np.ndarray, rounding: str) -> np.ndarray:
    """Round a float array to int64 with tie rule ``rounding`` (exact for float32 and float64 inputs)."""
    v = np.asarray(v)
    if rounding == "half_even":
        r = np.rint(v)
    elif rounding == "floor":
        r = np.floor(v)
    elif rounding == "trunc":
        r = np.trunc(v)
    else:
        # v - trunc(v) is exact in binary floating point (v - floor(v) is not for small negative v), so the
        # tie test is exact; floor(v + 0.5) would round twice
        r = np.rint(v)
        t = np.trunc(v)
        tie = np.abs(v - t) == 0.5
        if rounding == "half_up":
            r = np.where(tie, np.floor(v) + 1, r)
        elif rounding == "half_away":
            r = np.where(tie, t + np.sign(v), r)
        else:
            raise ValueError(f"unknown rounding {rounding!r}")
    # beyond +-2^62 every caller saturates anyway; casting such floats to int64 is undefined (wraps)
    return np.clip(r, -(2.0**62), 2.0**62).astype(np.int64)


def wrap_int32(x: np.ndarray) -> np.ndarray:
    """Two's-complement wrap to int32 (what C int32 arithmetic does on overflow)."""
    x = _i64(x)
    return ((x - INT32_MIN) & 0xFFFFFFFF) + INT32_MIN


def saturate_int32(x: np.ndarray) -> np.ndarray:
    return np.clip(_i64(x), INT32_MIN, INT32_MAX)


def to_int32(x: np.ndarray, overflow: str) -> np.ndarray:
    """Bring an exact int64 sum into int32 the way the target's accumulator does (``wrap``/``saturate``)."""
    if overflow == "wrap":
        return wrap_int32(x)
    if overflow == "saturate":
        return saturate_int32(x)
    raise ValueError(f"unknown accumulator overflow mode {overflow!r}")


def quantize_multiplier(m: np.ndarray, cap_shift: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """TFLite ``QuantizeMultiplier``: ``m ~= qm * 2^(shift - 31)`` with ``qm`` in ``[2^30, 2^31)``.

    ``m = q * 2^shift`` (``frexp``, ``q`` in [0.5, 1)); ``qm = RHAZ(q * 2^31)``; ``qm == 2^31`` renormalises;
    ``shift < -31`` flushes to ``(0, 0)`` (output is the zero point only); ``cap_shift`` (the single-rounding
    build) saturates ``shift > 30`` to ``(2^31 - 1, 30)``. ``m == 0`` gives ``(0, 0)``.
    """
    m = np.asarray(m, dtype=np.float64)
    assert np.all(m >= 0) and np.all(np.isfinite(m)), "multipliers must be finite and >= 0"
    q, shift = np.frexp(m)
    # q * 2^31 is exact in float64 and < 2^31, so floor(v + 0.5) is an exact half-away rounding here
    qm = np.floor(q * 2.0**31 + 0.5).astype(np.int64)
    shift = shift.astype(np.int64)
    full = qm == (1 << 31)
    qm = np.where(full, qm // 2, qm)
    shift = np.where(full, shift + 1, shift)
    tiny = (shift < -31) | (m == 0)
    qm, shift = np.where(tiny, 0, qm), np.where(tiny, 0, shift)
    if cap_shift:
        big = shift > 30
        qm, shift = np.where(big, INT32_MAX, qm), np.where(big, 30, shift)
    return qm, shift


def srdhm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """gemmlowp ``SaturatingRoundingDoublingHighMul``: ``trunc((a*b + nudge) / 2^31)``.

    ``nudge = 2^30`` if ``a*b >= 0`` else ``1 - 2^30``; C division truncates toward zero, so the net rule is
    half *up* (``-0.5 -> 0``), not half away from zero. Saturates only for ``a = b = INT32_MIN``.
    """
    a, b = _i64(a), _i64(b)
    ab = a * b  # |a|, |b| <= 2^31, so |ab| <= 2^62: exact in int64
    num = ab + np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    high = np.where(num >= 0, num >> 31, -((-num) >> 31))
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, high)


def mbqm_double(x: np.ndarray, qm: np.ndarray, shift: np.ndarray, rounding: str = "half_away") -> np.ndarray:
    """TFLite ``MultiplyByQuantizedMultiplier``, default (double-rounding) build.

    ``RDBYPOT(SRDHM(wrap32(x * 2^left), qm), right)``, ``left = max(shift, 0)``, ``right = max(-shift, 0)``;
    the int32 left shift wraps like the C code. ``rounding`` is the second rounding (``half_away`` in TFLite).
    """
    shift = _i64(shift)
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    return rounding_right_shift(srdhm(wrap_int32(_i64(x) << left), qm), right, rounding)


def mbqm_single(x: np.ndarray, qm: np.ndarray, shift: np.ndarray, rounding: str = "half_up") -> np.ndarray:
    """TFLite ``MultiplyByQuantizedMultiplier`` (single-rounding build): ``R(x * qm / 2^(31 - shift))``."""
    shift = _i64(shift)
    assert np.all(shift <= 30), "single rounding needs shift <= 30 (quantize_multiplier(cap_shift=True))"
    return rounding_right_shift(_i64(x) * _i64(qm), 31 - shift, rounding)  # |x*qm| < 2^62


def q12_prescale(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HTP 8-bit requant multiplier (probe ``prescale``): ``m ~= mq * 2^-(g + 15)``, ``mq`` 12 bits.

    ``g`` is the integer with ``m * 2^g`` in ``[1/16, 1/8)`` (negative for ``m >= 1/8``) and
    ``mq = RHU(m * 2^(g + 15))`` in ``[2^11, 2^12]``; both exact in float64 (``frexp``: ``m = q * 2^e``,
    ``g = -3 - e``, ``mq = RHU(q * 2^12)``). The kernel then computes ``(2 * floor(acc / 2^g) + 1) * mq / 2^16``.
    """
    m = np.asarray(m, dtype=np.float64)
    assert np.all(m > 0) and np.all(np.isfinite(m)), "multipliers must be finite and > 0"
    q, e = np.frexp(m)
    mq = np.floor(q * 2.0**12 + 0.5).astype(np.int64)  # q * 2^12 is exact: this is RHU
    return mq, (-3 - e).astype(np.int64)


def prescaled_requant(x: np.ndarray, mq: np.ndarray, g: np.ndarray, rounding: str) -> np.ndarray:
    """``R((2 * floor(x / 2^g) + 1) * mq / 2^16)``: the midpoint of ``x``'s ``2^g``-wide step times ``mq``.

    For ``g < 0`` the step is ``x * 2^-g`` (exact). ``(2k + 1) * mq`` never ends in ``2^15`` followed by zeros
    (``mq < 2^12``), so no value is a tie and ``rounding`` never decides. Steps are clipped to ``+-2^40``
    first, which saturates every output code anyway and keeps the product inside int64.
    """
    x, g = _i64(x), _i64(g)
    left = np.minimum(np.maximum(-g, 0), 40)  # any nonzero x shifted by 40 already saturates
    bound = np.int64(1) << (40 - left)
    step = np.where(g >= 0, x >> np.maximum(g, 0), np.clip(x, -bound, bound) << left)
    return rounding_right_shift((2 * step + 1) * _i64(mq), 16, rounding, overwrite=True)


def hexnn_recip(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hexagon NN supernode multiplier: unnormalised Q31 ``recip`` and left shift ``shamt``.

    All in float32 as in ``supernode_utils.h``: ``shamt = 0`` if ``M <= 1`` else the ``frexp`` exponent of M;
    ``recip = min(RHAZ(ldexp(M, 31 - shamt)), 2^31 - 1)``. For ``M < 1`` recip is not normalised, so its
    precision is ``2^-31 / M`` relative (e.g. 11 bits at M = 1e-6).
    """
    m32 = np.asarray(m, dtype=np.float32)
    _, exp = np.frexp(m32)
    shamt = np.where(m32 <= 1.0, 0, exp).astype(np.int64)
    scaled = np.ldexp(m32, (31 - shamt).astype(np.int32))  # exact power-of-two scaling in float32
    recip = np.minimum(round_to_int(scaled, "half_away"), INT32_MAX)
    return recip, shamt


def q15_gain(m: np.ndarray, truncate: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Hexagon NN 16-bit gain: ``m ~= g / 2^right`` with ``g < 2^15``.

    For ``m < 1``: ``g = sat16(R(m * 2^15))``, ``right = 15`` (unnormalised, as ``nn_requantize_qu8_to_qu8``).
    For ``m >= 1``: ``e`` = ``frexp`` exponent, ``g = R(m * 2^(15 - e))``, ``right = 15 - e``.
    ``R`` is half away
    (``roundf``) or, with ``truncate``, toward zero (the ``(int)`` cast of the concat / scaled-copy gains).
    Computed in float32 like the C code.
    """
    m32 = np.asarray(m, dtype=np.float32)
    _, exp = np.frexp(m32)
    e = np.where(m32 < 1.0, 0, exp).astype(np.int64)
    scaled = np.ldexp(m32, (15 - e).astype(np.int32))
    g = round_to_int(scaled, "trunc" if truncate else "half_away")
    return np.minimum(g, INT16_MAX), 15 - e
