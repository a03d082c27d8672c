"""Softmax as an exp table of ``max - q`` plus an exact integer normalisation (8- or 16-bit input).

Along the axis (default -1, the opset-13 meaning), for each row:

    d    = max(q) - q                                   # integer in [0, 2^bw - 1]
    E[d] = R_lut(exp(-s_in d) * 2^F)                     # table of 2^bw entries, E[0] = 2^F
    S    = sum(E[d])                                     # exact int64
    y    = clamp(R(E[d] * qm / (S * 2^(31 - shift))) + z_out)   # (qm, shift) = Q31 of 1 / s_out

``R_lut`` / the table precision are ``profile.lut.rounding`` / ``profile.lut.compute``; ``R`` is
``profile.rescale.rounding``: one rounding of the exact rational, no reciprocal approximation. ``F``
(at most 24 fractional bits) is the largest that keeps ``S * 2^(31 - shift)`` below ``2^62`` for the
row length, so the arithmetic is exact int64; rows too long for 8 bits of ``F`` are unsupported.
This is the TFLite scheme (exp table of ``x - max``, then integer normalisation) with an exact divider.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qdiverge.engines.emulator.fixed_point import quantize_multiplier, round_to_int, rounding_divide
from qdiverge.engines.emulator.kernels.rescale import scalar_encoding
from qdiverge.engines.emulator.registry import Binding, Unsupported, kernel


@dataclass(frozen=True)
class SoftmaxParams:
    axis: int
    table: np.ndarray  # E[d], d = max - q
    qm: int
    shift: int
    z_out: int
    qmin: int
    qmax: int
    rounding: str


@kernel("Softmax")
class Softmax:
    @staticmethod
    def prepare(b: Binding) -> SoftmaxParams:
        enc_in, out = b.input_encodings[0], b.output_encodings[0]
        s_in, _ = scalar_encoding(enc_in, "Softmax input")
        s_out, z_out = scalar_encoding(out, "Softmax output")
        shape = b.input_shapes[0]
        assert enc_in is not None and out is not None
        if shape is None or enc_in.bitwidth > 16:
            raise Unsupported("Softmax: unknown shape or input wider than 16 bits")
        axis = int(b.node.attr("axis", -1)) % len(shape)
        qm, shift = (int(v[0]) for v in quantize_multiplier(np.array([1.0 / s_out])))
        frac_bits = min(24, 31 + shift - math.ceil(math.log2(max(shape[axis], 2))) - 1)
        if frac_bits < 8 or shift > 31:
            raise Unsupported("Softmax: row too long for exact int64 normalisation")
        dt = np.float32 if b.profile.lut.compute == "float32" else np.float64
        d = np.arange(1 << enc_in.bitwidth, dtype=np.int64)
        e = np.exp(-(dt(s_in) * d.astype(dt))) * dt(1 << frac_bits)
        table = round_to_int(e.astype(dt), b.profile.lut.rounding)
        return SoftmaxParams(axis, table, qm, shift, z_out, out.qmin, out.qmax, b.profile.rescale.rounding)

    @staticmethod
    def run(p: SoftmaxParams, x: np.ndarray) -> np.ndarray:
        e = p.table[np.max(x, axis=p.axis, keepdims=True) - x]
        total = np.sum(e, axis=p.axis, keepdims=True)
        y = rounding_divide(e * p.qm, total << (31 - p.shift), p.rounding) + p.z_out
        return np.clip(y, p.qmin, p.qmax)
