"""Pooling and mean kernels: MaxPool, AveragePool, GlobalAveragePool, ReduceMean.

MaxPool takes the maximum of raw codes (monotone in the real value), then rescales when the output
encoding differs. Averages first form the exact integer window sum ``S = sum(q - z_in)`` (padding is
real 0, i.e. the zero point) and its tap count ``N`` (``count_include_pad`` counts padded taps inside
the declared pads), then ``Profile.pool_method`` decides (dsp_arithmetic.md §2.5, §4.7, §7.12):

* ``requant``: ``R(S * M_N) + z_out`` with ``M_N = s_in / (N s_out)`` through ``profile.rescale``;
* ``tflite``: ``RHAZ(S / N) + z_in`` by integer division (TFLite average pool), then a rescale if
  the output encoding differs;
* ``hexagon_nn``: ``(S * r + 2^(k-1)) >> k`` with ``r = RHAZ(2^k / N)`` a 15-bit reciprocal
  (``2^14 <= r < 2^15``, e.g. 29127 for 3x3), then a rescale. The exact Hexagon NN sequence has more
  intermediate shifts; this keeps only its 15-bit ``1/N`` [inferred from §4.7];
* ``float``: ONNX Runtime's QLinearAveragePool: float32 dequantized taps summed in window order,
  ``/ N`` (the full kernel size whenever ``count_include_pad``, even for ``ceil_mode`` windows that
  overhang the pads), then ``R(v / s_out + z_out)``. ORT's QLinearGlobalAveragePool instead sums integers and
  requantizes with ``M = s_in / (s_out N)`` in float32, so GlobalAveragePool and ReduceMean use the
  ``requant`` path under ``float``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from qdiverge.engines.emulator import compiled
from qdiverge.engines.emulator.fixed_point import round_to_int, rounding_divide, rounding_right_shift
from qdiverge.engines.emulator.kernels.rescale import (
    RescaleParams,
    prepare_rescale,
    ratio,
    rescale,
    scalar_encoding,
)
from qdiverge.engines.emulator.registry import Binding, Unsupported, kernel
from qdiverge.engines.emulator.requant import RequantParams, apply_requant, prepare_requant


@dataclass(frozen=True)
class Window:
    """Spatial geometry of a pool over the trailing ``len(kernel)`` axes."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    begin: tuple[int, ...]
    end: tuple[int, ...]
    out: tuple[int, ...]


