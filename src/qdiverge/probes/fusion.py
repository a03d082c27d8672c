"""(i) Fusion probes: Conv -> {HardSwish, Relu} with a declared encoding on the Conv output.

"unfused" requantizes the Conv output to its encoding (RHU, as measured for conv) and then applies the
activation table (RNE, as measured for LUTs); "fused" applies the activation to the exact accumulator value
and quantizes once. Which one matches tells whether HTP honours the intermediate encoding.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import numpy as np

from qdiverge.probes.arith import ProbeResult, as_objects, clamp, round_ratio
from qdiverge.probes.conv import dw_acc
from qdiverge.probes.graph import QdqGraph, QParams
from qdiverge.probes.lut import ACTS
from qdiverge.probes.runner import try_run_codes

X_QP = QParams(0.05, 128, "uint8")
W_QP = QParams(0.02, 0, "int8")
CONV_QP = QParams(float(np.float32(20 / 255)), 102, "uint8")  # conv output range [-8, 12]


def _quantize(values: list[Fraction], out: QParams, rule: str) -> np.ndarray:
    """Exact reals quantized to ``out`` with tie rule ``rule``."""
    (s,) = out.fractions()
    t = [v / s for v in values]
    num = np.array([v.numerator for v in t], object)
    den = np.array([v.denominator for v in t], object)
    return clamp(round_ratio(num, den, rule) + int(out.zero_points[0]), out.qmin, out.qmax)


def fusion_candidates(
    acc: np.ndarray, f: Callable[[Fraction], Fraction], out: QParams
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Codes if the Conv output encoding is applied (unfused) or skipped (fused); plus exact LSB."""
    unit = X_QP.fractions()[0] * W_QP.fractions()[0]
    (s_c,) = CONV_QP.fractions()
    zc = int(CONV_QP.zero_points[0])
    real = [int(a) * unit for a in acc.ravel()]
    m = unit / s_c
    c_q = clamp(round_ratio(as_objects(acc.ravel()) * m.numerator, m.denominator, "RHU") + zc, 0, 255)
    fused = [f(v) for v in real]
    cands = {
        "unfused (conv RHU, then table RNE)": _quantize([f((int(q) - zc) * s_c) for q in c_q], out, "RNE"),
        "fused/RNE": _quantize(fused, out, "RNE"),
        "fused/RHU": _quantize(fused, out, "RHU"),
    }
    lsb = np.array([float(v / out.fractions()[0]) for v in fused])
    return cands, lsb


def probe_fusion(arch: int) -> list[ProbeResult]:
    """(i) 1x1 Conv and stride-1/2 3x3 depthwise, each followed by HardSwish or Relu."""
    rng = np.random.default_rng(3)
    results = []
    outs = {
        "HardSwish": QParams(float(np.float32(12.375 / 255)), 8),
        "Relu": QParams(float(np.float32(12 / 255)), 0),
    }
    x = rng.integers(0, 256, (1, 8, 16, 16))
    d = x[0] - 128
    w1 = rng.integers(-60, 61, (8, 8, 1, 1))
    wdw = rng.integers(-60, 61, (8, 1, 3, 3))
    for kind, stride in (("1x1 conv", 1), ("dw 3x3 stride 1", 1), ("dw 3x3 stride 2", 2)):
        if kind == "1x1 conv":
            w, attrs = w1, {}
            acc = np.einsum("oc,chw->ohw", w1[:, :, 0, 0], d)
        else:
            w, attrs = wdw, {"group": 8, "pads": [1, 1, 1, 1], "strides": [stride, stride]}
            acc = dw_acc(d, wdw[:, 0], stride)
        for act, out in outs.items():
            g = QdqGraph("fusion")
            xin = g.code_input("x", x.shape, X_QP)
            c = g.requant(g.op("Conv", [xin, g.const("w", w, W_QP)], "c", **attrs), CONV_QP)
            g.output(g.op(act, [c], "y"), out)
            got = try_run_codes(g, {"x": x.astype(np.uint8)}, arch)
            name = f"{kind} -> {act}"
            if isinstance(got, str):
                results.append(ProbeResult(name, "rejected", np.zeros(0, np.int64), {}, notes=[got]))
                continue
            cands, lsb = fusion_candidates(acc, ACTS[act].exact, out)
            results.append(ProbeResult(name, "is the conv output encoding applied", got.ravel(), cands, lsb))
    return results
