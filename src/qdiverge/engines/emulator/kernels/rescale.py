"""Moving codes from one encoding to another, and the encoding helpers every kernel family shares.

``prepare_rescale``/``rescale`` move codes from one encoding to another (Concat inputs, Relu/Clip
whose output encoding differs, MaxPool); ``Profile.concat_method`` or the caller picks the scheme:

* ``requant``: ``R((q - z_in) * M) + z_out`` with ``M = s_in / s_out`` through ``profile.rescale``;
* ``lut``: a table ``q -> clamp(R(dequant(q) / s_out) + z_out)`` (ONNX Runtime QLinearConcat builds
  exactly this table with float32 dequantize and ``MlasQuantizeLinear``);
* ``hexagon_nn``: the scaled copy of Hexagon NN (dsp_arithmetic.md §4.6): 15-bit gain and offset both
  *truncated*, ``y = sat_u8(sat16(floor((u*gain)/2^8) + offset) + 64) >> 7)`` on unsigned codes ``u``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qdiverge.encodings.schema import Encoding
from qdiverge.engines.emulator.fixed_point import INT16_MAX, INT16_MIN
from qdiverge.engines.emulator.kernels.activation import FUNCTIONS, Table, build_table, lookup
from qdiverge.engines.emulator.registry import Binding, Unsupported
from qdiverge.engines.emulator.requant import (
    RequantParams,
    apply_requant,
    effective_multiplier,
    prepare_requant,
)
from qdiverge.profiles.schema import RequantSpec


def scalar_encoding(enc: Encoding | None, what: str) -> tuple[float, int]:
    """``(scale, zero_point)`` of a per-tensor integer encoding, else ``Unsupported``."""
    if enc is None or enc.is_float:
        raise Unsupported(f"{what} has no integer encoding")
    if enc.per_channel:
        raise Unsupported(f"{what} has a per-channel encoding")
    return float(enc.scale.reshape(-1)[0]), int(enc.zero_point.reshape(-1)[0])


def encoding_of(b: Binding, i: int) -> Encoding | None:
    """Encoding of input ``i``: the activation's, or the param encoding of a constant input (whose codes the
    runner passes)."""
    act = b.input_encodings[i] if i < len(b.input_encodings) else None
    return act if act is not None else (b.param_encodings[i] if i < len(b.param_encodings) else None)


def same_encoding(a: Encoding, b: Encoding) -> bool:
    return (
        a.bitwidth == b.bitwidth
        and a.signed == b.signed
        and np.array_equal(a.scale, b.scale)
        and np.array_equal(a.offset, b.offset)
    )


def ratio(spec: RequantSpec, a: float, b: float, c: float) -> np.ndarray:
    """``a * b / c`` as a ``(1,)`` multiplier in ``spec.scale_precision`` (``effective_multiplier``)."""
    return effective_multiplier(a, b, c, spec.scale_precision)


def float_dtype(spec: RequantSpec) -> type:
    return np.float32 if spec.multiplier == "float32" else np.float64


@dataclass(frozen=True)
class RescaleParams:
    method: str
    zero_in: int
    requant: RequantParams | None  # method "requant"
    table: Table | None  # method "lut"
    gain: int  # method "hexagon_nn"
    offset: int
    in_qmin: int
    qmin: int  # storage range of the output, also the clamp bounds (Relu/Clip narrow them)
    lo: int
    hi: int


def prepare_rescale(
    enc_in: Encoding | None,
    enc_out: Encoding,
    profile: Any,
    method: str = "requant",
    lo: int | None = None,
    hi: int | None = None,
) -> RescaleParams | None:
    """Parameters to move codes from ``enc_in`` to ``enc_out`` (``None``: same encoding, no clamp: copy)."""
    s_in, z_in = scalar_encoding(enc_in, f"input {enc_in.name if enc_in else '?'}")
    s_out, z_out = scalar_encoding(enc_out, f"output {enc_out.name}")
    assert enc_in is not None
    lo = enc_out.qmin if lo is None else max(lo, enc_out.qmin)
    hi = enc_out.qmax if hi is None else min(hi, enc_out.qmax)
    if same_encoding(enc_in, enc_out) and (lo, hi) == (enc_out.qmin, enc_out.qmax):
        return None
    common = dict(
        zero_in=z_in,
        in_qmin=enc_in.qmin,
        qmin=enc_out.qmin,
        lo=lo,
        hi=hi,
        requant=None,
        table=None,
        gain=0,
        offset=0,
    )
    if same_encoding(enc_in, enc_out):  # only a clamp (Relu, Clip on a shared encoding)
        return RescaleParams("clamp", **common)
    if method == "requant":
        common["requant"] = prepare_requant(ratio(profile.rescale, s_in, 1.0, s_out), profile.rescale, z_out)
        return RescaleParams("requant", **common)
    if method == "lut":
        common["table"] = build_table(FUNCTIONS["Identity"], {}, enc_in, enc_out, profile.lut)
        return RescaleParams("lut", **common)
    if method == "hexagon_nn":
        if enc_in.bitwidth > 8 or enc_out.bitwidth > 8:
            raise Unsupported("hexagon_nn rescale is 8-bit only")
        recip = np.float32(1.0) / np.float32(s_out)
        common["gain"] = int(np.float32(recip * np.float32(s_in)) * np.float32(32768.0))  # (int): truncates
        in_min, out_min = (
            np.float32(-(z_in - enc_in.qmin) * s_in),
            np.float32(-(z_out - enc_out.qmin) * s_out),
        )
        common["offset"] = int(np.float32(np.float32(in_min - out_min) * recip) * np.float32(128.0))
        return RescaleParams("hexagon_nn", **common)
    raise Unsupported(f"rescale method {method!r}")


def rescale(p: RescaleParams, q: np.ndarray) -> np.ndarray:
    if p.method == "clamp":
        y = q
    elif p.method == "requant":
        assert p.requant is not None
        y = apply_requant(q - p.zero_in, p.requant, p.lo, p.hi)
    elif p.method == "lut":
        assert p.table is not None
        y = lookup(p.table, q)
    else:  # hexagon_nn, on unsigned codes
        u = q - p.in_qmin
        t = np.clip(((u * p.gain) >> 8) + p.offset, INT16_MIN, INT16_MAX)
        y = np.clip((t + 64) >> 7, 0, 255) + p.qmin
    return np.clip(y, p.lo, p.hi)
