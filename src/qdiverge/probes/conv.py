"""Conv-family probes: requantization tie rule, multiplier width, bias, zero points, per-channel, fusion.

Accumulators are set exactly: a 1x1 conv whose weights are ``[W]*k + [1]`` turns chosen input codes into
any target ``acc = W*sum(a) + b``.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from qdiverge.probes.arith import (
    RULES,
    ProbeResult,
    as_objects,
    clamp,
    fixed_point,
    q12_prescaled,
    ratio_lsb,
    round_ratio,
    scaled,
    tflite_double_rounding,
)
from qdiverge.probes.graph import QdqGraph, QParams
from qdiverge.probes.runner import run_codes


def acc_codes(targets: np.ndarray, k: int, big: int) -> np.ndarray:
    """int8 input codes ``(k+1, n)`` with ``big*sum(x[:k]) + x[k] == targets`` (weights ``[big]*k + [1]``)."""
    targets = np.asarray(targets, dtype=np.int64)
    high = np.round(targets / big).astype(np.int64)
    low = targets - high * big
    base, rem = np.divmod(high, k)
    codes = base[None, :] + (np.arange(k)[:, None] < rem[None, :])
    if np.abs(codes).max() > 127 or np.abs(low).max() > 127:
        raise ValueError("accumulator targets out of reach for this k")
    return np.concatenate([codes, low[None, :]]).astype(np.int8)


def conv_graph(
    cin: int,
    cout: int,
    n: int,
    x_qp: QParams,
    w_codes: np.ndarray,
    w_qp: QParams,
    out_qp: QParams,
    bias: tuple[np.ndarray, QParams] | None = None,
) -> QdqGraph:
    """QDQ 1x1 Conv on input ``[1, cin, 1, n]``; the output codes are the graph output ``c_q``."""
    g = QdqGraph("conv")
    inputs = [g.code_input("x", (1, cin, 1, n), x_qp), g.const("w", w_codes, w_qp)]
    if bias is not None:
        inputs.append(g.const("b", bias[0], bias[1]))
    g.output(g.op("Conv", inputs, "c"), out_qp)
    return g


def requant_candidates(acc: np.ndarray, m: Fraction, out: QParams, bias: int = 0) -> dict[str, np.ndarray]:
    """Codes of ``acc * m + zp`` under each rounding rule, exactly and through a float16 product."""
    zp = int(out.zero_points[0])
    num, den = scaled(acc, m)
    cands = {f"exact/{r}": clamp(round_ratio(num, den, r) + zp, out.qmin, out.qmax) for r in RULES}
    half = ratio_lsb(num, den).astype(np.float16)  # float64 -> float16 casts round to nearest even
    for r in ("RNE", "RHAZ"):
        code = round_ratio(as_objects((half.astype(np.float64) * 2**24).astype(np.int64)), 2**24, r)
        cands[f"fp16 product/{r}"] = clamp(code + zp, out.qmin, out.qmax)
    cands["tflite double rounding"] = clamp(tflite_double_rounding(acc, m) + zp, out.qmin, out.qmax)
    cands["q12 prescaled/RHU"] = clamp(round_ratio(*q12_prescaled(acc, m), "RHU") + zp, out.qmin, out.qmax)
    return cands


TIE_CASES = (  # (label, input dtype, output QParams, 1/M)
    ("int8 in, int8 out zp 0", "int8", QParams(32.0, 0, "int8"), 32),
    ("int8 in, uint8 out zp 127", "int8", QParams(32.0, 127, "uint8"), 32),
    ("uint8 in zp 128, uint8 out zp 128", "uint8", QParams(32.0, 128, "uint8"), 32),
    ("uint8 in zp 128, uint8 out zp 0", "uint8", QParams(32.0, 0, "uint8"), 32),
    ("uint8 in zp 128, int8 out zp 0", "uint8", QParams(32.0, 0, "int8"), 32),
    ("uint8 in zp 128, uint8 out zp 37, M=1/2", "uint8", QParams(2.0, 37, "uint8"), 2),
)


def probe_conv_ties(arch: int) -> list[ProbeResult]:
    """(a)+(d) 1x1 Conv2d with M = 1/32 or 1/2 over every reachable accumulator, so acc*M hits all ties."""
    results = []
    w = np.array([32, 1], np.int8).reshape(1, 2, 1, 1)
    for label, in_dtype, out, m_den in TIE_CASES:
        lo, hi = (-4064, 4064) if m_den == 32 else (-256, 256)
        acc = np.arange(lo, hi, dtype=np.int64)
        acc = acc[
            (acc / m_den + int(out.zero_points[0]) > out.qmin - 1)
            & (acc / m_den + int(out.zero_points[0]) < out.qmax + 1)
        ]
        x = acc_codes(acc, 1, 32).astype(np.int64)
        x_qp = QParams(1.0, 0, "int8") if in_dtype == "int8" else QParams(1.0, 128, "uint8")
        x = (x + int(x_qp.zero_points[0])).astype(np.int8 if in_dtype == "int8" else np.uint8)
        g = conv_graph(2, 1, acc.size, x_qp, w, QParams(1.0, 0, "int8"), out)
        got = run_codes(g, {"x": x.reshape(1, 2, 1, -1)}, arch).ravel()
        cands = requant_candidates(acc, Fraction(1, m_den), out)
        exact = ratio_lsb(as_objects(acc), m_den)
        results.append(
            ProbeResult(f"conv ties: {label}", "requant rounding", got, cands, exact, _acc_label(acc))
        )
    return results


def _acc_label(acc: np.ndarray):
    return lambda i: f"acc={int(acc.ravel()[i])}"


def near_tie_accs(m: Fraction, limit: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Accumulators in ``[-limit, limit]`` whose ``acc*m`` lands closest to a .5 (plus random ones)."""
    pool = rng.integers(-limit, limit, size=400_000)
    frac = np.abs((pool * float(m)) % 1.0 - 0.5)
    near = pool[np.argsort(frac)[:count]]
    return np.concatenate([near, rng.integers(-limit, limit, size=count)])


