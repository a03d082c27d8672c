"""(f) Activation probes: every input code through one activation, against ``f(dequant(q))`` quantized.

Rational activations (HardSwish, HardSigmoid, LeakyRelu, Relu) also get exact candidates, so ties are
real ties; the dyadic encodings (scales 2^-5 in, 2^-4 out) make HardSwish hit exact .5 values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from qdiverge.probes.arith import ProbeResult, clamp, code_candidates, round_float
from qdiverge.probes.graph import QdqGraph, QParams
from qdiverge.probes.runner import try_run_codes

_erf = np.frompyfunc(math.erf, 1, 1)


def erf(x: np.ndarray) -> np.ndarray:
    return _erf(np.asarray(x, np.float64)).astype(np.float64)


def hard(x, alpha, beta):
    """``clip(alpha*x + beta, 0, 1)`` for floats or Fractions."""
    return min(max(alpha * x + beta, 0), 1) if isinstance(x, Fraction) else np.clip(alpha * x + beta, 0, 1)


F32_SIXTH = Fraction(float(np.float32(1 / 6)))
F32_LEAK = Fraction(float(np.float32(0.01)))


@dataclass(frozen=True)
class Act:
    """One ONNX activation: float64 formula, exact formula when rational, attributes, input range."""

    op: str
    f: Callable[[np.ndarray], np.ndarray]
    exact: Callable[[Fraction], Fraction] | None = None
    attrs: dict = field(default_factory=dict)
    x_range: tuple[float, float] = (-6.4, 6.35)


ACTS = {
    "HardSwish": Act(
        "HardSwish", lambda x: x * hard(x, 1 / 6, 0.5), lambda x: x * hard(x, Fraction(1, 6), Fraction(1, 2))
    ),
    "HardSigmoid": Act(
        "HardSigmoid",
        lambda x: hard(x, float(F32_SIXTH), 0.5),
        lambda x: hard(x, F32_SIXTH, Fraction(1, 2)),
        {"alpha": float(F32_SIXTH), "beta": 0.5},
    ),
    "Sigmoid": Act("Sigmoid", lambda x: 1 / (1 + np.exp(-x))),
    "Tanh": Act("Tanh", np.tanh),
    "Erf": Act("Erf", erf, x_range=(-3.2, 3.2)),
    "Gelu": Act("Gelu", lambda x: 0.5 * x * (1 + erf(x / math.sqrt(2)))),
    "Exp": Act("Exp", np.exp, x_range=(-5.0, 2.0)),
    "Elu": Act("Elu", lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0)))),
    "Softplus": Act("Softplus", lambda x: np.log1p(np.exp(x))),
    "LeakyRelu": Act(
        "LeakyRelu",
        lambda x: np.where(x >= 0, x, float(F32_LEAK) * x),
        lambda x: x if x >= 0 else F32_LEAK * x,
        {"alpha": float(F32_LEAK)},
    ),
    "Relu": Act("Relu", lambda x: np.maximum(x, 0), lambda x: max(x, Fraction(0))),
}


def range_qparams(lo: float, hi: float, dtype: str) -> QParams:
    """An asymmetric encoding covering ``[min(lo, 0), max(hi, 0)]`` (AIMET/QNN style)."""
    levels = 255 if dtype == "uint8" else 65535
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = float(np.float32((hi - lo) / levels))
    return QParams(scale, int(np.clip(round(-lo / scale), 0, levels)), dtype)


def probe_act(
    act: Act, x_qp: QParams, out_qp: QParams | None, arch: int, label: str, codes: np.ndarray | None = None
) -> ProbeResult:
    """Input codes (default: all) through ``act``; float64 candidates, and exact ones if rational."""
    if codes is None:
        codes = np.arange(x_qp.qmin, x_qp.qmax + 1)
    x_s = Fraction(float(x_qp.scales[0]))
    zp = int(x_qp.zero_points[0])
    x = (codes.astype(np.float64) - zp) * float(x_s)
    y = np.asarray(act.f(x), np.float64)
    if out_qp is None:
        out_qp = range_qparams(float(y.min()), float(y.max()), x_qp.dtype)
    g = QdqGraph(act.op)
    xin = g.code_input("x", (1, codes.size), x_qp)
    g.output(g.op(act.op, [xin], "y", **act.attrs), out_qp)
    got = try_run_codes(g, {"x": codes.astype(np.dtype(x_qp.dtype)).reshape(1, -1)}, arch)
    name = f"{act.op} {label}"
    out_s = float(out_qp.scales[0])
    note = f"in scale {float(x_s):.6g} zp {zp}; out scale {out_s:.6g} zp {out_qp.zero_point}"
    if isinstance(got, str):
        return ProbeResult(name, "rejected", np.zeros(0, np.int64), {}, notes=[got])
    exact = None
    if act.exact is not None:
        ys = [act.exact((int(c) - zp) * x_s) for c in codes]
        exact = (np.array([v.numerator for v in ys], object), np.array([v.denominator for v in ys], object))
    cands = code_candidates(out_qp, exact, y)
    levels = 2 ** (8 * np.dtype(out_qp.dtype).itemsize)
    for r in ("RNE", "RHAZ"):  # htp_observations: a16 HardSigmoid writes f(x) at a fixed scale 1/65536
        cands[f"fixed scale 1/{levels}/{r}"] = clamp(round_float(y * levels, r), out_qp.qmin, out_qp.qmax)
    return ProbeResult(
        name, "activation table", got.ravel(), cands, y / out_s, lambda i: f"code {codes[i]}", [note]
    )


DYADIC_IN = QParams(2.0**-5, 128, "uint8")
DYADIC_OUT = QParams(2.0**-4, 8, "uint8")


def probe_luts(arch: int) -> list[ProbeResult]:
    """(f) 8-bit: all 256 codes per activation, AIMET-like range encodings plus a dyadic tie case."""
    results = []
    for act in ACTS.values():
        lo, hi = act.x_range
        results.append(probe_act(act, range_qparams(lo, hi, "uint8"), None, arch, "u8 range"))
    for name in ("HardSwish", "LeakyRelu", "Relu"):
        results.append(probe_act(ACTS[name], DYADIC_IN, DYADIC_OUT, arch, "u8 dyadic 2^-5 -> 2^-4 zp 8"))
    return results


def probe_luts16(arch: int) -> list[ProbeResult]:
    """(f) a16: all 65,536 uint16 codes; HardSigmoid also with a declared [0, 0.588] output encoding."""
    results = []
    for name in ("HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "Gelu", "Elu", "LeakyRelu"):
        act = ACTS[name]
        results.append(probe_act(act, range_qparams(*act.x_range, "uint16"), None, arch, "u16 range"))
    hs = ACTS["HardSigmoid"]
    gate = QParams(float(np.float32(0.588 / 65535)), 0, "uint16")
    results.append(probe_act(hs, range_qparams(*hs.x_range, "uint16"), gate, arch, "u16 out [0, 0.588]"))
    return results
