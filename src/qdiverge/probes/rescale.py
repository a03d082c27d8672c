"""(h) Data-movement and averaging probes: Concat, pools, ReduceMean, Resize, Softmax, Clip.

Each op is linear in the input codes (or a max of them), so its exact result is
``s_in * (integer combination of codes - zp) / n``; the probe compares HTP's output codes with that
value quantized to the output encoding. "mixed" encodings change the scale (multiplier precision shows),
"dyadic" ones land on exact ties.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from onnx import numpy_helper

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

MIXED_IN, MIXED_OUT = QParams(0.0213, 100), QParams(0.0617, 118)
DYADIC_IN, DYADIC_OUT = QParams(2.0**-4, 128), QParams(2.0**-3, 128)


def _exact(d: np.ndarray, n: int, qp: QParams) -> tuple[np.ndarray, int]:
    """``s_in * d / n`` as ``(num, den)``, ``d`` an integer combination of ``code - zp``."""
    (s,) = qp.fractions()
    return as_objects(d) * s.numerator, s.denominator * n


def _result(name, g, feeds, arch, exact, out, value=None, key=None) -> ProbeResult:
    got = try_run_codes(g, feeds, arch)
    if isinstance(got, str):
        return ProbeResult(name, "rejected", np.zeros(0, np.int64), {}, notes=[got])
    got = got.ravel()
    cands = code_candidates(out, exact, value)
    scale = float(out.scales[0])
    lsb = (ratio_lsb(*requant_ratio(*exact, scale)) if exact else value / scale).ravel()
    exact = None if exact is None else (exact[0].ravel(), exact[1])
    notes = []
    if exact is not None:
        lo, hi = offset_bounds(got, lsb, out)
        empty = " (empty)" if lo >= hi else ""
        notes.append(f"RHU(exact + d) fits all codes for d in [{lo:.3g}, {hi:.3g}){empty}")
    return ProbeResult(name, "rescale", got, cands, lsb, notes=notes)


def _unary(op: str, x: np.ndarray, qin: QParams, out: QParams, extra=(), **attrs) -> QdqGraph:
    g = QdqGraph(op)
    xin = g.code_input("x", x.shape, qin)
    names = [xin]
    for i, arr in enumerate(extra):
        g.inits.append(numpy_helper.from_array(arr, f"c{i}"))
        names.append(f"c{i}")
    g.output(g.op(op, names, "y", **attrs), out)
    return g


def probe_concat(arch: int) -> list[ProbeResult]:
    results = []
    codes = np.arange(256)
    for label, qa, qb, out in (
        ("mixed", MIXED_IN, QParams(0.0571, 140), MIXED_OUT),
        ("dyadic", DYADIC_IN, QParams(2.0**-2, 128), DYADIC_OUT),
    ):
        g = QdqGraph("concat")
        a, b = g.code_input("a", (1, 256), qa), g.code_input("b", (1, 256), qb)
        g.output(g.op("Concat", [a, b], "y", axis=1), out)
        ea, eb = _exact(codes - qa.zero_point, 1, qa), _exact(codes - qb.zero_point, 1, qb)
        den = ea[1] * eb[1]
        num = np.concatenate([ea[0] * eb[1], eb[0] * ea[1]])
        feeds = {"a": codes.astype(np.uint8)[None], "b": codes.astype(np.uint8)[None]}
        results.append(_result(f"Concat {label}", g, feeds, arch, (num, den), out))
    return results


def probe_pools(arch: int) -> list[ProbeResult]:
    rng = np.random.default_rng(5)
    results = []
    for label, qin, out in (("mixed", MIXED_IN, MIXED_OUT), ("dyadic", DYADIC_IN, DYADIC_OUT)):
        x = np.stack([np.arange(256), np.roll(np.arange(256), 77)], axis=-1).reshape(1, 1, 256, 2)
        g = _unary("MaxPool", x, qin, out, kernel_shape=[1, 2])
        d = x.max(axis=-1) - qin.zero_point
        feeds = {"x": x.astype(np.uint8)}
        results.append(_result(f"MaxPool 1x2 {label}", g, feeds, arch, _exact(d, 1, qin), out))
    same = DYADIC_IN
    for k, qin, out in ((2, same, same), (3, MIXED_IN, MIXED_OUT), (2, MIXED_IN, MIXED_OUT)):
        x = rng.integers(0, 256, (1, 16, 8 * k, 8 * k))
        g = _unary("AveragePool", x, qin, out, kernel_shape=[k, k], strides=[k, k])
        d = (x - qin.zero_point).reshape(1, 16, 8, k, 8, k).sum(axis=(3, 5))
        name = f"AveragePool {k}x{k} s_in {float(qin.scales[0]):.4g} -> s_out {float(out.scales[0]):.4g}"
        results.append(_result(name, g, {"x": x.astype(np.uint8)}, arch, _exact(d, k * k, qin), out))
    for op, attrs in (("GlobalAveragePool", {}), ("ReduceMean", {"keepdims": 1})):
        for hw in (7, 4):
            x = rng.integers(0, 256, (1, 256, hw, hw))
            extra = (np.array([2, 3], np.int64),) if op == "ReduceMean" else ()
            g = _unary(op, x, MIXED_IN, MIXED_OUT, extra, **attrs)
            d = (x - MIXED_IN.zero_point).sum(axis=(2, 3))
            exact = _exact(d, hw * hw, MIXED_IN)
            results.append(
                _result(f"{op} {hw}x{hw} mixed", g, {"x": x.astype(np.uint8)}, arch, exact, MIXED_OUT)
            )
    return results


def probe_resize(arch: int) -> list[ProbeResult]:
    """2x upsampling along W: nearest (a copy, or a requant) and linear half_pixel (weights 1/4, 3/4)."""
    results = []
    x = np.arange(256).reshape(1, 1, 16, 16)
    scales = np.array([1, 1, 1, 2], np.float32)
    for mode, qin, out in (
        ("nearest", MIXED_IN, MIXED_IN),
        ("nearest", MIXED_IN, MIXED_OUT),
        ("linear", DYADIC_IN, DYADIC_IN),
        ("linear", MIXED_IN, MIXED_OUT),
    ):
        extra = (np.zeros(0, np.float32), scales)
        g = QdqGraph("resize")
        xin = g.code_input("x", x.shape, qin)
        for i, arr in enumerate(extra):
            g.inits.append(numpy_helper.from_array(arr, f"c{i}"))
        g.output(g.op("Resize", [xin, "", "c1"], "y", mode=mode), out)
        d = x - qin.zero_point
        if mode == "nearest":
            num, n = np.repeat(d, 2, axis=-1), 1
        else:  # half_pixel: out[2i] = (3 x[i] + x[i-1]) / 4, out[2i+1] = (3 x[i] + x[i+1]) / 4, edges clamped
            left = np.concatenate([d[..., :1], d[..., :-1]], axis=-1)
            right = np.concatenate([d[..., 1:], d[..., -1:]], axis=-1)
            num, n = np.stack([3 * d + left, 3 * d + right], axis=-1).reshape(1, 1, 16, 32), 4
        same = "same enc" if qin == out else "requant"
        results.append(
            _result(f"Resize {mode} {same}", g, {"x": x.astype(np.uint8)}, arch, _exact(num, n, qin), out)
        )
    return results


def probe_softmax_clip(arch: int) -> list[ProbeResult]:
    rng = np.random.default_rng(9)
    x = rng.integers(0, 256, (512, 8))
    out = QParams(float(np.float32(1 / 255)), 0)
    g = _unary("Softmax", x, MIXED_IN, out, axis=-1)
    v = (x - MIXED_IN.zero_point) * float(Fraction(float(MIXED_IN.scales[0])))
    e = np.exp(v - v.max(axis=-1, keepdims=True))
    probs = e / e.sum(-1, keepdims=True)
    results = [_result("Softmax len 8 -> 1/255", g, {"x": x.astype(np.uint8)}, arch, None, out, probs)]
    codes = np.arange(256).reshape(1, 256)
    for qin, out in ((MIXED_IN, MIXED_OUT), (DYADIC_IN, DYADIC_OUT)):
        bounds = (np.array(0, np.float32), np.array(2.5, np.float32))
        g = _unary("Clip", codes, qin, out, bounds)
        (s,) = qin.fractions()
        d = np.clip(codes - qin.zero_point, 0, None)
        num = as_objects(d) * s.numerator
        cap = 5 * s.denominator // 2  # 2.5 in units of 1/s.denominator (a power of two >= 2)
        exact = (np.where(num > cap, cap, num).ravel(), s.denominator)
        results.append(
            _result(f"Clip [0, 2.5] s_in {float(s):.4g}", g, {"x": codes.astype(np.uint8)}, arch, exact, out)
        )
    return results


def probe_rescale(arch: int) -> list[ProbeResult]:
    """(h) Concat, MaxPool, AveragePool, GlobalAveragePool, ReduceMean, Resize, Softmax, Clip."""
    return probe_concat(arch) + probe_pools(arch) + probe_resize(arch) + probe_softmax_clip(arch)
