"""(g) Binary element-wise probes: all 65,536 uint8 code pairs through Add, Sub and Mul.

Two encoding sets: "mixed" scales with many mantissa bits (multiplier precision shows up) and "dyadic"
power-of-two scales (exact .5 ties are frequent, so the tie rule shows up).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from qdiverge.probes.arith import (
    ProbeResult,
    as_objects,
    code_candidates,
    offset_bounds,
    ratio_lsb,
    requant_ratio,
)
from qdiverge.probes.graph import QdqGraph, QParams
from qdiverge.probes.runner import try_run_codes


def code_pairs(qp: QParams) -> tuple[np.ndarray, np.ndarray]:
    """Every (a, b) pair of codes of ``qp``'s dtype, flattened."""
    codes = np.arange(qp.qmin, qp.qmax + 1, dtype=np.int64)
    return np.repeat(codes, codes.size), np.tile(codes, codes.size)


def exact_binary(op: str, a: np.ndarray, b: np.ndarray, qa: QParams, qb: QParams) -> tuple[np.ndarray, int]:
    """``dequant(a) op dequant(b)`` as exact ``(num, den)`` from the float32 scales."""
    (sa,), (sb,) = qa.fractions(), qb.fractions()
    da = as_objects(a - int(qa.zero_points[0]))
    db = as_objects(b - int(qb.zero_points[0]))
    if op == "Mul":
        return da * db * (sa.numerator * sb.numerator), sa.denominator * sb.denominator
    sign = -1 if op == "Sub" else 1
    num = da * (sa.numerator * sb.denominator) + sign * db * (sb.numerator * sa.denominator)
    return num, sa.denominator * sb.denominator


def binary_graph(op: str, n: int, qa: QParams, qb: QParams, out: QParams) -> QdqGraph:
    g = QdqGraph(op)
    a = g.code_input("a", (1, n), qa)
    b = g.code_input("b", (1, n), qb)
    g.output(g.op(op, [a, b], "y"), out)
    return g


ENCODINGS = {  # label: (a, b, {op: out})
    "mixed": (
        QParams(0.0213, 100, "uint8"),
        QParams(0.0571, 140, "uint8"),
        {"Add": QParams(0.0617, 118), "Sub": QParams(0.0643, 129), "Mul": QParams(0.0911, 136)},
    ),
    "dyadic": (
        QParams(2.0**-4, 128, "uint8"),
        QParams(2.0**-3, 128, "uint8"),
        {"Add": QParams(2.0**-2, 128), "Sub": QParams(2.0**-2, 128), "Mul": QParams(2.0**-3, 128)},
    ),
}


def probe_binary(op: str, label: str, arch: int) -> ProbeResult:
    qa, qb, outs = ENCODINGS[label]
    out = outs[op]
    a, b = code_pairs(qa)
    g = binary_graph(op, a.size, qa, qb, out)
    got = try_run_codes(g, {"a": a.astype(np.uint8)[None], "b": b.astype(np.uint8)[None]}, arch)
    name = f"{op} {label}"
    if isinstance(got, str):
        return ProbeResult(name, "rejected", np.zeros(0, np.int64), {}, notes=[got])
    exact = exact_binary(op, a, b, qa, qb)
    cands = code_candidates(out, exact)
    lsb = ratio_lsb(*requant_ratio(*exact, float(out.scales[0])))
    m = [float(Fraction(float(q.scales[0])) / Fraction(float(out.scales[0]))) for q in (qa, qb)]
    got = got.ravel()
    lo, hi = offset_bounds(got, lsb, out)
    notes = [
        f"s_a/s_out = {m[0]:.6g}, s_b/s_out = {m[1]:.6g}",
        f"RHU(exact + d) fits all codes for d in [{lo:.4g}, {hi:.4g})" + (" (empty)" if lo >= hi else ""),
        f"one d per a code fits {offset_bounds(got, lsb, out, a):.2%} of a codes, "
        f"one d per b code fits {offset_bounds(got, lsb, out, b):.2%} of b codes",
    ]
    return ProbeResult(name, "binary requant", got, cands, lsb, lambda i: f"a={a[i]} b={b[i]}", notes)


def probe_eltwise(arch: int) -> list[ProbeResult]:
    """(g) Add, Sub, Mul on every uint8 code pair, mixed and dyadic encodings."""
    return [probe_binary(op, label, arch) for label in ENCODINGS for op in ("Add", "Sub", "Mul")]
