"""The detector registry: every rule ``(ctx) -> list[Finding]`` by name, in report order.

A rule is registered here and nowhere else; ``run_checks`` runs them all (or a chosen few).
"""

from __future__ import annotations

from collections.abc import Callable

from qdiverge.diagnosis.activations import activation_range, lut_gap
from qdiverge.diagnosis.arithmetic import (
    bias_int32_saturation,
    bias_precision,
    requant_multiplier,
    rescale_mismatch,
)
from qdiverge.diagnosis.context import CheckContext
from qdiverge.diagnosis.fusion import missing_target_encoding, sim_only_quantizer
from qdiverge.diagnosis.weights import encoding_rederived, per_tensor_weight_collapse, weight_symmetry
from qdiverge.reports.model import Finding

Rule = Callable[[CheckContext], list[Finding]]

CHECKS: dict[str, Rule] = {
    "missing-target-encoding": missing_target_encoding,
    "sim-only-quantizer": sim_only_quantizer,
    "per-tensor-weight-collapse": per_tensor_weight_collapse,
    "weight-symmetry": weight_symmetry,
    "bias-int32-saturation": bias_int32_saturation,
    "bias-precision": bias_precision,
    "requant-multiplier": requant_multiplier,
    "rescale-mismatch": rescale_mismatch,
    "lut-gap": lut_gap,
    "activation-range": activation_range,
    "encoding-rederived": encoding_rederived,
}
