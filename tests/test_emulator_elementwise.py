"""Element-wise kernels, bit for bit: ONNX Runtime's QLinearAdd / QLinearMul / QLinearLeakyRelu for the
ORT-modelled profile, exact rational arithmetic (fractions) for the fixed-point schemes."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from kernel_harness import (
    ORT_PROFILE,
    SINGLE_PROFILE,
    TFLITE_PROFILE,
    bind,
    enc,
    ort_run,
    q31,
    qparams,
    round_fraction,
    run_kernel,
    s_z,
)

from qdiverge.profiles.schema import Profile
from qdiverge.quant import quantize_aimet

# the §2.5 example encodings (int8), plus a uint8 set with a large scale ratio
ENCODINGS = [
    (enc(0.0371, -5, signed=True), enc(0.0213, 12, signed=True), enc(0.0467, -9, signed=True)),
    (enc(0.1, 128), enc(0.0031, 7), enc(0.047, 60)),
]


def all_pairs(e: object) -> tuple[np.ndarray, np.ndarray]:
    codes = np.arange(e.qmin, e.qmax + 1)  # type: ignore[attr-defined]
    return np.repeat(codes, codes.size), np.tile(codes, codes.size)


@pytest.mark.parametrize("ea, eb, eo", ENCODINGS)
def test_add_float_method_equals_ort_qlinearadd_on_all_pairs(ea, eb, eo):
    a, b = all_pairs(ea)
    dt = ea.storage_dtype
    want = ort_run(
        "QLinearAdd",
        [("A", a.astype(dt)), *qparams("A", ea), ("B", b.astype(dt)), *qparams("B", eb), *qparams("C", eo)],
    )[0]
    got = run_kernel(bind("Add", [ea, eb], [eo], ORT_PROFILE), a, b)
    assert np.array_equal(got, want.astype(np.int64))


@pytest.mark.parametrize("ea, eb, eo", ENCODINGS)
def test_mul_float_spec_equals_ort_qlinearmul_on_all_pairs(ea, eb, eo):
    a, b = all_pairs(ea)
    eo = enc(float(eo.scale[0]) * 0.05, int(eo.zero_point[0]), signed=eo.signed)  # keep products in range
    dt = ea.storage_dtype
    want = ort_run(
        "QLinearMul",
        [("A", a.astype(dt)), *qparams("A", ea), ("B", b.astype(dt)), *qparams("B", eb), *qparams("C", eo)],
    )[0]
    got = run_kernel(bind("Mul", [ea, eb], [eo], ORT_PROFILE), a, b)
    assert np.array_equal(got, want.astype(np.int64))


def _exact_sum_code(x1, x2, ea, eb, eo, sign, rounding):
    (s1, z1), (s2, z2), (so, zo) = s_z(ea), s_z(eb), s_z(eo)
    v = (s1 * (x1 - z1) + sign * s2 * (x2 - z2)) / so
    return min(max(round_fraction(v, rounding) + zo, eo.qmin), eo.qmax)


@pytest.mark.parametrize("sign, op", [(1, "Add"), (-1, "Sub")])
def test_tflite_add_sub_equal_exact_rational_on_all_pairs(sign, op):
    """§2.5: with 20 bits of headroom TFLite's three roundings equal one exact rounding on every pair."""
    ea, eb, eo = ENCODINGS[0]
    a, b = all_pairs(ea)
    got = run_kernel(bind(op, [ea, eb], [eo], TFLITE_PROFILE), a, b)
    want = [_exact_sum_code(int(x), int(y), ea, eb, eo, sign, "half_even") for x, y in zip(a, b, strict=True)]
    assert np.array_equal(got, np.array(want))


def _srdhm(a: int, b: int) -> int:
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    q = abs(ab + nudge) >> 31
    return q if ab + nudge >= 0 else -q


def _mbqm(x: int, m: float) -> int:
    """TFLite reference MultiplyByQuantizedMultiplier (double rounding), written with Python ints."""
    qm, shift = q31(m)
    left, right = max(shift, 0), max(-shift, 0)
    h = _srdhm(x * (1 << left), qm)
    return round_fraction(Fraction(h, 1 << right), "half_away")


