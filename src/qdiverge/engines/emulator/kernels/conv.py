"""Conv (incl. grouped and depthwise) and ConvTranspose on integer codes, 1-D and 2-D.

    acc[n, m, y, x] = sum_{c, i, j} (x_q[n, c, y*s + i*d - pad, ...] - z_x) * (w_q[m, c, i, j] - z_w[m])

Padded taps contribute 0 (padding with the zero point). The sum is exact (float BLAS under the bound in
``linear``); the epilogue adds the int32 bias, applies the accumulator's int32 behaviour and requantizes.
Under the float32 bound a Conv runs on an onnxruntime float32 Conv (``accumulate``). Under the float64 bound
grouped convs run as im2col + batched matmul, depthwise convs (one input channel per group) as a loop over
the kh*kw taps with whole-tensor multiply-adds; ConvTranspose always as matmul + col2im scatter-add.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from qdiverge.engines.emulator.accumulate import OrtSum, conv_sum
from qdiverge.engines.emulator.linear import (
    Epilogue,
    WeightKernel,
    activation_encoding,
    code_radius,
    compact_ints,
    constant_bias,
    constant_weight,
    prepare_accumulation,
    quantized_weights,
    stacked_matmul,
)
from qdiverge.engines.emulator.registry import Binding, Unsupported, kernel


@dataclass(frozen=True)
class ConvGeometry:
    """Attributes of a 2-D (or 1-D lifted to 2-D) Conv/ConvTranspose, read once."""

    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right (ONNX order: begins then ends)
    auto_pad: str
    group: int
    one_d: bool


def _geometry(b: Binding, w_shape: tuple[int, ...]) -> ConvGeometry:
    node = b.node
    rank = len(w_shape) - 2
    if rank not in (1, 2):
        raise Unsupported(f"{rank}-D convolution")
    one_d = rank == 1

    def pair(name: str, default: int) -> tuple[int, ...]:
        values = tuple(int(v) for v in node.attr(name, [default] * rank))
        return (1, *values) if one_d else values

    kernel_shape = tuple(int(v) for v in node.attr("kernel_shape", w_shape[2:]))
    if kernel_shape != tuple(w_shape[2:]):
        raise Unsupported("kernel_shape differs from the weight shape")
    pads = tuple(int(v) for v in node.attr("pads", [0] * 2 * rank))
    if one_d:
        pads = (0, pads[0], 0, pads[1])
        kernel_shape = (1, *kernel_shape)
    if min(pads) < 0:
        raise Unsupported("negative pads")
    auto_pad = node.attr("auto_pad", "NOTSET")
    return ConvGeometry(
        kernel=kernel_shape,  # type: ignore[arg-type]
        strides=pair("strides", 1),  # type: ignore[arg-type]
        dilations=pair("dilations", 1),  # type: ignore[arg-type]
        pads=pads,  # type: ignore[arg-type]
        auto_pad=auto_pad,
        group=int(node.attr("group", 1)),
        one_d=one_d,
    )


def _conv_pads(g: ConvGeometry, h: int, w: int) -> tuple[int, int, int, int]:
    if g.auto_pad in ("NOTSET", ""):
        return g.pads
    if g.auto_pad == "VALID":
        return (0, 0, 0, 0)
    begins, ends = [], []
    for size, k, s, d in zip((h, w), g.kernel, g.strides, g.dilations, strict=True):
        total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small = total // 2
        begins.append(small if g.auto_pad == "SAME_UPPER" else total - small)
        ends.append(total - begins[-1])
    return (begins[0], begins[1], ends[0], ends[1])


@dataclass(frozen=True)
class ConvParams:
    geometry: ConvGeometry
    weights: np.ndarray  # (G, Mg, Cg*kh*kw) for im2col, (M, kh, kw) for depthwise; w - z_w in acc dtype
    # (compact ints when ``ort`` is set: then only ``conv_accumulate`` reads them)
    depthwise: bool
    x_zero: int
    dtype: type
    epilogue: Epilogue
    ort: OrtSum | None = None  # the float32 fast path (lifted to 2-D like ``weights``)


def _as_2d(x: np.ndarray, one_d: bool) -> np.ndarray:
    return x[:, :, None, :] if one_d else x


def _as_1d(y: np.ndarray, one_d: bool) -> np.ndarray:
    """Undo ``_as_2d`` on an output."""
    return y[:, :, 0, :] if one_d else y


def _padded(x: np.ndarray, x_zero: int, dtype: type, pads: tuple[int, int, int, int]) -> np.ndarray:
    """``x - z_x`` in the accumulation dtype, zero-padded (= padding with the zero point)."""
    xf = x.astype(dtype)
    xf -= dtype(x_zero)
    if any(pads):
        t, left, bottom, r = pads
        xf = np.pad(xf, ((0, 0), (0, 0), (t, bottom), (left, r)))
    return xf


def _depthwise_sum(xp: np.ndarray, p: ConvParams, out_hw: tuple[int, int]) -> np.ndarray:
    g = p.geometry
    (kh, kw), (sh, sw), (dh, dw) = g.kernel, g.strides, g.dilations
    oh, ow = out_hw
    m = p.weights.shape[0]
    if m != xp.shape[1]:  # depth multiplier > 1: output channel m reads input channel m // (M / C)
        xp = np.repeat(xp, m // xp.shape[1], axis=1)
    acc = np.zeros((xp.shape[0], m, oh, ow), dtype=p.dtype)
    tmp = np.empty_like(acc)
    for i in range(kh):
        for j in range(kw):
            tap = xp[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw]
            np.multiply(tap, p.weights[None, :, i, j, None, None], out=tmp)
            acc += tmp
    return acc


def _im2col_matmul(xp: np.ndarray, p: ConvParams, out_hw: tuple[int, int]) -> np.ndarray:
    g = p.geometry
    (kh, kw), (sh, sw), (dh, dw) = g.kernel, g.strides, g.dilations
    oh, ow = out_hw
    n = xp.shape[0]
    groups, mg, k = p.weights.shape
    if (kh, kw) == (1, 1):
        cols = xp[:, :, : sh * (oh - 1) + 1 : sh, : sw * (ow - 1) + 1 : sw].reshape(n, groups, k, oh * ow)
    else:
        win = sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
        win = win[:, :, : sh * (oh - 1) + 1 : sh, : sw * (ow - 1) + 1 : sw, ::dh, ::dw]
        cols = win.transpose(0, 1, 4, 5, 2, 3).reshape(n, groups, k, oh * ow)  # the one copy
    acc = stacked_matmul(p.weights, cols)  # (N, G, Mg, P)
    return acc.reshape(n, groups * mg, oh, ow)


@kernel("Conv")
class Conv(WeightKernel):
    @staticmethod
    def prepare(b: Binding) -> ConvParams:
        x_enc = activation_encoding(b.input_encodings[0], "input")
        g = _geometry(b, constant_weight(b).shape)
        wz, w_scale = quantized_weights(b, 1, 0)
        m, cg = wz.shape[:2]
        if m % g.group:
            raise Unsupported("output channels not divisible by group")
        wz = wz.reshape(m, cg, *g.kernel)
        bound = code_radius(x_enc) * float(np.abs(wz).reshape(m, -1).sum(axis=1).max())
        dtype, epilogue = prepare_accumulation(b, x_enc, w_scale, constant_bias(b), bound)
        depthwise = cg == 1 and g.group > 1
        weights = wz[:, 0] if depthwise else wz.reshape(g.group, m // g.group, -1)
        x_zero = int(x_enc.zero_point[0])
        # onnxruntime refuses SAME auto-padding with dilations; those few convs stay on numpy
        fast = dtype is np.float32 and not (g.auto_pad.startswith("SAME") and g.dilations != (1, 1))
        return ConvParams(
            geometry=g,
            weights=compact_ints(weights) if fast else weights.astype(dtype),
            depthwise=depthwise,
            x_zero=x_zero,
            dtype=dtype,
            epilogue=epilogue,
            ort=conv_sum(_ort_attrs(g), wz.astype(np.float32), x_zero, (x_enc.qmin, x_enc.qmax), epilogue)
            if fast
            else None,
        )

    @staticmethod
    def run(p: ConvParams, x: np.ndarray, *_constants: np.ndarray) -> np.ndarray:
        if p.ort is None:
            y = p.epilogue(conv_accumulate(p, x), axis=1)
        else:
            y = p.ort.codes(_as_2d(x, p.geometry.one_d), p.epilogue, axis=1)
        return _as_1d(y, p.geometry.one_d)


def _ort_attrs(g: ConvGeometry) -> dict[str, object]:
    """ONNX Conv attributes of the (2-D lifted) geometry."""
    attrs: dict[str, object] = {
        "kernel_shape": list(g.kernel),
        "strides": list(g.strides),
        "dilations": list(g.dilations),
        "group": g.group,
    }
    if g.auto_pad in ("NOTSET", ""):
        attrs["pads"] = list(g.pads)
    else:
        attrs["auto_pad"] = g.auto_pad
    return attrs


def conv_accumulate(p: ConvParams, x: np.ndarray) -> np.ndarray:
    """The exact sum ``sum (x - z_x)(w - z_w)`` of a prepared Conv (2-D layout, float dtype ``p.dtype``)."""
    g = p.geometry
    p = replace(p, weights=p.weights.astype(p.dtype, copy=False))
    x = _as_2d(x, g.one_d)
    xp = _padded(x, p.x_zero, p.dtype, _conv_pads(g, x.shape[2], x.shape[3]))
    out_hw = tuple(
        (size - (k - 1) * d - 1) // s + 1
        for size, k, s, d in zip(xp.shape[2:], g.kernel, g.strides, g.dilations, strict=True)
    )
    if p.depthwise:
        return _depthwise_sum(xp, p, out_hw)  # type: ignore[arg-type]
    return _im2col_matmul(xp, p, out_hw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ConvTransposeParams:
    geometry: ConvGeometry
    weights: np.ndarray  # (G, Mg*kh*kw, Cg): w^T per group, w - z_w in acc dtype
    out_channels: int
    output_padding: tuple[int, int]
    output_shape: tuple[int, ...] | None
    x_zero: int
    dtype: type
    epilogue: Epilogue


def _transpose_pads(
    p: ConvTransposeParams, h: int, w: int
) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """(pads, full extent) of a ConvTranspose for input size (h, w), following the ONNX shape rules."""
    g = p.geometry
    full = [
        s * (size - 1) + op + (k - 1) * d + 1
        for size, s, op, k, d in zip((h, w), g.strides, p.output_padding, g.kernel, g.dilations, strict=True)
    ]
    target = p.output_shape
    if target is None and g.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = (h * g.strides[0], w * g.strides[1])
    if target is None:
        return g.pads, (full[0], full[1])
    begins, ends = [], []
    for extent, size in zip(full, target, strict=True):
        total = extent - size
        if total < 0:
            raise Unsupported("ConvTranspose output_shape larger than the full output")
        first = total // 2 if g.auto_pad == "SAME_UPPER" else total - total // 2
        begins.append(first)
        ends.append(total - first)
    return (begins[0], begins[1], ends[0], ends[1]), (full[0], full[1])


@kernel("ConvTranspose")
class ConvTranspose(WeightKernel):
    @staticmethod
    def prepare(b: Binding) -> ConvTransposeParams:
        x_enc = activation_encoding(b.input_encodings[0], "input")
        w = constant_weight(b)
        g = _geometry(b, w.shape)
        c, mg = w.shape[:2]
        enc = b.param_encodings[1]
        if enc is not None and enc.per_channel and g.group > 1:
            raise Unsupported("per-channel grouped ConvTranspose")
        wz, w_scale = quantized_weights(b, 1, 1)
        wz = wz.reshape(c, mg, *g.kernel)
        m = mg * g.group
        per_out = np.abs(wz).reshape(g.group, c // g.group, mg, -1).sum(axis=(1, 3)).reshape(m)
        bound = code_radius(x_enc) * float(per_out.max())
        dtype, epilogue = prepare_accumulation(b, x_enc, w_scale, constant_bias(b), bound)
        cg = c // g.group
        wt = wz.reshape(g.group, cg, mg * g.kernel[0] * g.kernel[1]).transpose(0, 2, 1)
        out_pad = tuple(int(v) for v in b.node.attr("output_padding", [0] * (w.ndim - 2)))
        shape = b.node.attr("output_shape")
        if g.one_d:
            out_pad = (0, *out_pad)
            shape = None if shape is None else (1, *shape)
        return ConvTransposeParams(
            geometry=g,
            weights=np.ascontiguousarray(wt, dtype=dtype),
            out_channels=m,
            output_padding=out_pad,  # type: ignore[arg-type]
            output_shape=None if shape is None else tuple(int(v) for v in shape[-2:]),
            x_zero=int(x_enc.zero_point[0]),
            dtype=dtype,
            epilogue=epilogue,
        )

    @staticmethod
    def run(p: ConvTransposeParams, x: np.ndarray, *_constants: np.ndarray) -> np.ndarray:
        g = p.geometry
        x = _as_2d(x, g.one_d)
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (dh, dw) = g.kernel, g.strides, g.dilations
        xf = _padded(x, p.x_zero, p.dtype, (0, 0, 0, 0)).reshape(n, g.group, c // g.group, h * w)
        cols = stacked_matmul(p.weights, xf)  # (N, G, Mg*kh*kw, H*W)
        cols = cols.reshape(n, p.out_channels, kh, kw, h, w)
        pads, (fh, fw) = _transpose_pads(p, h, w)
        full = np.zeros((n, p.out_channels, fh, fw), dtype=p.dtype)
        for i in range(kh):  # col2im: each tap lands on a strided sub-grid of the output
            for j in range(kw):
                full[
                    :, :, i * dh : i * dh + sh * (h - 1) + 1 : sh, j * dw : j * dw + sw * (w - 1) + 1 : sw
                ] += cols[:, :, i, j]
        t, left, bottom, r = pads
        acc = full[:, :, t : fh - bottom, left : fw - r]
        return _as_1d(p.epilogue(acc, axis=1), g.one_d)
