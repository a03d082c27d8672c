"""(j) Graph-input quantization: float32 values through an HTP ``QuantizeLinear`` (then a Transpose).

Values sit on exact ties ``(k + 0.5) * s`` (as close as float32 allows), one ulp either side of them, and at
random, so ``x / s``, ``x * (1/s)`` and the tie rules separate.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from qdiverge.probes.arith import (
    ProbeResult,
    clamp,
    code_candidates,
    ratio_lsb,
    requant_ratio,
    round_float,
)
from qdiverge.probes.graph import QdqGraph, QParams
from qdiverge.probes.runner import try_run_codes


def tie_values(qp: QParams, rng: np.random.Generator) -> np.ndarray:
    """float32 inputs at, just below and just above every ``(k + 0.5) * s``, plus uniform random ones."""
    s = np.float32(qp.scales[0])
    k = np.arange(qp.qmin, qp.qmax + 1) - int(qp.zero_points[0])
    ties = ((k + 0.5) * np.float64(s)).astype(np.float32)
    near = [ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf))]
    lo, hi = float(ties.min()) - float(s), float(ties.max()) + float(s)
    return np.concatenate([*near, rng.uniform(lo, hi, 4096).astype(np.float32)])


def exact_float(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 values as exact ``(num, den)`` arrays."""
    fr = [Fraction(float(v)) for v in x]
    return np.array([f.numerator for f in fr], object), np.array([f.denominator for f in fr], object)


INPUT_CASES = {
    "uint8 s=0.0213 zp 100": QParams(0.0213, 100, "uint8"),
    "uint8 s=2^-4 zp 128": QParams(2.0**-4, 128, "uint8"),
    "int8 s=0.0173 zp 0": QParams(0.0173, 0, "int8"),
    "uint16 s=3.1e-4 zp 30000": QParams(3.1e-4, 30000, "uint16"),
}


def probe_input_quant(arch: int) -> list[ProbeResult]:
    """(j) float graph input -> QuantizeLinear on HTP, against ``x / s`` and ``x * (1/s)`` candidates."""
    rng = np.random.default_rng(11)
    results = []
    for label, qp in INPUT_CASES.items():
        x = tie_values(qp, rng)
        if qp.dtype == "uint16":  # keep the probe small: 2048 of the 65,536 tie positions
            x = x[rng.choice(x.size, 8192, replace=False)]
        g = QdqGraph("quantize")  # HTP rejects a lone QuantizeLinear: read the codes after a Transpose
        xq = g.requant(g.float_input("x", (1, x.size)), qp)
        g.output(g.op("Transpose", [xq], "t", perm=[1, 0]), qp)
        got = try_run_codes(g, {"x": x[None]}, arch)
        if isinstance(got, str):
            results.append(ProbeResult(label, "rejected", np.zeros(0, np.int64), {}, notes=[got]))
            continue
        exact = exact_float(x)
        lsb = ratio_lsb(*requant_ratio(*exact, float(qp.scales[0])))
        cands = code_candidates(qp, exact)
        zp, s32 = int(qp.zero_points[0]), np.float32(qp.scales[0])
        recip = x.astype(np.float64) * float(np.float32(1) / s32)  # exact product with the f32 reciprocal
        half = (x * (np.float32(1) / s32)).astype(np.float16).astype(np.float64)
        for r in ("RNE", "RHAZ"):
            cands[f"x*f32(1/s) unrounded/{r}"] = clamp(round_float(recip, r) + zp, qp.qmin, qp.qmax)
            cands[f"fp16(x*f32(1/s))/{r}"] = clamp(round_float(half, r) + zp, qp.qmin, qp.qmax)
        results.append(
            ProbeResult(
                f"input quantize {label}",
                "float -> code",
                got.ravel(),
                cands,
                lsb,
                lambda i, x=x: f"x={x[i]!r}",
            )
        )
    return results
