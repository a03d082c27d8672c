"""Weight and encoding-format detectors: per-tensor collapse, weight symmetry, re-derived encodings."""

from __future__ import annotations

import numpy as np

from qdiverge.diagnosis.context import (
    LINEAR_OPS,
    CheckContext,
    finding,
    per_channel_scale,
    worst_channels,
)
from qdiverge.encodings.schema import Encoding
from qdiverge.engines.emulator.requant import quantize_float
from qdiverge.profiles.fusion import is_depthwise
from qdiverge.reports.model import Finding


def per_tensor_weight_collapse(ctx: CheckContext) -> list[Finding]:
    """Per-tensor weights whose small output channels keep only a few integer levels (or none)."""
    k = ctx.limits.collapse_lsb
    found = []
    for node in ctx.model.nodes:
        if node.op_type not in LINEAR_OPS:
            continue
        name, _, axis = ctx.weight(node)
        enc = ctx.encodings.params.get(name)
        if enc is None or enc.is_float or enc.per_channel or name not in ctx.model.initializers:
            continue
        w = ctx.model.initializers[name]
        codes = quantize_float(w, enc, ctx.profile.weight_rounding) - int(enc.zero_point.reshape(-1)[0])
        rows = np.moveaxis(codes, axis, 0).reshape(w.shape[axis], -1)
        floats = np.moveaxis(np.abs(w.astype(np.float64)), axis, 0).reshape(w.shape[axis], -1)
        live = floats.max(axis=1) > 0  # an all-zero float channel is not a quantization problem
        scale = float(enc.scale.reshape(-1)[0])
        collapsed = live & (floats.max(axis=1) < k * scale)
        if not collapsed.any():
            continue
        dead = live & ~rows.any(axis=1)
        levels = np.array([np.unique(r).size for r in rows])
        worst = int(np.argmin(np.where(live, levels, np.iinfo(np.int64).max)))
        kind = "depthwise " if is_depthwise(node, ctx.model) else ""
        found.append(
            finding(
                "per-tensor-weight-collapse",
                "error" if dead.any() else "warning",
                f"{int(collapsed.sum())} of {rows.shape[0]} output channels of this {kind}{node.op_type} have"
                f" max|w| < {k:g} LSB of the per-tensor weight scale {scale:.3g}"
                f" ({int(dead.sum())} dead: every code 0); channel {worst} keeps {int(levels[worst])} levels",
                node=node.name,
                tensor=name,
                fix=f"quantize this layer's weights per channel (what-if: per-channel={node.name})",
                channels=rows.shape[0],
                collapsed=int(collapsed.sum()),
                dead=int(dead.sum()),
                worst_channel=worst,
                worst_channel_levels=int(levels[worst]),
                scale=scale,
                depthwise=int(bool(kind)),
            )
        )
    return found


def weight_symmetry(ctx: CheckContext) -> list[Finding]:
    """Weights with a non-zero zero point where integer targets want symmetric weights.

    HTP builds per-channel weights only as symmetric int8 with zero point 0 (an unsigned-symmetric
    per-channel export fails to build), and QNN's 16-bit conv has no asymmetric int16 weights. Strict
    symmetric (zero point -1) is left to ``encoding-rederived``.
    """
    found = []
    for node in ctx.model.nodes:
        if node.op_type not in LINEAR_OPS:
            continue
        name, _, _ = ctx.weight(node)
        enc = ctx.encodings.params.get(name)
        if enc is None or enc.is_float or _is_strict(enc):
            continue
        zp = enc.zero_point.reshape(-1)
        if not np.any(zp != 0):
            continue
        numbers = {
            "bitwidth": enc.bitwidth,
            "channels": zp.size,
            "nonzero_zero_points": int(np.sum(zp != 0)),
            "unsigned": int(not enc.signed),
            "zero_point": float(zp[np.argmax(zp != 0)]),
        }
        fix = (
            "export symmetric signed weights (quantsim config: params weight is_symmetric True,"
            " unsigned_symmetric False)"
        )
        if enc.per_channel:
            severity, why = (
                "error",
                (
                    "per-channel weights need symmetric int8 (zero point 0) on HTP;"
                    " the converter must re-derive them or the build fails"
                ),
            )
        elif enc.bitwidth > 8:
            severity, why = "error", f"QNN has no asymmetric int{enc.bitwidth} conv weights"
        else:
            severity, why = (
                "warning",
                (
                    "how the target applies a weight zero point is not public (HTP"
                    " measured about 17 dB lower output SQNR than symmetric weights"
                    " on a MobileNetV3-style net)"
                ),
            )
        found.append(
            finding(
                "weight-symmetry",
                severity,
                f"{enc.describe()} weights with zero point {numbers['zero_point']:g}: {why}",
                node=node.name,
                tensor=name,
                fix=fix,
                **numbers,
            )
        )
    return found


