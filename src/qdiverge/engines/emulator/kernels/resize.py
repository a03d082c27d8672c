"""Resize: nearest (any axes, every ONNX coordinate mode but ``tf_crop_and_resize``) and bilinear.

Source coordinates are exact rationals: the scale is ``Fraction(scale)`` of the given float scale, or
``out / in`` when only ``sizes`` is given, so nearest picks exactly the index the ONNX formula
defines (ties broken by ``nearest_mode``). Nearest copies codes; the encoding passes through.

Linear interpolation (at most two resized axes) uses integer weights ``w_lo + w_hi = D`` per axis
and sums ``w_y w_x (q - z_in)`` exactly, then rounds once with ``profile.rescale.rounding``
(``Profile.resize_method``):

* ``q10``: TFLite's ``ResizeBilinearInteger``: ``D = 2^10``, ``scale_10 = (2^10 in + out/2) // out``
  (``(in-1)/(out-1)`` with ``align_corners``), source ``x scale_10 (+ scale_10/2 - 2^9)`` for
  half-pixel centres, ``lo = max(trunc(src / 2^10), 0)``, ``hi = min(ceil, in - 1)``; the sum is in
  ``2^-20`` units. Modes: ``half_pixel``, ``pytorch_half_pixel``, ``asymmetric``, ``align_corners``.
* ``exact``: the ONNX coordinate clamped to ``[0, in - 1]``, its fraction as an exact rational over
  the axis' common denominator ``D``.

The interpolated value is a code of the input encoding; a rescale follows if the output differs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from qdiverge.engines.emulator.fixed_point import rounding_divide
from qdiverge.engines.emulator.kernels.rescale import RescaleParams, prepare_rescale, rescale, scalar_encoding
from qdiverge.engines.emulator.registry import Binding, Unsupported, kernel


def _text(value: object, default: str) -> str:
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else str(value)


def _source(x: int, n_in: int, n_out: int, scale: Fraction, mode: str) -> Fraction:
    """ONNX ``coordinate_transformation_mode``: output index ``x`` to a source coordinate."""
    half = Fraction(1, 2)
    if mode == "half_pixel":
        return (x + half) / scale - half
    if mode == "pytorch_half_pixel":
        return (x + half) / scale - half if n_out > 1 else Fraction(0)
    if mode == "half_pixel_symmetric":
        adjustment = Fraction(n_out) / (scale * n_in)
        center = Fraction(n_in, 2)
        return center * (1 - adjustment) + (x + half) / scale - half
    if mode == "align_corners":
        return Fraction(0) if n_out == 1 else Fraction(x * (n_in - 1), n_out - 1)
    if mode == "asymmetric":
        return x / scale
    raise Unsupported(f"Resize coordinate_transformation_mode {mode!r}")


def _nearest(v: Fraction, mode: str) -> int:
    floor = math.floor(v)
    tie = v - floor == Fraction(1, 2)
    if mode == "floor":
        return floor
    if mode == "ceil":
        return math.ceil(v)
    if mode == "round_prefer_floor":
        return floor if tie else round(v)
    if mode == "round_prefer_ceil":
        return floor + 1 if tie else round(v)
    raise Unsupported(f"Resize nearest_mode {mode!r}")


@dataclass(frozen=True)
class Axis:
    """Linear taps of one resized axis: ``(w_lo * x[lo] + w_hi * x[hi]) / denominator``."""

    axis: int
    lo: np.ndarray
    hi: np.ndarray
    w_lo: np.ndarray
    w_hi: np.ndarray
    denominator: int


def _q10_axis(axis: int, n_in: int, n_out: int, mode: str) -> Axis:
    if mode == "align_corners" and n_out > 1:
        scale_10 = ((1 << 10) * (n_in - 1) + (n_out - 1) // 2) // (n_out - 1)
    else:
        scale_10 = ((1 << 10) * n_in + n_out // 2) // n_out
    x = np.arange(n_out, dtype=np.int64)
    centred = mode in ("half_pixel", "pytorch_half_pixel")
    src = x * scale_10 + (scale_10 // 2 - (1 << 9) if centred else 0)
    lo = np.maximum(np.trunc(src / 1024).astype(np.int64), 0)  # C division truncates toward zero
    hi = np.minimum(np.trunc((src + 1023) / 1024).astype(np.int64), n_in - 1)
    w_hi = src - 1024 * lo
    return Axis(axis, lo, hi, 1024 - w_hi, w_hi, 1024)


def _exact_axis(axis: int, n_in: int, n_out: int, scale: Fraction, mode: str) -> Axis:
    coords = [
        min(max(_source(x, n_in, n_out, scale, mode), Fraction(0)), Fraction(n_in - 1)) for x in range(n_out)
    ]
    den = math.lcm(*(c.denominator for c in coords))
    lo = np.array([math.floor(c) for c in coords], dtype=np.int64)
    w_hi = np.array([int((c - math.floor(c)) * den) for c in coords], dtype=np.int64)
    return Axis(axis, lo, np.minimum(lo + 1, n_in - 1), den - w_hi, w_hi, den)


@dataclass(frozen=True)
class ResizeParams:
    mode: str
    gather: tuple[tuple[int, np.ndarray], ...]  # nearest: (axis, source index per output index)
    axes: tuple[Axis, ...]  # linear
    z_in: int
    rounding: str
    after: RescaleParams | None


def _scales(b: Binding, shape: tuple[int, ...]) -> tuple[list[Fraction], list[int]]:
    """Per-axis exact scale and output size from the ``scales`` or ``sizes`` constant."""
    if b.node.attr("axes") is not None:
        raise Unsupported("Resize with the axes attribute")
    scales = b.constants[2] if len(b.constants) > 2 else None
    sizes = b.constants[3] if len(b.constants) > 3 else None
    if sizes is not None and np.asarray(sizes).size:
        if _text(b.node.attr("keep_aspect_ratio_policy"), "stretch") != "stretch":
            raise Unsupported("Resize keep_aspect_ratio_policy")
        out = [int(v) for v in np.asarray(sizes).reshape(-1)]
        return [Fraction(o, i) for o, i in zip(out, shape, strict=True)], out
    if scales is None or not np.asarray(scales).size:
        raise Unsupported("Resize scales/sizes computed at run time")
    exact = [Fraction(float(s)) for s in np.asarray(scales, dtype=np.float32).reshape(-1)]
    return exact, [math.floor(i * s) for i, s in zip(shape, exact, strict=True)]


@kernel("Resize")
class Resize:
    @staticmethod
    def prepare(b: Binding) -> ResizeParams:
        shape = b.known_shape(0)
        if b.node.attr("antialias", 0):
            raise Unsupported("Resize with antialias")
        enc_in, out_enc = b.input_encodings[0], b.output_encodings[0]
        _, z_in = scalar_encoding(enc_in, "Resize input")
        assert enc_in is not None
        after = None if out_enc is None else prepare_rescale(enc_in, out_enc, b.profile)
        mode = _text(b.node.attr("mode"), "nearest")
        ctm = _text(b.node.attr("coordinate_transformation_mode"), "half_pixel")
        scales, out = _scales(b, tuple(shape))
        resized = [a for a, (i, o) in enumerate(zip(shape, out, strict=True)) if i != o or scales[a] != 1]
        if mode == "nearest":
            nearest = _text(b.node.attr("nearest_mode"), "round_prefer_floor")
            gather = tuple(
                (
                    a,
                    np.array(
                        [
                            min(
                                max(_nearest(_source(x, shape[a], out[a], scales[a], ctm), nearest), 0),
                                shape[a] - 1,
                            )
                            for x in range(out[a])
                        ],
                        dtype=np.int64,
                    ),
                )
                for a in resized
            )
            return ResizeParams("nearest", gather, (), z_in, "", after)
        if mode != "linear" or len(resized) > 2 or any(a < len(shape) - 2 for a in resized):
            raise Unsupported(f"Resize mode {mode!r} on axes {resized}")
        method = b.profile.resize_method
        if method == "q10":
            if ctm not in ("half_pixel", "pytorch_half_pixel", "asymmetric", "align_corners"):
                raise Unsupported(f"q10 Resize with coordinate_transformation_mode {ctm!r}")
            axes = tuple(_q10_axis(a, shape[a], out[a], ctm) for a in resized)
        elif method == "exact":
            axes = tuple(_exact_axis(a, shape[a], out[a], scales[a], ctm) for a in resized)
        else:
            raise Unsupported(f"resize_method {method!r}")
        bits = max(enc_in.bitwidth, 8) + 1 + sum(math.ceil(math.log2(ax.denominator + 1)) + 1 for ax in axes)
        if bits > 62:
            raise Unsupported("Resize weights too fine for int64 accumulation")
        return ResizeParams("linear", (), axes, z_in, b.profile.rescale.rounding, after)

    @staticmethod
    def run(p: ResizeParams, x: np.ndarray, *unused: np.ndarray | None) -> np.ndarray:
        if p.mode == "nearest":
            y = x
            for axis, index in p.gather:
                y = np.take(y, index, axis=axis)
        else:
            # sum over every corner of the (1- or 2-axis) cell: prod_k w_k * (q - z) at the corner's taps
            terms = [(x - p.z_in, np.ones((), dtype=np.int64))]
            for ax in p.axes:
                shape = [1] * x.ndim
                shape[ax.axis] = -1
                terms = [
                    (np.take(v, idx, axis=ax.axis), w * weight.reshape(shape))
                    for v, w in terms
                    for idx, weight in ((ax.lo, ax.w_lo), (ax.hi, ax.w_hi))
                ]
            total = sum(v * w for v, w in terms)
            den = math.prod(ax.denominator for ax in p.axes)
            y = rounding_divide(np.asarray(total), den, p.rounding) + p.z_in
        return y if p.after is None else rescale(p.after, y)
