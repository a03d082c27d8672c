"""fixed_point / requant against hand-computed gemmlowp cases and exact rational arithmetic."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qdiverge.encodings.schema import make_encoding
from qdiverge.engines.emulator import fixed_point as fx
from qdiverge.engines.emulator.requant import apply_requant, prepare_requant, quantize_float
from qdiverge.profiles.schema import RequantSpec


def test_issue_25087_example_double_12_single_11():
    qm, shift = np.int64(1583594044), np.int64(-9)
    assert int(fx.mbqm_double(np.array([7984]), qm, shift)[0]) == 12
    assert int(fx.mbqm_single(np.array([7984]), qm, shift)[0]) == 11


def test_tie_table_m_quarter():
    # dsp_arithmetic.md §2.3: M = 0.25 (qm = 2^30, shift = -1); acc*M = 1.5, 2.5, -1.5, -2.5
    acc = np.array([6, 10, -6, -10])
    assert fx.mbqm_double(acc, 1 << 30, -1).tolist() == [2, 3, -2, -3]
    assert fx.mbqm_single(acc, 1 << 30, -1).tolist() == [2, 3, -1, -2]
    assert fx.rounding_right_shift(acc, 2, "half_even").tolist() == [2, 2, -2, -2]


@pytest.mark.parametrize(
    ("rounding", "expected"),
    [
        ("half_up", [2, 3, -1, -2, 1, -1]),
        ("half_away", [2, 3, -2, -3, 1, -1]),
        ("half_even", [2, 2, -2, -2, 1, -1]),
        ("floor", [1, 2, -2, -3, 1, -2]),
        ("trunc", [1, 2, -1, -2, 1, -1]),
    ],
)
def test_rounding_rules_on_halves(rounding, expected):
    x = np.array([3, 5, -3, -5, 3, -3])  # /2: 1.5, 2.5, -1.5, -2.5 (ties)
    n = np.array([1, 1, 1, 1, 1, 1])
    x[4:] = [5, -5]
    n[4:] = 2  # 1.25, -1.25: not ties
    assert fx.rounding_right_shift(x, n, rounding).tolist() == expected
    assert fx.rounding_divide(x, 1 << n, rounding).tolist() == expected
    assert fx.round_to_int(x / (1 << n).astype(np.float64), rounding).tolist() == expected


def test_srdhm_is_half_up_with_single_saturation():
    assert fx.srdhm(np.array([-(1 << 30)]), np.array([1])).tolist() == [0]  # -0.5 -> 0 (C division truncates)
    assert fx.srdhm(np.array([1 << 30]), np.array([1])).tolist() == [1]
    assert fx.srdhm(np.array([fx.INT32_MIN]), np.array([fx.INT32_MIN])).tolist() == [fx.INT32_MAX]


def test_quantize_multiplier_edges():
    qm, shift = fx.quantize_multiplier(np.array([0.25, 1.0, 2.0**-40, 0.0, 2.0**40]), cap_shift=True)
    assert qm.tolist() == [1 << 30, 1 << 30, 0, 0, fx.INT32_MAX]
    assert shift.tolist() == [-1, 1, 0, 0, 30]
    # rounding q * 2^31 up to 2^31 renormalises
    qm, shift = fx.quantize_multiplier(np.array([1.0 - 2.0**-33]))
    assert (int(qm[0]), int(shift[0])) == (1 << 30, 1)


def test_hexnn_recip_and_q15():
    recip, shamt = fx.hexnn_recip(np.array([0.5, 3.0, 1e-6]))
    assert shamt.tolist() == [0, 2, 0]
    assert recip.tolist() == [1 << 30, 3 << 29, round(float(np.float32(1e-6)) * 2**31)]
    g, right = fx.q15_gain(np.array([0.3, 0.3]), truncate=False)
    assert g.tolist()[0] == round(float(np.float32(0.3)) * 2**15) and right.tolist() == [15, 15]
    g, _ = fx.q15_gain(np.array([0.3]), truncate=True)
    assert g.tolist() == [math.floor(float(np.float32(0.3)) * 2**15)]


def test_wrap_and_saturate():
    x = np.array([2**31, -(2**31) - 1, 5])
    assert fx.wrap_int32(x).tolist() == [-(2**31), 2**31 - 1, 5]
    assert fx.saturate_int32(x).tolist() == [2**31 - 1, -(2**31), 5]


def _rhu(fr: Fraction) -> int:
    return math.floor(fr + Fraction(1, 2))


@settings(max_examples=300, deadline=None)
@given(
    acc=st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=8),
    m=st.floats(1e-9, 30.0, allow_nan=False),
    zp=st.integers(-128, 255),
    signed=st.booleans(),
)
def test_q31_single_rounding_equals_exact_rational(acc, m, zp, signed):
    qmin, qmax = (-128, 127) if signed else (0, 255)
    params = prepare_requant(np.array([m]), RequantSpec(multiplier="q31", rounding="half_up"), zp)
    got = apply_requant(np.array(acc, dtype=np.int64), params, qmin, qmax)
    qm, shift = int(params.multiplier[0]), 31 - int(params.right_shift[0])
    for a, y in zip(acc, got.tolist(), strict=True):
        exact = _rhu(Fraction(a) * qm / Fraction(2) ** (31 - shift)) + zp
        assert qmin <= y <= qmax
        assert y == min(qmax, max(qmin, exact))


@settings(max_examples=200, deadline=None)
@given(
    acc=st.lists(st.integers(-(2**24), 2**24), min_size=1, max_size=8),
    m=st.floats(1e-6, 4.0, allow_nan=False),
    form=st.sampled_from(["q31_unnormalized", "q15", "q15_truncated", "q12_prescaled", "float32", "float64"]),
    rounding=st.sampled_from(["half_up", "half_away", "half_even", "floor", "trunc"]),
)
def test_every_form_stays_in_range(acc, m, form, rounding):
    spec = RequantSpec(
        multiplier=form, rounding=rounding, zero_point="folded" if form == "q31_unnormalized" else "after"
    )
    got = apply_requant(np.array(acc, dtype=np.int64), prepare_requant(np.array([m]), spec, 7), 0, 255)
    assert got.min() >= 0 and got.max() <= 255


def _round_fraction(fr: Fraction, rounding: str) -> int:
    """The documented tie rules, on exact rationals (independent of fixed_point's integer tricks)."""
    if rounding == "half_up":
        return math.floor(fr + Fraction(1, 2))
    if rounding == "half_away":
        return int(math.copysign(math.floor(abs(fr) + Fraction(1, 2)), fr))
    if rounding == "half_even":
        return round(fr)  # Fraction.__round__ is round-half-even
    return math.floor(fr) if rounding == "floor" else math.trunc(fr)


@settings(max_examples=50, deadline=None)
@given(
    acc=st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=8),
    m=st.floats(1e-6, 0.999, allow_nan=False),
    zp=st.integers(-128, 127),
    rounding=st.sampled_from(["half_up", "half_away", "half_even", "floor", "trunc"]),
)
def test_q31_double_rounding_equals_exact_rational(acc, m, zp, rounding):
    # gemmlowp: SRDHM (half up on x * qm / 2^31), then the profile's rule on a division by 2^right
    spec = RequantSpec(multiplier="q31", rounding=rounding, double_rounding=True)
    params = prepare_requant(np.array([m]), spec, zp)
    got = apply_requant(np.array(acc, dtype=np.int64), params, -128, 127)
    qm, right = int(params.multiplier[0]), int(params.right_shift[0])
    assert int(params.left_shift[0]) == 0  # m < 1
    for a, y in zip(acc, got.tolist(), strict=True):
        high = _rhu(Fraction(a * qm, 2**31))
        exact = _round_fraction(Fraction(high, 2**right), rounding) + zp
        assert y == min(127, max(-128, exact))


