"""Table activations over every input code: equal to the exact function rounded per profile (mpmath for
transcendental functions, fractions for rational ones), and to ONNX Runtime's QLinearSigmoid."""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import numpy as np
import pytest
from kernel_harness import (
    ORT_PROFILE,
    SINGLE_PROFILE,
    bind,
    enc,
    ort_run,
    q31,
    qparams,
    round_fraction,
    run_kernel,
    s_z,
)

from qdiverge.profiles.schema import LutSpec, Profile

mpmath.mp.prec = 200


def _mp(x: Fraction) -> mpmath.mpf:
    return mpmath.mpf(x.numerator) / x.denominator


TRANSCENDENTAL = {
    "Sigmoid": lambda x: 1 / (1 + mpmath.exp(-x)),
    "Tanh": mpmath.tanh,
    "Erf": mpmath.erf,
    "Gelu": lambda x: x / 2 * (1 + mpmath.erf(x / mpmath.sqrt(2))),
    "Exp": mpmath.exp,
    "Elu": lambda x: x if x > 0 else mpmath.exp(x) - 1,
    "Softplus": lambda x: mpmath.log(1 + mpmath.exp(x)),
    "Sqrt": lambda x: mpmath.sqrt(max(x, 0)),
    "Log": lambda x: mpmath.log(x) if x > 0 else -mpmath.inf,
}
RATIONAL = {
    "HardSwish": lambda x: x * min(max(x + 3, Fraction(0)), Fraction(6)) / 6,
    "HardSigmoid": lambda x: min(max(Fraction(0.2) * x + Fraction(0.5), Fraction(0)), Fraction(1)),
}


def _round_mp(v: mpmath.mpf, rounding: str) -> int:
    """Round a 200-bit value; an exact tie cannot occur for these transcendental values at these inputs."""
    f = int(mpmath.floor(v))
    rem = v - f
    assert abs(rem - mpmath.mpf(0.5)) > mpmath.mpf(2) ** -100, "input too close to a tie to decide"
    return f + 1 if rem > 0.5 else f


def _expected(op, e_in, e_out, rounding):
    s_in, z_in = Fraction(float(e_in.scale[0])), int(e_in.zero_point[0])
    s_out, z_out = Fraction(float(e_out.scale[0])), int(e_out.zero_point[0])
    out = []
    for q in range(e_in.qmin, e_in.qmax + 1):
        x = s_in * (q - z_in)
        if op in RATIONAL:
            code = round_fraction(RATIONAL[op](x) / s_out, rounding)
        else:
            y = TRANSCENDENTAL[op](_mp(x))
            if mpmath.isinf(y) or abs(y / _mp(s_out)) > 2**40:
                code = e_out.qmin - z_out if y < 0 else e_out.qmax - z_out
            else:
                code = _round_mp(y / _mp(s_out), rounding)
        out.append(min(max(code + z_out, e_out.qmin), e_out.qmax))
    return np.array(out)


def _profile(rounding: str, compute: str = "float64") -> Profile:
    return Profile(name="lut-test", lut=LutSpec(rounding=rounding, compute=compute))


CASES = [
    (enc(0.05, 128), enc(1 / 255, 0)),
    (enc(0.031, -20, signed=True), enc(0.02, 5, signed=True)),
]


@pytest.mark.parametrize("rounding", ["half_even", "half_away"])
@pytest.mark.parametrize("op", sorted(TRANSCENDENTAL) + sorted(RATIONAL))
def test_8bit_table_equals_exact_function_rounded(op, rounding):
    for e_in, e_out in CASES:
        x = np.arange(e_in.qmin, e_in.qmax + 1)
        got = run_kernel(bind(op, [e_in], [e_out], _profile(rounding)), x)
        assert np.array_equal(got, _expected(op, e_in, e_out, rounding)), (op, e_in.describe())


@pytest.mark.parametrize("op", ["Sigmoid", "Tanh", "HardSwish"])
def test_16bit_table_covers_all_65536_codes(op):
    e_in, e_out = enc(0.0002, 30000, 16), enc(3.1e-5, 32768 - 100, 16)
    x = np.arange(65536)
    got = run_kernel(bind(op, [e_in], [e_out], _profile("half_even")), x)
    assert np.array_equal(got, _expected(op, e_in, e_out, "half_even"))
    # the kernel is a table look-up: any tensor shape maps element by element
    shaped = np.random.default_rng(2).integers(0, 65536, (3, 5, 7))
    assert np.array_equal(run_kernel(bind(op, [e_in], [e_out], _profile("half_even")), shaped), got[shaped])


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("s_in, z_in", [(0.05, 20), (0.1, 128), (0.031, 200), (0.2, 0)])
def test_sigmoid_float32_table_equals_ort_qlinearsigmoid(signed, s_in, z_in, jit):
    e_in = enc(s_in, z_in - 128 * signed, signed=signed)
    e_out = enc(1 / 256, -128 * signed, signed=signed)
    x = np.arange(e_in.qmin, e_in.qmax + 1)
    want = ort_run(
        "QLinearSigmoid", [("X", x.astype(e_in.storage_dtype)), *qparams("X", e_in), *qparams("Y", e_out)]
    )
    got = run_kernel(bind("Sigmoid", [e_in], [e_out], ORT_PROFILE), x)
    assert np.array_equal(got, want[0].astype(np.int64))


@pytest.mark.parametrize("bits, signed, axis", [(8, False, -1), (8, True, 1), (16, False, -1)])
def test_softmax_equals_its_exact_table_and_division(bits, signed, axis):
    """exp table of (max - q) in float64 with RNE, then one half-up rounding of E / (S * s_out)."""
    qmin = -(1 << (bits - 1)) if signed else 0
    e_in = enc(0.07 if bits == 8 else 0.0004, qmin + 20, bits, signed)
    e_out = enc(1 / 256 if bits == 8 else 1 / 65536, qmin, bits, signed)
    x = np.random.default_rng(7).integers(qmin, qmin + (1 << bits), (2, 5, 9))
    profile = Profile(
        name="sm", rescale=SINGLE_PROFILE.rescale, lut=LutSpec(rounding="half_even", compute="float64")
    )
    got = run_kernel(bind("Softmax", [e_in], [e_out], profile, {"axis": axis}, shapes=[x.shape]), x)
    s_in, (s_out, z_out) = float(e_in.scale[0]), s_z(e_out)
    qm, shift = q31(1 / float(s_out))
    frac_bits = min(24, 31 + shift - math.ceil(math.log2(x.shape[axis])) - 1)
    rows = np.moveaxis(x, axis, -1)
    want = np.zeros(rows.shape, dtype=np.int64)
    for idx in np.ndindex(rows.shape[:-1]):
        row = [int(v) for v in rows[idx]]
        table = [round(math.exp(-s_in * (max(row) - v)) * 2**frac_bits) for v in row]  # Python round: RNE
        total = sum(table)
        want[idx] = [
            min(
                max(round_fraction(Fraction(t * qm, total << (31 - shift)), "half_up") + z_out, e_out.qmin),
                e_out.qmax,
            )
            for t in table
        ]
    assert np.array_equal(got, np.moveaxis(want, -1, axis))
    real = np.moveaxis(want, -1, axis).astype(np.float64) - z_out
    assert np.allclose(real.sum(axis=axis) * float(s_out), 1.0, atol=x.shape[axis] * float(s_out))