def _u8(codes: np.ndarray) -> np.ndarray:
    """int8-centred codes as uint8 codes with zero point 128."""
    return (np.asarray(codes, np.int64) + 128).astype(np.uint8)


def probe_multiplier(arch: int) -> list[ProbeResult]:
    """(b) M near 2^-17/3 with accumulators up to ~2^24: separates exact/Q31 from float32 and Q15."""
    rng = np.random.default_rng(7)
    k, big = 1024, 127
    results = []
    for label, s_in, s_w in (
        ("M with a 24-bit mantissa", float(np.float32(1 / 3 + 2**-20)), 2.0**-7),
        ("M with a ~48-bit mantissa", float(np.float32(1 / 3 + 2**-20)), float(np.float32(0.7071))),
    ):
        s_out = 2.0 ** int(np.ceil(np.log2(s_in * s_w * big * k)))  # |acc*M| stays below ~127
        m = Fraction(s_in) * Fraction(s_w) / Fraction(s_out)
        limit = min(int(126 / float(m)), 126 * big * k)
        acc = near_tie_accs(m, limit, 2048, rng)
        x = _u8(acc_codes(acc, k, big))
        w = np.array([big] * k + [1], np.int8).reshape(1, k + 1, 1, 1)
        out = QParams(s_out, 128, "uint8")
        g = conv_graph(k + 1, 1, acc.size, QParams(s_in, 128, "uint8"), w, QParams(s_w, 0, "int8"), out)
        got = run_codes(g, {"x": x.reshape(1, k + 1, 1, -1)}, arch).ravel()
        num, den = scaled(acc, m)
        cands = {"exact/RHU": clamp(round_ratio(num, den, "RHU") + 128, 0, 255)}
        for bits in (31, 24, 20, 16, 15):
            q = round_ratio(*scaled(acc, fixed_point(m, bits)), "RHU")
            cands[f"q{bits} mantissa/RHU"] = clamp(q + 128, 0, 255)
        cands["q12 prescaled/RHU"] = clamp(round_ratio(*q12_prescaled(acc, m), "RHU") + 128, 0, 255)
        f32 = (acc.astype(np.float32) * np.float32(float(m))).astype(np.float64)
        cands["float32 acc*M/RHU"] = clamp(np.floor(f32 + 0.5).astype(np.int64) + 128, 0, 255)
        exact = ratio_lsb(num, den)
        margin = np.abs(exact - np.floor(exact) - 0.5)
        note = f"M = {float(m):.10g}; |acc| <= {np.abs(acc).max()}; nearest tie {margin.min():.2e} LSB"
        results.append(
            ProbeResult(label, "multiplier precision", got, cands, exact, _acc_label(acc), notes=[note])
        )
    return results