@settings(max_examples=50, deadline=None)
@given(
    x=st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=8),
    bw=st.integers(2, 16),
    signed=st.booleans(),
    scale=st.floats(float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max), width=32),
    offset_frac=st.floats(0.0, 1.0),
    rounding=st.sampled_from(["half_up", "half_away", "half_even", "floor", "trunc"]),
)
def test_quantize_float_saturates_and_rounds_exactly(x, bw, signed, scale, offset_frac, rounding):
    # any finite float32, even x / s far beyond int64, lands in [qmin, qmax] (the cast must not wrap)
    steps = (1 << bw) - 1
    offset = -round(offset_frac * steps)
    enc = make_encoding("t", bw, scale, offset, signed=signed)
    with np.errstate(over="ignore", invalid="ignore"):  # float32 overflow to inf is part of the arithmetic
        got = quantize_float(np.array(x, dtype=np.float32), enc, rounding).tolist()
        quotients = np.array(x, dtype=np.float32) / np.float32(scale)  # the documented float32 division
    for q, y in zip(quotients.tolist(), got, strict=True):
        r = _round_fraction(Fraction(q), rounding) if math.isfinite(q) else (steps + 1) * (1 if q > 0 else -1)
        assert y == min(steps, max(0, r - offset)) + enc.qmin