def test_tflite_add_equals_scalar_reference_with_int16_inputs():
    """16-bit: left shift 14 (min(20, 30 - 16)); the kernel equals add.h's formula in Python ints."""
    ea, eb, eo = enc(0.00041, 700, 16, True), enc(0.00093, -1500, 16, True), enc(0.0011, 30, 16, True)
    rng = np.random.default_rng(0)
    a, b = rng.integers(-32768, 32768, 4000), rng.integers(-32768, 32768, 4000)
    got = run_kernel(bind("Add", [ea, eb], [eo], TFLITE_PROFILE), a, b)
    (s1, z1), (s2, z2), (so, zo) = ((float(e.scale[0]), int(e.zero_point[0])) for e in (ea, eb, eo))
    twice = 2 * max(s1, s2)
    want = []
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        r = _mbqm((x - z1) << 14, s1 / twice) + _mbqm((y - z2) << 14, s2 / twice)
        want.append(min(max(_mbqm(r, twice / ((1 << 14) * so)) + zo, -32768), 32767))
    assert np.array_equal(got, np.array(want))


def test_hexagon_nn_add_is_within_one_lsb_of_exact_and_matches_its_formula():
    ea, eb, eo = (enc(float(e.scale[0]), int(e.zero_point[0]) + 128) for e in ENCODINGS[0])  # as uint8
    a, b = all_pairs(ea)
    profile = Profile(name="hexnn-test", eltwise_method="hexagon_nn")
    got = run_kernel(bind("Add", [ea, eb], [eo], profile), a, b)
    exact = np.array(
        [_exact_sum_code(int(x), int(y), ea, eb, eo, 1, "half_even") for x, y in zip(a, b, strict=True)]
    )
    assert np.abs(got - exact).max() <= 1
    assert 0 < np.count_nonzero(got != exact) < 0.01 * a.size  # §4.5 measured 0.3 %
    # the op_add_d32.c recipe, scalar, with float32 prepare
    f32 = np.float32
    out_scl = f32(1) / f32(eo.scale[0])
    af, bf = out_scl * f32(ea.scale[0]), out_scl * f32(eb.scale[0])
    rsh = min(6 - int(np.frexp(f32((af + bf) * f32(16384 / 16380)))[1]), 7)
    a_sc = int(np.floor(float(af * f32(2**rsh * 256)) + 0.5))
    b_sc = int(np.floor(float(bf * f32(2**rsh * 256)) + 0.5))
    za, zb, zo = (int(e.zero_point[0]) for e in (ea, eb, eo))
    offset = int(np.floor(zo * 2**rsh + 0.5)) - ((za * a_sc + zb * b_sc) >> 8)
    for x, y, g in zip(a[::97].tolist(), b[::97].tolist(), got[::97].tolist(), strict=True):
        p = min(max(((x * a_sc + y * b_sc) >> 8) + offset, -32768), 32767)
        assert g == min(max((p + (1 << rsh >> 1)) >> rsh, 0), 255)


def test_div_is_one_exact_rounding_of_the_q31_rational():
    ea, eb, eo = enc(0.05, 3, signed=True), enc(0.02, -10, signed=True), enc(0.3, 0, signed=True)
    a, b = all_pairs(ea)
    got = run_kernel(bind("Div", [ea, eb], [eo], SINGLE_PROFILE), a, b)
    (sa, za), (sb, zb), (so, zo) = s_z(ea), s_z(eb), s_z(eo)
    qm, shift = q31(float(sa) / (float(sb) * float(so)))
    for x, y, g in zip(a.tolist(), b.tolist(), got.tolist(), strict=True):
        if y == zb:
            want = 127 if x > za else -128 if x < za else zo
        else:
            v = Fraction((x - za) * qm, (y - zb) * (1 << (31 - shift)))
            want = min(max(round_fraction(v, "half_up") + zo, -128), 127)
        assert g == want, (x, y)