def probe_bias(arch: int) -> list[ProbeResult]:
    """(c) zero input, bias only: declared bias scale r*s_in*s_w, ties, and int32 saturation."""
    results = []
    s_in, s_w = 0.25, 0.25
    codes = np.arange(-250, 251, dtype=np.int64)
    cout = codes.size
    w = np.ones((cout, 2, 1, 1), np.int8)
    out = QParams(s_in * s_w, 128, "uint8")  # M = 1: the output code is the effective int32 bias + 128
    for r in (Fraction(1, 2), Fraction(37, 100), Fraction(2)):
        bias_qp = QParams(float(r) * s_in * s_w, 0, "int32", axis=0)
        r32 = Fraction(float(np.float32(bias_qp.scale))) / Fraction(s_in * s_w)
        g = conv_graph(
            2, cout, 1, QParams(s_in, 128, "uint8"), w, QParams(s_w, 0, "int8"), out, (codes, bias_qp)
        )
        got = run_codes(g, {"x": np.full((1, 2, 1, 1), 128, np.uint8)}, arch).ravel()
        num = as_objects(codes) * r32.numerator
        cands = {f"honoured/{r}": clamp(round_ratio(num, r32.denominator, r) + 128, 0, 255) for r in RULES}
        cands["declared scale ignored"] = clamp(codes + 128, 0, 255)
        results.append(
            ProbeResult(
                f"bias scale {r}*s_in*s_w",
                "effective int32 bias",
                got,
                cands,
                ratio_lsb(num, r32.denominator),
                lambda i, c=codes: f"bias code {int(c[i])}",
            )
        )
    # saturation: s_in*s_w = 1e-9, so |bias| > 2.147 does not fit an int32 accumulator code
    s_in, s_w, s_b, s_out = 0.01, 1e-7, 1e-5, 0.05
    real = np.linspace(-5, 5, 101)
    codes = np.round(real / s_b).astype(np.int64)
    w = np.ones((codes.size, 2, 1, 1), np.int8)
    out = QParams(s_out, 128, "uint8")
    g = conv_graph(
        2,
        codes.size,
        1,
        QParams(s_in, 128, "uint8"),
        w,
        QParams(s_w, 0, "int8"),
        out,
        (codes, QParams(s_b, 0, "int32", axis=0)),
    )
    got = run_codes(g, {"x": np.full((1, 2, 1, 1), 128, np.uint8)}, arch).ravel()
    acc_unit = Fraction(float(np.float32(s_in))) * Fraction(float(np.float32(s_w)))
    m = acc_unit / Fraction(float(np.float32(s_out)))
    per_code = Fraction(float(np.float32(s_b))) / acc_unit
    b_i = round_ratio(as_objects(codes) * per_code.numerator, per_code.denominator, "RNE")
    sat = np.clip(b_i, -(2**31), 2**31 - 1)
    cands = {
        "int32 bias saturated": clamp(round_ratio(*scaled(sat, m), "RHU") + 128, 0, 255),
        "bias not saturated": clamp(round_ratio(*scaled(b_i, m), "RHU") + 128, 0, 255),
    }
    results.append(
        ProbeResult(
            "bias int32 saturation",
            "is a bias beyond 2^31*s_in*s_w clipped",
            got,
            cands,
            labels=lambda i, r=real: f"bias {r[i]:+.1f}",
        )
    )
    return results


