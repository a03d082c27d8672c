"""Activation detectors: encoding ranges (degenerate, tiny, clipping the user's data) and LUT activations
whose table disagrees with the sim's float-then-quantize path or with the exact function."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from qdiverge.diagnosis.context import CheckContext, finding
from qdiverge.encodings.schema import Encoding
from qdiverge.engines.base import make_session
from qdiverge.engines.emulator.kernels.activation import FUNCTIONS, build_table
from qdiverge.loading.model import Model, Node
from qdiverge.quant import dequantize, quantize_aimet
from qdiverge.reports.model import Finding

FLOAT32_EPS = float(np.finfo(np.float32).eps)  # AIMET's minimum scale: a tensor constant at calibration


def activation_range(ctx: CheckContext) -> list[Finding]:
    """Degenerate (minimum-scale) and tiny ranges, and heavy clipping of the observed inputs.

    Ranges that exclude zero never get here: ``validate_encoding`` refuses them when the file is read.
    """
    lim = ctx.limits
    found = []
    for name, enc in sorted(ctx.encodings.activations.items()):
        if enc.is_float:
            continue
        node = ctx.node_of(name)
        scale = float(np.max(enc.scale))
        width = float(np.max(enc.max - enc.min))
        if scale <= FLOAT32_EPS * (1 + 1e-6):
            found.append(
                finding(
                    "activation-range",
                    "warning",
                    f"degenerate encoding: scale {scale:.3g} is AIMET's minimum, so the tensor was constant"
                    f" during calibration; any value beyond ±{width / 2:.2g} saturates",
                    node=node,
                    tensor=name,
                    fix="calibrate with data that exercises this tensor",
                    scale=scale,
                    range=width,
                )
            )
        elif width < lim.min_range:
            found.append(
                finding(
                    "activation-range",
                    "info",
                    f"range {width:.3g} is below the {lim.min_range:g} minimum some converters enforce (SNPE);"
                    " such a converter widens the encoding and every code changes",
                    node=node,
                    tensor=name,
                    fix="pin the encoding on the converter (quantization overrides)",
                    scale=scale,
                    range=width,
                    min_range=lim.min_range,
                )
            )
        observed = (ctx.observed or {}).get(name)
        if observed is not None and observed[2] >= lim.clip_fraction:
            lo, hi, frac = observed
            found.append(
                finding(
                    "activation-range",
                    "error" if frac >= lim.clip_fraction_error else "warning",
                    f"{frac:.1%} of the observed values fall outside the encoding range"
                    f" [{float(np.min(enc.min)):.4g}, {float(np.max(enc.max)):.4g}]"
                    f" (observed [{lo:.4g}, {hi:.4g}]);"
                    " both sides clip them, and the clipped error dwarfs rounding differences",
                    node=node,
                    tensor=name,
                    fix=f"recalibrate on data like these inputs (what-if: encoding={name}:{lo:.6g},{hi:.6g})",
                    observed_min=lo,
                    observed_max=hi,
                    fraction_clipped=frac,
                    encoding_min=float(np.min(enc.min)),
                    encoding_max=float(np.max(enc.max)),
                )
            )
    return found


def _node_fn(model: Model, node: Node, dtype: int) -> Callable[[np.ndarray], np.ndarray]:
    """``f(x)`` of unary ``node`` alone: onnxruntime for float32 (the kernels the sim runs), the ONNX
    reference evaluator for float64 (an independent exact oracle)."""
    single = onnx.NodeProto()
    single.CopyFrom(model.proto.graph.node[node.index])
    graph = helper.make_graph(
        [single],
        "lut",
        [helper.make_tensor_value_info(single.input[0], dtype, None)],
        [helper.make_tensor_value_info(single.output[0], dtype, None)],
    )
    proto = helper.make_model(
        graph, opset_imports=model.proto.opset_import, ir_version=model.proto.ir_version
    )
    if dtype == TensorProto.FLOAT:
        session = make_session(proto)
        return lambda x: session.run(None, {single.input[0]: x})[0]
    evaluator = ReferenceEvaluator(proto)
    return lambda x: evaluator.run(None, {single.input[0]: x})[0]


def _table_inputs(ctx: CheckContext, node: Node) -> tuple[Encoding, Encoding] | None:
    if node.op_type not in ctx.profile.lut.ops or node.op_type not in FUNCTIONS:
        return None
    if node.domain not in ("", "ai.onnx"):
        return None
    enc_in = ctx.input_encoding(node.inputs[0])
    enc_out = ctx.own_encoding(node.outputs[0])
    for enc in (enc_in, enc_out):
        if enc is None or enc.is_float or enc.per_channel or enc.bitwidth > 16:
            return None
    return enc_in, enc_out


def lut_gap(ctx: CheckContext) -> list[Finding]:
    """LUT activations: target table vs the sim's path (f in float32 on the dequantized input, then AIMET's
    quantizer), code by code, and vs the exact function (float64) in output LSB."""
    lut = ctx.profile.lut
    found = []
    for node in ctx.model.nodes:
        encs = _table_inputs(ctx, node)
        if encs is None:
            continue
        enc_in, enc_out = encs
        table = build_table(FUNCTIONS[node.op_type], dict(node.attrs), enc_in, enc_out, lut).values
        x = dequantize(np.arange(enc_in.qmin, enc_in.qmax + 1), enc_in)
        sim = quantize_aimet(_node_fn(ctx.model, node, TensorProto.FLOAT)(x), enc_out)
        exact = _node_fn(ctx.model, node, TensorProto.DOUBLE)(x.astype(np.float64))
        position = np.clip(exact / float(enc_out.scale[0]) - float(enc_out.offset[0]), 0, enc_out.num_steps)
        gap = np.abs(table - (position + enc_out.qmin))
        diff = np.abs(table - sim)
        over = int(np.sum(gap > ctx.limits.lut_lsb))
        if not diff.any() and not over:
            continue
        severity = "warning" if over or diff.max() >= 2 else "info"
        found.append(
            finding(
                "lut-gap",
                severity,
                f"the target's {enc_in.bitwidth}-bit {node.op_type} table ({lut.compute}, {lut.rounding})"
                f" differs from the sim on {int(np.count_nonzero(diff))} of {table.size} input codes"
                f" (max {int(diff.max())} LSB);"
                f" {over} codes are more than {ctx.limits.lut_lsb:g} LSB from the exact function"
                f" (max {float(gap.max()):.3g})",
                node=node.name,
                tensor=node.outputs[0],
                fix="ties round differently (sim: half away from zero); larger gaps come from the table's"
                " precision or the output encoding: 16-bit activations here shrink both",
                codes=table.size,
                codes_differ=int(np.count_nonzero(diff)),
                max_diff_lsb=int(diff.max()),
                codes_over_exact=over,
                max_exact_gap_lsb=float(gap.max()),
            )
        )
    return found