@pytest.mark.parametrize("profile", [SINGLE_PROFILE, TFLITE_PROFILE])
def test_relu_and_clip_equal_exact_rescale_then_clamp(profile):
    e_in, e_out = enc(0.04, 20), enc(0.03, 5)
    x = np.arange(256)
    (si, zi), (so, zo) = s_z(e_in), s_z(e_out)
    rnd = profile.rescale.rounding
    m = float(np.float64(float(si)) / np.float64(float(so)))
    qm, shift = q31(m, cap_shift=not profile.rescale.double_rounding)
    if profile.rescale.double_rounding:
        base = [_mbqm(int(v - zi), m) for v in x]
    else:
        base = [round_fraction(Fraction((int(v) - zi) * qm, 1 << (31 - shift)), rnd) for v in x]
    relu = run_kernel(bind("Relu", [e_in], [e_out], profile), x)
    assert relu.tolist() == [min(max(v + zo, zo), 255) for v in base]
    lo = zo + round_fraction(Fraction(-0.5) / so, rnd)
    hi = zo + round_fraction(Fraction(6.0) / so, rnd)
    clip = run_kernel(
        bind(
            "Clip", [e_in, None, None], [e_out], profile, constants=[None, np.float32(-0.5), np.float32(6.0)]
        ),
        x,
    )
    assert clip.tolist() == [min(max(v + zo, lo, 0), hi, 255) for v in base]


def test_relu_on_a_shared_encoding_is_a_clamp_at_the_zero_point():
    e = enc(0.1, -3, signed=True)
    x = np.arange(-128, 128)
    assert np.array_equal(run_kernel(bind("Relu", [e], [e], SINGLE_PROFILE), x), np.maximum(x, -3))


@pytest.mark.parametrize("signed", [False, True])
def test_leaky_relu_table_equals_ort_qlinearleakyrelu(signed):
    e_in = enc(0.05, 20 - 128 * signed, signed=signed)
    e_out = enc(0.031, 60 - 128 * signed, signed=signed)
    x = np.arange(e_in.qmin, e_in.qmax + 1)
    want = ort_run(
        "QLinearLeakyRelu",
        [("X", x.astype(e_in.storage_dtype)), *qparams("X", e_in), *qparams("Y", e_out)],
        {"alpha": 0.13},
    )[0]
    got = run_kernel(bind("LeakyRelu", [e_in], [e_out], ORT_PROFILE, {"alpha": 0.13}), x)
    assert np.array_equal(got, want.astype(np.int64))


@pytest.mark.parametrize("alpha", [0.1, -0.7, 0.0])
def test_leaky_relu_two_multipliers_equal_exact_q31_rounding(alpha):
    e_in, e_out = enc(0.05, 20), enc(0.031, 60)
    x = np.arange(256)
    got = run_kernel(bind("LeakyRelu", [e_in], [e_out], SINGLE_PROFILE, {"alpha": alpha}), x)
    (si, zi), (so, zo) = s_z(e_in), s_z(e_out)
    for v, g in zip(x.tolist(), got.tolist(), strict=True):
        slope = 1.0 if v >= zi else alpha
        if slope == 0.0:
            want = zo
        else:
            m = abs(slope) * float(si) / float(so)
            qm, shift = q31(m, cap_shift=True)
            r = Fraction((v - zi) * (1 if slope > 0 else -1) * qm, 1 << (31 - shift))
            want = round_fraction(r, "half_up") + zo
        assert g == min(max(want, 0), 255), v


def test_prelu_per_channel_slopes_use_the_quantized_slope():
    e_in, e_out = enc(0.05, 128), enc(0.04, 100)
    slope = np.array([0.25, -0.5, 0.0, 0.25], dtype=np.float32).reshape(4, 1, 1)
    e_slope = enc(1 / 127, 0, signed=True)
    x = np.random.default_rng(1).integers(0, 256, (2, 4, 3, 3))
    b = bind(
        "PRelu",
        [e_in, None],
        [e_out],
        SINGLE_PROFILE,
        constants=[None, slope],
        param_encodings=[None, e_slope],
    )
    got = run_kernel(b, x)
    (si, zi), (so, zo) = s_z(e_in), s_z(e_out)
    q_slope = quantize_aimet(slope, e_slope).ravel().tolist()  # the codes AIMET fake-quant gives the slope
    for idx in np.ndindex(x.shape):
        v = int(x[idx]) - zi
        # the slope as AIMET dequantizes it: float32 scale * code
        real_slope = 1.0 if v >= 0 else float(np.float32(1 / 127) * np.float32(q_slope[idx[1]]))
        if real_slope == 0.0:
            want = zo
        else:
            m = abs(real_slope) * float(si) / float(so)
            qm, shift = q31(m, cap_shift=True)
            want = (
                round_fraction(Fraction(v * (1 if real_slope > 0 else -1) * qm, 1 << (31 - shift)), "half_up")
                + zo
            )
        assert got[idx] == min(max(want, 0), 255), idx
