"""Integer-arithmetic detectors: int32 bias range and precision, requantization multipliers, and
element-wise rescales. Each uses the emulator's own primitives, so what is flagged is what it computes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from qdiverge.diagnosis.context import LINEAR_OPS, CheckContext, finding, per_channel_scale, worst_channels
from qdiverge.encodings.schema import Encoding
from qdiverge.engines.emulator import fixed_point as fx
from qdiverge.engines.emulator.requant import (
    apply_requant,
    effective_multiplier,
    prepare_requant,
    quantize_bias,
)
from qdiverge.loading.model import Node
from qdiverge.quant import aimet_qdq
from qdiverge.reports.model import Finding

RESCALE_OPS = ("Add", "Sub", "Concat")
HUGE_MULTIPLIER = 2.0**15  # beyond every fixed-point form's range (q15 gains need a right shift >= 0)


@dataclass(frozen=True)
class _Linear:
    """Scales around one linear op as the target sees them (``w_scale`` per output channel)."""

    node: Node
    in_scale: float
    w_scale: np.ndarray
    out: Encoding | None
    out_tensor: str


def _linear(ctx: CheckContext, node: Node, channels: int | None = None) -> _Linear | None:
    w_name, shape, axis = ctx.weight(node)
    w_enc = ctx.own_encoding(w_name)
    in_enc = ctx.input_encoding(node.inputs[0])
    if w_enc is None or in_enc is None or w_enc.is_float or in_enc.is_float:
        return None
    if channels is None:
        channels = shape[axis] if shape else w_enc.channels
    last = node
    if node.op_type == "MatMul":  # MatMul + Add(bias): the Add's output is the requantized tensor
        add = ctx.sole_consumer(node.outputs[0])
        last = add if add is not None and add.op_type == "Add" and ctx.bias(node)[1] is not None else node
    out, out_tensor = ctx.output_encoding(last)
    if out is not None and out.is_float:
        out = None
    if w_enc.scale.size not in (1, channels):
        return None  # blockwise weights, or grouped ConvTranspose channels: no single scale per output
    in_scale = float(in_enc.scale.reshape(-1)[0])
    return _Linear(node, in_scale, per_channel_scale(w_enc, channels), out, out_tensor)


def _out_scale(lin: _Linear) -> float | None:
    return float(lin.out.scale.reshape(-1)[0]) if lin.out is not None and not lin.out.per_channel else None


def _biases(ctx: CheckContext) -> Iterator[tuple[_Linear, str, np.ndarray, np.ndarray]]:
    """(linear scales, bias name, the bias the sim adds (float64), accumulator scale) per biased op."""
    for node in ctx.model.nodes:
        if node.op_type not in LINEAR_OPS:
            continue
        name, bias = ctx.bias(node)
        if bias is None:
            continue
        lin = _linear(ctx, node, bias.size)
        if lin is None:
            continue
        enc = ctx.encodings.params.get(name)  # a bias quantizer the sim ran with (off in shipped configs)
        sim_bias = aimet_qdq(bias, enc) if enc is not None else bias
        yield lin, name, np.asarray(sim_bias, dtype=np.float64).reshape(-1), lin.in_scale * lin.w_scale


def bias_int32_saturation(ctx: CheckContext) -> list[Finding]:
    """Biases with ``|b| / (s_in * s_w[c]) > 2^31 - 1``: the int32 bias saturates on the target."""
    found = []
    for lin, name, bias, acc_scale in _biases(ctx):
        limit = fx.INT32_MAX * acc_scale
        over = np.abs(bias) > limit
        if not over.any():
            continue
        err = np.where(over, np.abs(bias) - limit, 0.0)
        c = int(np.argmax(err))
        s_out = _out_scale(lin)
        lsb = float(err[c] / s_out) if s_out else None
        severity = "warning" if lsb is not None and lsb < ctx.limits.bias_lsb else "error"
        numbers = {
            "channels": bias.size,
            "saturated": int(over.sum()),
            "worst_channel": c,
            "bias": float(bias[c]),
            "representable": float(limit[c]),
            "error": float(err[c]),
            "acc_scale": float(acc_scale[c]),
        }
        if lsb is not None:
            numbers["error_lsb"] = lsb
        found.append(
            finding(
                "bias-int32-saturation",
                severity,
                f"{int(over.sum())} of {bias.size} channels: |bias| exceeds int32 at s_in*s_w; channel {c} bias"
                f" {bias[c]:.4g} saturates at ±{limit[c]:.4g} (error {err[c]:.3g}"
                + (f", {lsb:.3g} output LSB)" if lsb is not None else ")"),
                node=lin.node.name,
                tensor=name,
                fix="enlarge the weight scale of those channels so |b| < 2^31*s_in*s_w (AIMET's weight-scale"
                " adjustment does this); tiny scales usually come from dead channels",
                **numbers,
            )
        )
    return found


def bias_precision(ctx: CheckContext) -> list[Finding]:
    """Bias error in output LSB after the target's bias quantization (8-bit re-expressed, or int32 when
    its step ``s_in * s_w`` is not small against the output LSB)."""
    bits = ctx.profile.bias_bits
    found = []
    for lin, name, bias, acc_scale in _biases(ctx):
        s_out = _out_scale(lin)
        if s_out is None:
            continue
        target = quantize_bias(bias, acc_scale, bits, ctx.profile.bias_rounding) * acc_scale
        fits = np.abs(bias) <= fx.INT32_MAX * acc_scale  # saturation is bias-int32-saturation's finding
        lsb = np.where(fits, np.abs(target - bias) / s_out, 0.0)
        c = int(np.argmax(lsb))
        if lsb[c] < ctx.limits.bias_lsb:
            continue
        severity = "error" if lsb[c] >= ctx.limits.bias_lsb_error else "warning"
        how = f"the {bits}-bit bias (s_b = max|b|/127)" if bits == 8 else f"the int{bits} bias at s_in*s_w"
        fix = (
            "use a 32-bit bias (qairt-quantizer --bias_bitwidth 32; what-if: bias-bits=32)"
            if bits < 32
            else "the bias step s_in*s_w is coarse against the output LSB (M >= 1): narrow s_in or s_w"
        )
        found.append(
            finding(
                "bias-precision",
                severity,
                f"{how} is off by up to {lsb[c]:.3g} output LSB ({int(np.sum(lsb >= ctx.limits.bias_lsb))} of"
                f" {bias.size} channels over {ctx.limits.bias_lsb:g}); channel {c}: {bias[c]:.4g} becomes"
                f" {target[c]:.4g}",
                node=lin.node.name,
                tensor=name,
                fix=fix,
                bias_bits=bits,
                channels=bias.size,
                channels_over=int(np.sum(lsb >= ctx.limits.bias_lsb)),
                worst_channel=c,
                worst_lsb=float(lsb[c]),
                output_scale=s_out,
                per_channel_lsb=worst_channels(lsb),
            )
        )
    return found


def _sweep(m: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Accumulators (K, C) probing a requantization: one per output code (strided above 1024 codes) and
    the powers of two up to the int32 limits, where a wrapping left shift shows."""
    top = (1 << bits) - 1
    codes = np.unique(np.concatenate([np.arange(-top, top + 1, max(1, top // 512)), [-top, top]]))
    in_range = np.clip(np.round(codes[:, None] / m[None, :]), fx.INT32_MIN, fx.INT32_MAX).astype(np.int64)
    powers = np.array([1 << j for j in range(31)] + [fx.INT32_MAX], dtype=np.int64)
    big = np.broadcast_to(np.concatenate([powers, -powers])[:, None], (2 * powers.size, m.size))
    return in_range, big


def requant_multiplier(ctx: CheckContext) -> list[Finding]:
    """Linear-op multipliers ``M = s_in * s_w / s_out`` the profile's fixed-point form gets wrong: flushed
    to zero (output constant), too few bits (error beyond the rounding's 0.5 LSB), or ``M >= 1`` with a
    wrapping left shift. Measured by running the emulator's requantization on probe accumulators."""
    spec = ctx.profile.conv
    found = []
    for node in ctx.model.nodes:
        if node.op_type not in LINEAR_OPS:
            continue
        lin = _linear(ctx, node)
        s_out = _out_scale(lin) if lin is not None else None
        if lin is None or s_out is None:
            continue
        m = effective_multiplier(lin.in_scale, lin.w_scale, s_out, spec.scale_precision)
        if m.max() >= HUGE_MULTIPLIER:
            c = int(np.argmax(m))
            found.append(
                finding(
                    "requant-multiplier",
                    "error",
                    f"channel {c}: M = {m[c]:.3g}: one accumulator step is {m[c]:.3g} output LSB, so the output"
                    " encoding is degenerate against s_in*s_w and every output saturates",
                    node=node.name,
                    tensor=lin.out_tensor,
                    fix="recalibrate the output encoding of this layer",
                    multiplier=float(m[c]),
                    form=spec.multiplier,
                    worst_channel=c,
                    channels=m.size,
                )
            )
            continue
        params = prepare_requant(m, spec, 0, lin.out.bitwidth)
        top = (1 << lin.out.bitwidth) - 1
        in_range, big = _sweep(m, lin.out.bitwidth)
        errors = []
        for acc in (in_range, big):
            got = apply_requant(acc, params, -top, top, axis=1)
            errors.append(np.abs(got - np.clip(acc * m[None, :], -top, top)).max(axis=0))
        precision, overflow = errors
        flushed = params.multiplier == 0
        c = int(np.argmax(np.maximum(precision, overflow)))
        worst = float(max(precision[c], overflow[c]))
        if worst - 0.5 <= ctx.limits.requant_lsb and not flushed.any():
            continue
        if flushed.any():
            c = int(np.argmax(flushed))
            what = f"M = {m[c]:.3g} flushes to 0 in {spec.multiplier} form: the output is the zero point only"
        elif overflow[c] > precision[c]:
            what = (
                f"M = {m[c]:.3g} is applied with a left shift by {int(params.left_shift[c])} that wraps"
                f" large accumulators instead of saturating (up to {overflow[c]:.0f} LSB off)"
            )
        else:
            what = (
                f"M = {m[c]:.3g} has too few bits in {spec.multiplier} form: up to {precision[c]:.3g} LSB"
                " off (rounding alone is 0.5)"
            )
        severity = "error" if flushed.any() or worst - 0.5 > ctx.limits.requant_lsb_error else "warning"
        found.append(
            finding(
                "requant-multiplier",
                severity,
                f"channel {c}: {what}",
                node=node.name,
                tensor=lin.out_tensor,
                fix="keep s_in*s_w/s_out inside the multiplier's range: widen tiny weight scales (dead channels),"
                " or narrow the output encoding when M >= 1",
                multiplier=float(m[c]),
                form=spec.multiplier,
                worst_channel=c,
                max_error_lsb=worst,
                flushed=int(flushed.sum()),
                channels=m.size,
                channels_over=int(np.sum(np.maximum(precision, overflow) - 0.5 > ctx.limits.requant_lsb)),
            )
        )
    return found


def rescale_mismatch(ctx: CheckContext) -> list[Finding]:
    """Add/Sub/Concat inputs whose scales differ a lot: the finer input loses bits rescaling to the output."""
    found = []
    for node in ctx.model.nodes:
        if node.op_type not in RESCALE_OPS:
            continue
        scales = {}
        for name in node.inputs:
            enc = ctx.input_encoding(name) if name else None
            if enc is not None and not enc.is_float and not enc.per_channel:
                scales[name] = float(enc.scale[0])
        if len(scales) < 2:
            continue
        fine, coarse = min(scales, key=scales.get), max(scales, key=scales.get)
        ratio = scales[coarse] / scales[fine]
        if ratio < ctx.limits.rescale_ratio:
            continue
        out, _ = ctx.output_encoding(node)
        s_out = float(out.scale[0]) if out is not None and not out.is_float and not out.per_channel else None
        lost = float(np.log2(s_out / scales[fine])) if s_out else None
        numbers = {
            "ratio": ratio,
            "fine_scale": scales[fine],
            "coarse_scale": scales[coarse],
            "fine_input": fine,
            "coarse_input": coarse,
        }
        if s_out is not None:
            numbers |= {"output_scale": s_out, "bits_lost": lost}
        found.append(
            finding(
                "rescale-mismatch",
                "warning",
                f"input scales differ {ratio:.1f}x ({fine} {scales[fine]:.3g} vs {coarse} {scales[coarse]:.3g})"
                + (
                    f"; {fine} loses {lost:.1f} bits rescaling to the output scale {s_out:.3g}"
                    if lost
                    else ""
                )
                + "; small differences in the rescale's rounding and multiplier show here",
                node=node.name,
                tensor=node.outputs[0],
                fix="bring the input ranges closer (a shared encoding, or 16-bit activations on this branch)",
                **numbers,
            )
        )
    return found
