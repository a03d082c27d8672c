"""(c') Where a conv bias enters HTP's 8-bit requantization: the effective bias per channel.

A 1x1 conv with weights ``[127, 1]`` sweeps every accumulator in a window on each output channel (as probe
``prescale``), and every channel has the same multiplier, so channels differ only by their int32 bias. For
each channel the probe finds the integers ``c`` for which ``q12_prescaled(acc + c)`` reproduces every code:
the bias the kernel really adds (unique, since the window covers every residue modulo ``2^g``). Two bias
tensors that share their small biases and differ in one extra channel show whether a channel's effective
bias depends on the other channels' biases.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from qdiverge.probes.arith import ProbeResult, clamp, q12_prescaled, round_ratio
from qdiverge.probes.conv import conv_graph
from qdiverge.probes.graph import QParams
from qdiverge.probes.runner import run_codes

BIAS_M = 0.0055242  # g = 4, mq = 2896: a 16-wide accumulator step, so +-1 in the bias moves transitions
SMALL_BIASES = tuple(range(-20, 21))
EXTRA_BIASES = (20, 12345)  # the extra channel: the largest small bias again, or one large bias


def q12_codes(acc: np.ndarray, m: Fraction, out: QParams) -> np.ndarray:
    """HTP's 8-bit conv requantization of ``acc * m`` (probe ``prescale``) as output codes."""
    return clamp(round_ratio(*q12_prescaled(acc, m), "RHU") + int(out.zero_points[0]), out.qmin, out.qmax)


def effective_biases(got: np.ndarray, acc: np.ndarray, m: Fraction, out: QParams, bias: np.ndarray):
    """Per channel, the integers ``c`` within ``bias +- 3`` with ``q12_codes(acc + c) == got`` everywhere."""
    return [
        [c for c in range(int(b) - 3, int(b) + 4) if np.array_equal(q12_codes(acc + c, m, out), row)]
        for b, row in zip(bias, got, strict=True)
    ]


def bias_window() -> tuple[np.ndarray, Fraction, QParams, np.ndarray]:
    """``(acc, M, output QParams, uint8 feed [1, 2, 1, n])``: every accumulator in ``[-4096, 4096)``."""
    big = 127
    acc = np.arange(-4096, 4096)  # 512 steps of 2^g = 16: every residue, outputs unclamped
    high = np.floor_divide(acc + big // 2, big)
    feed = (np.stack([high, acc - high * big]) + 128).astype(np.uint8).reshape(1, 2, 1, -1)
    m = Fraction(float(np.float32(2.0**-4))) * Fraction(float(np.float32(16 * BIAS_M)))
    return acc, m, QParams(1.0, 128, "uint8"), feed


def probe_bias_tensor(arch: int) -> list[ProbeResult]:
    """Small biases -20..20 plus one extra channel (20 or 12345), all at M = 0.0055242 (s_out = 1)."""
    s_in, big, s_w = 2.0**-4, 127, float(np.float32(16 * BIAS_M))
    acc, m, out, feed = bias_window()
    results = []
    for extra in EXTRA_BIASES:
        bias = np.array((*SMALL_BIASES, extra), np.int64)
        chans = bias.size
        w = np.tile(np.array([big, 1], np.int8).reshape(1, 2, 1, 1), (chans, 1, 1, 1))
        w_qp = QParams((s_w,) * chans, (0,) * chans, "int8", axis=0)
        b_qp = QParams((float(np.float32(s_in * s_w)),) * chans, (0,) * chans, "int32", axis=0)
        g = conv_graph(2, chans, acc.size, QParams(s_in, 128, "uint8"), w, w_qp, out, (bias, b_qp))
        got = run_codes(g, {"x": feed}, arch).reshape(chans, -1).astype(np.int64)
        eff = effective_biases(got, acc, m, out, bias)
        fitted = [c[0] if len(c) == 1 else int(b) for c, b in zip(eff, bias, strict=True)]
        moved = {int(b): c for b, c in zip(bias, eff, strict=True) if c != [int(b)]}
        results.append(
            ProbeResult(
                f"bias tensor -20..20 + {extra}",
                "effective bias per channel",
                got.ravel(),
                {
                    "q12 prescaled, declared bias": np.concatenate(
                        [q12_codes(acc + b, m, out) for b in bias]
                    ),
                    "q12 prescaled, fitted bias": np.concatenate(
                        [q12_codes(acc + c, m, out) for c in fitted]
                    ),
                },
                labels=lambda i, a=acc, b=bias: f"bias {int(b[i // a.size])} acc {int(a[i % a.size])}",
                notes=[f"declared -> effective bias where they differ: {moved}"],
            )
        )
    return results