def dw_acc(x: np.ndarray, w: np.ndarray, stride: int) -> np.ndarray:
    """Depthwise 3x3 accumulators (pad 1) of ``x - zp`` codes ``[C, H, W]`` with weights ``[C, 3, 3]``."""
    c, h, wd = x.shape
    pad = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    oh, ow = (h - 1) // stride + 1, (wd - 1) // stride + 1
    acc = np.zeros((c, oh, ow), np.int64)
    for kh in range(3):
        for kw in range(3):
            patch = pad[:, kh : kh + stride * oh : stride, kw : kw + stride * ow : stride]
            acc += w[:, kh, kw][:, None, None] * patch
    return acc


def probe_depthwise(arch: int) -> list[ProbeResult]:
    """(e) per-channel 3x3 depthwise, weight scales 1e-5..1e-1, two dead (all-zero) channels with a bias.

    The output scale (2^-8) is fine enough that a 10x rescaled tiny channel (Hexagon NN clamps scales below
    s_max/1024) would move codes.
    """
    rng = np.random.default_rng(13)
    scales = np.geomspace(1e-5, 1e-1, 10).astype(np.float32)
    chans = scales.size
    w = np.clip(np.round(rng.uniform(-0.3, 0.3, (chans, 3, 3)) / scales[:, None, None]), -127, 127)
    w[[1, 6]] = 0  # dead channels: no weights, only the bias
    x_qp = QParams(0.05, 128, "uint8")
    w_qp = QParams(tuple(float(s) for s in scales), (0,) * chans, "int8", axis=0)
    unit = [Fraction(float(np.float32(0.05))) * Fraction(float(s)) for s in scales]
    bias_real = rng.uniform(-0.4, 0.4, chans)
    b_qp = QParams(tuple(float(np.float32(float(u))) for u in unit), (0,) * chans, "int32", axis=0)
    b_codes = np.round(bias_real / np.array(b_qp.scales, np.float64)).astype(np.int64)
    out = QParams(2.0**-8, 128, "uint8")
    x = rng.integers(0, 256, (1, chans, 8, 8))
    g = QdqGraph("depthwise")
    xin = g.code_input("x", x.shape, x_qp)
    conv_in = [xin, g.const("w", w.reshape(chans, 1, 3, 3), w_qp), g.const("b", b_codes, b_qp)]
    g.output(g.op("Conv", conv_in, "c", group=chans, pads=[1, 1, 1, 1]), out)
    got = run_codes(g, {"x": x.astype(np.uint8)}, arch)
    acc = dw_acc(x[0] - 128, w.astype(np.int64), 1)
    (s_out,) = out.fractions()
    cands, lsb, prescaled = {}, [], []
    for label, eff in (
        ("exact per-channel", unit),
        ("scales clamped to s_max/1024", [max(u, unit[-1] / 1024) for u in unit]),
    ):
        for rule in ("RHU", "RNE"):
            codes = []
            for c in range(chans):
                # the EP re-quantizes the bias at s_in*s_w[c] with RNE (probe bias)
                per_code = Fraction(float(b_qp.scales[c])) / unit[c]
                b_i = round_ratio(*scaled(np.array([b_codes[c]]), per_code), "RNE")
                num, den = scaled(acc[c].ravel() + int(b_i[0]), eff[c] / s_out)
                codes.append(clamp(round_ratio(num, den, rule) + 128, 0, 255))
                if label.startswith("exact") and rule == "RHU":
                    q12 = round_ratio(*q12_prescaled(acc[c].ravel() + int(b_i[0]), eff[c] / s_out), rule)
                    prescaled.append(clamp(q12 + 128, 0, 255))
                if label.startswith("exact") and rule == "RHU":
                    lsb.append(ratio_lsb(num, den))
            cands[f"{label}/{rule}"] = np.concatenate(codes)
    cands["q12 prescaled per-channel/RHU"] = np.concatenate(prescaled)
    return [
        ProbeResult(
            "depthwise per-channel 1e-5..1e-1",
            "tiny scales, dead channels",
            got[0].reshape(chans, -1).ravel(),
            cands,
            np.concatenate(lsb),
            lambda i, s=scales: f"channel {i // 64} (s_w {s[i // 64]:.1e})",
        )
    ]