def _window(b: Binding) -> Window:
    node, shape = b.node, b.known_shape(0)
    kernel_shape = tuple(int(k) for k in node.attr("kernel_shape"))
    n = len(kernel_shape)
    spatial = tuple(int(v) for v in shape[-n:])
    strides = tuple(int(v) for v in node.attr("strides", [1] * n))
    dilations = tuple(int(v) for v in node.attr("dilations", [1] * n))
    pads = [int(v) for v in node.attr("pads", [0] * 2 * n)]
    auto_pad = node.attr("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    extents = [(k - 1) * d + 1 for k, d in zip(kernel_shape, dilations, strict=True)]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = tuple(-(-i // s) for i, s in zip(spatial, strides, strict=True))
        total = [
            max((o - 1) * s + e - i, 0) for o, s, e, i in zip(out, strides, extents, spatial, strict=True)
        ]
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        begin, end = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
        return Window(kernel_shape, strides, dilations, tuple(begin), tuple(end), out)
    if auto_pad == "VALID":
        pads = [0] * 2 * n
    begin, end = tuple(pads[:n]), tuple(pads[n:])
    ceil = bool(node.attr("ceil_mode", 0))
    out_list = []
    for i, s, e, lo, hi in zip(spatial, strides, extents, begin, end, strict=True):
        span = i + lo + hi - e
        o = (-(-span // s) if ceil else span // s) + 1
        if ceil and (o - 1) * s >= i + lo:  # the last window must start inside the input or left pad
            o -= 1
        out_list.append(o)
    return Window(kernel_shape, strides, dilations, begin, end, tuple(out_list))


def _taps(x: np.ndarray, w: Window, fill: int | float) -> list[np.ndarray]:
    """Every kernel tap as an array of the output shape, in row-major kernel order (padding = ``fill``)."""
    n = len(w.kernel)
    need = [
        (o - 1) * s + (k - 1) * d + 1
        for o, s, k, d in zip(w.out, w.strides, w.kernel, w.dilations, strict=True)
    ]
    spatial = x.shape[-n:]
    after = [max(nd - lo - i, 0) for nd, lo, i in zip(need, w.begin, spatial, strict=True)]
    xp = np.pad(x, [(0, 0)] * (x.ndim - n) + list(zip(w.begin, after, strict=True)), constant_values=fill)
    taps = []
    for offset in itertools.product(*(range(k) for k in w.kernel)):
        index = tuple(
            slice(o * d, o * d + (out - 1) * s + 1, s)
            for o, d, out, s in zip(offset, w.dilations, w.out, w.strides, strict=True)
        )
        taps.append(xp[(Ellipsis, *index)])
    return taps


def _counts(w: Window, spatial: tuple[int, ...], include_pad: bool) -> np.ndarray:
    """Taps per output position: inside the input, or inside input plus declared pads."""
    per_axis = []
    for k, d, out, s, lo, hi, i in zip(
        w.kernel, w.dilations, w.out, w.strides, w.begin, w.end, spatial, strict=True
    ):
        pos = np.arange(k)[:, None] * d + np.arange(out)[None, :] * s - lo  # (tap, output) input index
        inside = (pos >= -lo) & (pos < i + hi) if include_pad else (pos >= 0) & (pos < i)
        per_axis.append(inside.sum(axis=0))
    counts = per_axis[0]
    for c in per_axis[1:]:
        counts = np.multiply.outer(counts, c)
    return counts.astype(np.int64)


# ---------------------------------------------------------------------------------------------- the mean


@dataclass(frozen=True)
class MeanParams:
    method: str
    z_in: int
    qmin: int  # output range
    qmax: int
    in_qmin: int
    in_qmax: int
    by_count: dict[int, RequantParams]  # requant: one multiplier per distinct tap count
    after: RescaleParams | None  # tflite / hexagon_nn: input encoding -> output encoding
    float_scales: tuple[float, float, int] = (1.0, 1.0, 0)  # float: s_in, s_out, z_out (float32)


def _prepare_mean(b: Binding, counts: set[int], float_ok: bool) -> MeanParams:
    enc_in, out = b.input_encodings[0], b.output_encodings[0]
    s_in, z_in = scalar_encoding(enc_in, "input")
    s_out, z_out = scalar_encoding(out, "output")
    assert enc_in is not None and out is not None
    method = b.profile.pool_method
    if method == "float" and not float_ok:
        method = "requant"
    spec = b.profile.rescale
    base: dict[str, Any] = dict(
        z_in=z_in,
        qmin=out.qmin,
        qmax=out.qmax,
        in_qmin=enc_in.qmin,
        in_qmax=enc_in.qmax,
        by_count={},
        after=None,
    )
    if method == "requant":
        base["by_count"] = {
            n: prepare_requant(ratio(spec, s_in, 1.0, s_out * n), spec, z_out) for n in counts
        }
    elif method in ("tflite", "hexagon_nn"):
        base["after"] = prepare_rescale(enc_in, out, b.profile)
    elif method == "float":
        base["float_scales"] = (s_in, s_out, z_out)
    else:
        raise Unsupported(f"pool_method {method!r}")
    return MeanParams(method, **base)


def _mean(p: MeanParams, total: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Output codes from exact sums ``total`` of ``q - z_in`` over ``counts`` taps (broadcast)."""
    counts = np.broadcast_to(counts, total.shape)
    if p.method == "requant":
        y = np.zeros(total.shape, dtype=np.int64)
        for n, params in p.by_count.items():
            mask = counts == n
            y[mask] = apply_requant(total[mask], params, p.qmin, p.qmax)
        return y
    if p.method == "tflite":
        avg = rounding_divide(total, counts, "half_away")
    else:  # hexagon_nn: 15-bit reciprocal of N
        k = 14 + np.ceil(np.log2(np.maximum(counts, 1))).astype(np.int64)
        recip = rounding_divide(np.int64(1) << k, counts, "half_away")
        avg = rounding_right_shift(total * recip, k, "half_up")
    avg = np.clip(avg + p.z_in, p.in_qmin, p.in_qmax)
    return avg if p.after is None else rescale(p.after, avg)


def _float_average(p: MeanParams, taps: list[np.ndarray], counts: np.ndarray) -> np.ndarray:
    """ORT QLinearAveragePool in float32 (padded taps hold 0.0, which adds nothing)."""
    f32 = np.float32
    s_in, s_out, z_out = (f32(v) for v in p.float_scales)
    acc = np.zeros(taps[0].shape, dtype=f32)
    for t in taps:
        acc = acc + s_in * t.astype(f32)
    v = (acc / counts.astype(f32)).astype(f32)
    return np.clip(round_to_int((v / s_out + z_out).astype(f32), "half_even"), p.qmin, p.qmax)


# ---------------------------------------------------------------------------------------------- kernels


@kernel("MaxPool")
class MaxPool:
    @staticmethod
    def prepare(b: Binding) -> tuple[Window, int, RescaleParams | None]:
        if len([o for o in b.node.outputs if o]) > 1:
            raise Unsupported("MaxPool with an Indices output")
        enc_in, out = b.input_encodings[0], b.output_encodings[0]
        scalar_encoding(enc_in, "input")
        assert enc_in is not None
        after = None if out is None else prepare_rescale(enc_in, out, b.profile)
        return _window(b), enc_in.qmin - 1, after

    @staticmethod
    def run(params: tuple[Window, int, RescaleParams | None], x: np.ndarray) -> np.ndarray:
        w, below, after = params
        y = np.max(np.stack(_taps(x, w, below)), axis=0)
        return y if after is None else rescale(after, y)


@kernel("AveragePool")
class AveragePool:
    @staticmethod
    def prepare(b: Binding) -> tuple[Window, np.ndarray, MeanParams]:
        w = _window(b)
        shape = b.known_shape(0)
        include_pad = bool(b.node.attr("count_include_pad", 0))
        counts = _counts(w, tuple(shape[-len(w.kernel) :]), include_pad)
        if include_pad and b.profile.pool_method == "float":  # ORT divides by the whole kernel, ceil_mode too
            counts = np.full_like(counts, math.prod(w.kernel))
        return w, counts, _prepare_mean(b, {int(n) for n in np.unique(counts)}, float_ok=True)

    @staticmethod
    def run(params: tuple[Window, np.ndarray, MeanParams], x: np.ndarray) -> np.ndarray:
        w, counts, p = params
        if p.method == "float":
            return _float_average(p, _taps(x - p.z_in, w, 0), counts)
        total = np.sum(np.stack(_taps(x - p.z_in, w, 0)), axis=0)
        return _mean(p, total, counts)


def _reduce(p: MeanParams, x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    """Mean over ``axes`` of codes ``x`` (any integer dtype): ``sum(q) - count * z_in``, exact."""
    count = math.prod(x.shape[a] for a in axes)
    trailing = axes == tuple(range(x.ndim - len(axes), x.ndim))
    if compiled.enabled() and trailing and x.size:
        outer = x.shape[: x.ndim - len(axes)]
        total = compiled.row_sums(x.reshape(math.prod(outer), count)).reshape(outer)
        if keepdims:
            total = total.reshape(outer + (1,) * len(axes))
    else:
        # unsigned codes sum in uint32 when that cannot overflow (half the memory traffic of int64)
        narrow = x.dtype.kind == "u" and count * int(np.iinfo(x.dtype).max) < 1 << 32
        total = np.sum(x, axis=axes, keepdims=keepdims, dtype=np.uint32 if narrow else np.int64)
    total = total.astype(np.int64) - count * p.z_in
    return _mean(p, total, np.full(total.shape, count, dtype=np.int64))


@kernel("GlobalAveragePool")
class GlobalAveragePool:
    narrow_inputs = True

    @staticmethod
    def prepare(b: Binding) -> MeanParams:
        return _prepare_mean(b, {math.prod(b.known_shape(0)[2:])}, float_ok=False)

    @staticmethod
    def run(p: MeanParams, x: np.ndarray) -> np.ndarray:
        return _reduce(p, x, tuple(range(2, x.ndim)), keepdims=True)


@kernel("ReduceMean")
class ReduceMean:
    narrow_inputs = True

    @staticmethod
    def prepare(b: Binding) -> tuple[tuple[int, ...], bool, MeanParams]:
        shape = b.known_shape(0)
        axes = b.node.attr("axes")
        if axes is None and len(b.node.inputs) > 1 and b.node.inputs[1]:
            if len(b.constants) < 2 or b.constants[1] is None:
                raise Unsupported("ReduceMean axes computed at run time")
            axes = [int(a) for a in np.asarray(b.constants[1]).reshape(-1)]
        if not axes:
            if b.node.attr("noop_with_empty_axes", 0):
                raise Unsupported("ReduceMean with noop_with_empty_axes (an identity)")
            axes = list(range(len(shape)))
        norm = tuple(sorted(int(a) % len(shape) for a in axes))
        count = math.prod(shape[a] for a in norm)
        return norm, bool(b.node.attr("keepdims", 1)), _prepare_mean(b, {count}, float_ok=False)

    @staticmethod
    def run(
        params: tuple[tuple[int, ...], bool, MeanParams], x: np.ndarray, *unused: np.ndarray
    ) -> np.ndarray:
        axes, keepdims, p = params
        return _reduce(p, x, axes, keepdims)