def _htp_prescaled(acc: int, m: Fraction, zp: int) -> int:
    """HTP's 8-bit requant as measured (probe ``prescale``), on exact rationals: find ``g`` with
    ``m * 2^g`` in ``[1/16, 1/8)``, a 12-bit ``mq``, then the midpoint of the accumulator's ``2^g`` step."""
    g = 0
    while m * 2**g < Fraction(1, 16):
        g += 1
    while m * 2**g >= Fraction(1, 8):
        g -= 1
    mq = math.floor(m * 2 ** (g + 15) + Fraction(1, 2))
    step = math.floor(Fraction(acc) / Fraction(2) ** g)
    return min(127, max(-128, math.floor(Fraction((2 * step + 1) * mq, 2**16) + Fraction(1, 2)) + zp))


def test_q12_prescaled_equals_exact_reference_and_rounds_ties_up():
    rng = np.random.default_rng(5)
    # per channel: dyadic (exact ties), g = 4 and g = 17 (coarse steps), a mantissa rounding up to 2^12,
    # and M >= 1/8 (left shifts)
    m = np.array([1 / 32, 0.5, 0.0055242, 2.54e-6, 4095.8 / 2**19, 0.16531836, 1.28, 300.0])
    acc = np.concatenate([np.arange(-4100, 4100), rng.integers(-(2**31), 2**31 - 1, 600)])
    acc = np.broadcast_to(acc, (m.size, acc.size)).T.copy()  # channels along axis 1
    params = prepare_requant(m, RequantSpec(multiplier="q12_prescaled", rounding="half_up"), -3)
    got = apply_requant(acc, params, -128, 127, axis=1)
    fr = [Fraction(float(v)) for v in m]
    want = np.array([[_htp_prescaled(int(a), fr[c], -3) for c in range(m.size)] for a in acc[:, 0]])
    np.testing.assert_array_equal(got, want)
    for c in (0, 1):  # dyadic M: every exact .5 tie rounds half up, as HTP's tie probe measured
        exact = [min(127, max(-128, math.floor(int(a) * fr[c] + Fraction(1, 2)) - 3)) for a in acc[:, 0]]
        np.testing.assert_array_equal(got[:, c], exact)
    # 16-bit outputs take the exact q31 path instead (HTP's a16 outputs matched exact)
    wide = prepare_requant(m, RequantSpec(multiplier="q12_prescaled"), 0, out_bits=16)
    q31 = prepare_requant(m, RequantSpec(multiplier="q31"), 0)
    np.testing.assert_array_equal(
        apply_requant(acc, wide, -(2**15), 2**15 - 1, axis=1),
        apply_requant(acc, q31, -(2**15), 2**15 - 1, axis=1),
    )


@pytest.mark.parametrize("rounding", ["half_up", "half_away", "half_even"])
def test_round_small_equals_general_rule_on_every_float16(rounding):
    """The one-floor forms for small values equal the tie-tested rules on all finite float16 values."""
    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    every = every[np.isfinite(every)].astype(np.float32)
    np.testing.assert_array_equal(
        fx.round_to_float(every, rounding), fx.round_to_int(every.astype(np.float64), rounding)
    )
