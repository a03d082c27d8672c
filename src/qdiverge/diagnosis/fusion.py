"""Graph-structure detectors: tensors one side quantizes and the other does not (dsp_arithmetic.md §7.7).

``missing-target-encoding``: the target requantizes a tensor the export has no encoding for (a sim
supergroup-internal tensor whose chain the target does not fuse, or an un-encoded compute output), so
the converter invents one from calibration data the sim never saw. ``sim-only-quantizer``: the sim
rounds a tensor the target fuses away.
"""

from __future__ import annotations

import numpy as np

from qdiverge.diagnosis.context import COMPUTE_OPS, LINEAR_OPS, CheckContext, finding
from qdiverge.encodings.bind import DATA_MOVEMENT_OPS
from qdiverge.encodings.schema import encoding_from_range
from qdiverge.engines.emulator.kernels.rescale import same_encoding
from qdiverge.loading.model import Node
from qdiverge.profiles.fusion import is_depthwise
from qdiverge.reports.model import Finding

# Ops AIMET supergroups end with; an un-encoded linear output feeding one of them was a sim supergroup
ACTIVATIONS = frozenset({"Relu", "Clip", "PRelu", "LeakyRelu", "HardSwish", "HardSigmoid", "Sigmoid", "Tanh"})
SUPERGROUP_HEADS = LINEAR_OPS | {"Add"}
# Activations that commute with quantization to the same grid: Q(f(Q(x))) == Q(f(x)) when both Q agree
MONOTONE_CLAMPS = frozenset({"Relu", "Clip"})


def missing_target_encoding(ctx: CheckContext) -> list[Finding]:
    """Compute outputs without an encoding that the target requantizes (error inside a sim supergroup)."""
    found = []
    for node in ctx.model.nodes:
        if node.op_type not in COMPUTE_OPS or not node.outputs or not node.outputs[0]:
            continue
        tensor = node.outputs[0]
        if ctx.own_encoding(tensor) is not None or not (
            ctx.model.consumers.get(tensor) or tensor in ctx.model.outputs
        ):
            continue
        nxt = ctx.sole_consumer(tensor)
        if nxt is not None and ctx.fuses(node, nxt):
            continue  # the target fuses it too: no tensor, no encoding needed
        if nxt is not None and nxt.op_type in DATA_MOVEMENT_OPS and ctx.output_encoding(node)[0] is not None:
            continue  # converters propagate the encoding back across data movement
        chain = ctx.supergroup_tensors.get(tensor)
        looks_fused = nxt is not None and node.op_type in SUPERGROUP_HEADS and nxt.op_type in ACTIVATIONS
        if chain is None and looks_fused:
            chain = (node.op_type, nxt.op_type)  # no config given: the usual supergroup shape
        numbers: dict[str, float | int | str] = {"derive": ctx.profile.derive_missing}
        observed = (ctx.observed or {}).get(tensor)
        if observed is not None:
            derived = encoding_from_range(tensor, observed[0], observed[1])
            numbers |= {
                "observed_min": observed[0],
                "observed_max": observed[1],
                "derived_scale": float(derived.scale[0]),
                "derived_offset": float(derived.offset[0]),
            }
        if chain:
            numbers["chain"] = "+".join(chain)
            pair = f"{node.op_type}+{nxt.op_type}" if nxt is not None else numbers["chain"]
            message = (
                f"the sim fused {numbers['chain']} (no quantizer on this tensor) but"
                f" {ctx.profile.name} does not fuse {pair}: the target requantizes it to an encoding"
                " the converter derives"
            )
            severity = "error"
            fix = (
                f"remove the {'+'.join(chain)} supergroup from the quantsim config and re-export, so the"
                " sim quantizes this tensor too (or target a profile that fuses the chain)"
            )
        else:
            message = (
                f"no encoding for this {node.op_type} output: the converter derives one"
                f" ({ctx.profile.derive_missing}) from data the sim never saw"
            )
            severity = "warning"
            fix = "enable the output quantizer of this op in the quantsim config and re-export"
        found.append(
            finding(
                "missing-target-encoding",
                severity,
                message,
                node=node.name,
                tensor=tensor,
                fix=fix,
                **numbers,
            )
        )
    return found


def sim_only_quantizer(ctx: CheckContext) -> list[Finding]:
    """Encoded outputs the target fuses away: the sim rounds and clamps where the target does not."""
    found = []
    for node in ctx.model.nodes:
        tensor = node.outputs[0] if node.outputs else ""
        enc = ctx.encodings.activations.get(tensor)
        nxt = ctx.sole_consumer(tensor) if tensor else None
        if enc is None or enc.is_float or nxt is None or not ctx.fuses(node, nxt):
            continue
        out = ctx.own_encoding(nxt.outputs[0])
        if out is not None and nxt.op_type in MONOTONE_CLAMPS and same_encoding(enc, out):
            continue  # Relu/Clip of a grid value on the same grid: the extra rounding changes nothing
        s_t = float(np.max(enc.scale))
        s_out = float(np.max(out.scale)) if out is not None and not out.is_float else None
        numbers: dict[str, float | int | str] = {"scale": s_t}
        if s_out is not None:
            numbers |= {"output_scale": s_out, "extra_rounding_lsb": 0.5 * s_t / s_out}
        bound = numbers.get("extra_rounding_lsb")
        harmless = bound is not None and bound < 0.5 and nxt.op_type in MONOTONE_CLAMPS
        severity = "info" if harmless else "warning"
        found.append(
            finding(
                "sim-only-quantizer",
                severity,
                f"the sim rounds and clamps this {node.op_type} output to its own encoding (scale {s_t:.3g})"
                f" before {nxt.op_type}; {ctx.profile.name} fuses {node.op_type}+{nxt.op_type} and never does"
                + (f" (up to {bound:.2g} output LSB from that rounding alone)" if bound is not None else ""),
                node=node.name,
                tensor=tensor,
                fix=_sim_only_fix(node, nxt, ctx),
                **numbers,
            )
        )
    return found


def _sim_only_fix(node: Node, nxt: Node, ctx: CheckContext) -> str:
    """What to change so the sim stops quantizing a tensor the target fuses away."""
    if node.op_type == "Conv" and is_depthwise(node, ctx.model):
        # aimet-onnx leaves depthwise (and 3-D) convs out of every supergroup (_check_if_conv3d_or_depthwise_conv)
        return (
            "no quantsim config can fuse it: aimet-onnx keeps depthwise convs out of supergroups, so the sim"
            " always rounds here; expect this gap on target, or judge accuracy with `qdiverge bisect` / on device"
        )
    return (
        f"add a {node.op_type}+{nxt.op_type} supergroup to the quantsim config so the sim fuses like the target,"
        " and re-export"
    )