PRESCALE_M = (  # per output channel: M = s_in * s_w[c] / s_out, chosen to separate the candidates
    0.0055242,  # g = 4: the accumulator loses its 4 low bits
    3072.6 / 2**19,  # 12-bit mantissa 3073 (rounded), float16 would give 3072
    4095.8 / 2**19,  # mantissa rounds up to 4096
    2.54e-6,  # g = 17: steps of 2^17 accumulators
    0.0209,
    0.16531836,  # g = -1: exact left shift
    1.28,  # g = -4
)
PRESCALE_CASES = (  # (label, input QParams without scale, output QParams without scale)
    ("uint8 zp 128 -> uint8 zp 128", ("uint8", 128), ("uint8", 128)),
    ("uint8 zp 37 -> uint8 zp 37", ("uint8", 37), ("uint8", 37)),
    ("int8 -> int8 zp 0", ("int8", 0), ("int8", 0)),
    ("uint8 zp 128 -> uint8 zp 0", ("uint8", 128), ("uint8", 0)),
)


def probe_prescale(arch: int) -> list[ProbeResult]:
    """(b) 8-bit conv requant off ties: every accumulator in a window, 7 per-channel multipliers, biases.

    A 1x1 conv with weights ``[127, 1]`` per output channel gives every integer accumulator in the window
    (the same on each channel, plus that channel's int32 bias), so the transitions between output codes
    show where HTP's rounding really happens.
    """
    s_in, big, chans = 2.0**-4, 127, len(PRESCALE_M)
    s_w = tuple(float(np.float32(16 * m)) for m in PRESCALE_M)  # s_out = 1: M = s_w / 16 exactly
    bias = np.array([0, 37, -1000, 5, 12345, -7, 3], np.int64)
    results = []
    for label, (in_dtype, zp_in), (out_dtype, zp_out) in PRESCALE_CASES:
        x_qp, out = QParams(s_in, zp_in, in_dtype), QParams(1.0, zp_out, out_dtype)
        lo, hi = x_qp.qmin - zp_in, x_qp.qmax - zp_in
        acc = np.arange(lo * (big + 1) + 1, hi * (big + 1))
        high = np.clip(np.floor_divide(acc - (lo + hi) // 2 + big // 2, big), lo, hi)
        x = np.stack([high, acc - high * big]) + zp_in  # both codes in range: the windows overlap
        w = np.tile(np.array([big, 1], np.int8).reshape(1, 2, 1, 1), (chans, 1, 1, 1))
        w_qp = QParams(s_w, (0,) * chans, "int8", axis=0)
        b_qp = QParams(tuple(float(np.float32(s_in * s)) for s in s_w), (0,) * chans, "int32", axis=0)
        g = conv_graph(2, chans, acc.size, x_qp, w, w_qp, out, (bias, b_qp))
        feed = x.astype(np.uint8 if in_dtype == "uint8" else np.int8).reshape(1, 2, 1, -1)
        got = run_codes(g, {"x": feed}, arch).reshape(chans, -1)
        cands: dict[str, list[np.ndarray]] = {}
        lsb = []
        for c in range(chans):
            m = Fraction(s_w[c]) / 16
            for name, codes in requant_candidates(acc + bias[c], m, out).items():
                cands.setdefault(name, []).append(codes)
            lsb.append(ratio_lsb(*scaled(acc + bias[c], m)))
        results.append(
            ProbeResult(
                f"prescale: {label}",
                "8-bit requant off ties",
                got.ravel(),
                {k: np.concatenate(v) for k, v in cands.items()},
                np.concatenate(lsb),
                lambda i, a=acc: f"channel {i // a.size} acc {int(a[i % a.size])}",
            )
        )
    return results