def _is_strict(enc: Encoding) -> bool:
    """AIMET strict symmetric: signed, offset -(2^(bw-1) - 1), i.e. grid [-127, 127] at 8 bit."""
    return bool(enc.symmetric and enc.signed and np.all(enc.offset == -((1 << (enc.bitwidth - 1)) - 1)))


def encoding_rederived(ctx: CheckContext) -> list[Finding]:
    """Encodings a converter will not take as written: strict-symmetric grids, and 2.0.0 int32 bias
    entries whose scale is not ``s_in * s_w`` (HTP re-derives the bias scale). Non-integer offsets never
    get here: the readers refuse them."""
    found = []
    for name, enc in _all_encodings(ctx):
        if enc.is_float:
            continue
        node = ctx.node_of(name)
        if _is_strict(enc):
            found.append(
                finding(
                    "encoding-rederived",
                    "warning",
                    f"strict-symmetric encoding (offset {int(enc.offset.reshape(-1)[0])}): after loading, the"
                    f" sim clamps at +{1 << (enc.bitwidth - 1)}·scale, and the int{enc.bitwidth} zero point is"
                    " -1, which targets needing zero point 0 re-derive",
                    node=node,
                    tensor=name,
                    fix="export without strict_symmetric",
                    scale=float(enc.scale.reshape(-1)[0]),
                    offset=float(enc.offset.reshape(-1)[0]),
                )
            )
    found += _int32_bias_scales(ctx)
    return found


def _all_encodings(ctx: CheckContext) -> list[tuple[str, Encoding]]:
    sets = (ctx.encodings.activations, ctx.encodings.params, ctx.encodings.derived)
    return sorted({name: enc for table in sets for name, enc in table.items()}.items())


def _int32_bias_scales(ctx: CheckContext) -> list[Finding]:
    found = []
    for node in ctx.model.nodes:
        if node.op_type not in LINEAR_OPS:
            continue
        bias_name, bias = ctx.bias(node)
        declared = ctx.encodings.int32_bias.get(bias_name)
        w_enc = ctx.own_encoding(ctx.weight(node)[0])
        in_enc = ctx.input_encoding(node.inputs[0])
        if declared is None or bias is None or w_enc is None or in_enc is None or w_enc.is_float:
            continue
        channels = bias.size
        expected = float(in_enc.scale.reshape(-1)[0]) * per_channel_scale(w_enc, channels)
        ratio = per_channel_scale(declared, channels) / expected
        off = np.abs(ratio - 1.0)
        if off.max() <= ctx.limits.scale_rtol:
            continue
        shared = len(ctx.model.consumers.get(bias_name, []))
        found.append(
            finding(
                "encoding-rederived",
                "warning",
                f"declared int32 bias scale is up to {float(ratio[np.argmax(off)]):.4g}x s_in*s_w; HTP ignores"
                " it and folds the bias at s_in*s_w, a converter that honours it computes a wrong bias"
                + (f" (bias shared by {shared} nodes)" if shared > 1 else ""),
                node=node.name,
                tensor=bias_name,
                fix="re-quantize the bias per node at s_in*s_w[c] (or give each node its own bias initializer)",
                worst_ratio=float(ratio[np.argmax(off)]),
                channels_off=int(np.sum(off > ctx.limits.scale_rtol)),
                shared_by=shared,
                worst_channels=worst_channels(off),
            )
        )
    return found
