"""What-if transformations: modified copies of the encodings or the profile, never edits in place.

``per_channel`` re-derives symmetric per-channel weight encodings exactly as aimet-onnx >= 2.6 computes
them (aimet_formats.md §3.2): per channel, min/max gated to include 0,
``scale = max(max / (2^(bw-1) - 1), -min / 2^(bw-1))``, ``offset = -2^(bw-1)``, scale floored at
AIMET's minimum (float32 eps, what dead channels export) and stored as float32, as AIMET exports it.
``parse_what_if`` reads the CLI strings.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from qdiverge.encodings.bind import upstream_encoding, weight_axes
from qdiverge.encodings.schema import Encoding, EncodingSet, encoding_from_range, make_encoding
from qdiverge.errors import InputError
from qdiverge.loading.model import Model
from qdiverge.profiles import CHOICES
from qdiverge.profiles.schema import Profile

MIN_SCALE = float(np.finfo(np.float32).eps)
FORMS = "per-channel[=NODE,...], bias-bits=8|32 or encoding=TENSOR:MIN,MAX"


def symmetric_per_channel(name: str, weight: np.ndarray, axis: int, bitwidth: int) -> Encoding:
    """AIMET's signed symmetric per-channel encoding of ``weight`` along ``axis``."""
    rows = np.moveaxis(np.asarray(weight, dtype=np.float64), axis, 0).reshape(weight.shape[axis], -1)
    vmin, vmax = np.minimum(rows.min(axis=1), 0.0), np.maximum(rows.max(axis=1), 0.0)
    n_neg = 1 << (bitwidth - 1)
    scale = np.maximum(np.maximum(vmax / (n_neg - 1), -vmin / n_neg), MIN_SCALE).astype(np.float32)
    return make_encoding(
        name,
        bitwidth,
        scale,
        -float(n_neg),
        signed=True,
        symmetric=True,
        axis=axis % weight.ndim,
        is_param=True,
    )


def per_channel(
    encset: EncodingSet, model: Model, nodes: list[str] | tuple[str, ...] | None = None
) -> EncodingSet:
    """Copy of ``encset`` with per-channel symmetric weights for ``nodes`` (default: every Conv,
    ConvTranspose, Gemm and MatMul with a quantized constant weight). Existing int32 bias entries of those
    nodes are re-derived at ``s_in * s_w[c]`` as AIMET's export would."""
    wanted = None if nodes is None else set(nodes)
    if wanted is not None:
        missing = sorted(wanted - {n.name for n in model.nodes})
        if missing:
            names = ", ".join(map(repr, missing))
            raise InputError(f"what-if per-channel: no node named {names} in {model.path}")
    params, int32_bias = dict(encset.params), dict(encset.int32_bias)
    changed = set()
    for node in model.nodes:
        if wanted is not None and node.name not in wanted:
            continue
        w_name = node.inputs[1] if len(node.inputs) > 1 else ""
        weight, enc = model.initializers.get(w_name), encset.params.get(w_name)
        axes = weight_axes(node, weight.ndim) if weight is not None else None
        if weight is None or enc is None or enc.is_float or axes is None or weight.ndim < 2:
            if wanted is not None:
                raise InputError(f"what-if per-channel: node {node.name!r} has no quantized constant weight")
            continue
        params[w_name] = symmetric_per_channel(w_name, weight, axes[0], enc.bitwidth)
        changed.add(node.name)
        bias_name = node.inputs[2] if len(node.inputs) > 2 else ""
        in_enc = upstream_encoding(model, encset, node.inputs[0])
        if bias_name in int32_bias and in_enc is not None and not in_enc.is_float:
            scale = float(in_enc.scale.reshape(-1)[0]) * params[w_name].scale
            int32_bias[bias_name] = make_encoding(
                bias_name, 32, scale, -float(1 << 31), signed=True, symmetric=True, axis=0, is_param=True
            )
    return dataclasses.replace(encset, params=params, int32_bias=int32_bias)


def bias_bits(profile: Profile, bits: int) -> Profile:
    """Copy of ``profile`` whose bias is quantized to ``bits`` (8: re-expressed 8-bit bias; 32: int32)."""
    if bits not in CHOICES["bias_bits"]:
        allowed = ", ".join(map(str, CHOICES["bias_bits"]))
        raise InputError(f"what-if bias-bits={bits}: must be one of {allowed}")
    return dataclasses.replace(profile, bias_bits=bits)


def override_encoding(
    encset: EncodingSet,
    tensor: str,
    vmin: float,
    vmax: float,
    *,
    bitwidth: int | None = None,
    model: Model | None = None,
) -> EncodingSet:
    """Copy of ``encset`` where activation ``tensor`` gets the asymmetric encoding of ``[vmin, vmax]``
    (``encoding_from_range``: range widened to include 0), at its current bitwidth (8 if it had none)."""
    if not (math.isfinite(vmin) and math.isfinite(vmax)) or vmin > vmax:
        raise InputError(f"what-if encoding={tensor}:{vmin:g},{vmax:g}: need finite MIN <= MAX")
    if tensor in encset.params or tensor in encset.int32_bias:
        raise InputError(f"what-if encoding={tensor}: {tensor!r} is a param; use per-channel for weights")
    if model is not None and tensor not in model.tensor_names:
        raise InputError(f"what-if encoding={tensor}: no tensor {tensor!r} in {model.path}")
    old = encset.activations.get(tensor) or encset.derived.get(tensor)
    bits = bitwidth or (old.bitwidth if old is not None and not old.is_float else 8)
    activations = dict(encset.activations)
    activations[tensor] = encoding_from_range(tensor, vmin, vmax, bits)
    derived = {k: v for k, v in encset.derived.items() if k != tensor}
    return dataclasses.replace(encset, activations=activations, derived=derived)


@dataclass(frozen=True)
class WhatIf:
    """One parsed ``--what-if`` (``spec`` is the text, for reports)."""

    spec: str
    kind: str  # per-channel | bias-bits | encoding
    nodes: tuple[str, ...] | None = None
    bits: int = 0
    tensor: str = ""
    vmin: float = 0.0
    vmax: float = 0.0

    def apply(self, encset: EncodingSet, profile: Profile, model: Model) -> tuple[EncodingSet, Profile]:
        if self.kind == "per-channel":
            return per_channel(encset, model, self.nodes), profile
        if self.kind == "bias-bits":
            return encset, bias_bits(profile, self.bits)
        return override_encoding(encset, self.tensor, self.vmin, self.vmax, model=model), profile


def parse_what_if(spec: str) -> WhatIf:
    """Parse ``per-channel``, ``per-channel=n1,n2``, ``bias-bits=32`` or ``encoding=TENSOR:min,max``."""
    key, sep, value = spec.strip().partition("=")

    def bad(why: str) -> InputError:
        return InputError(f"--what-if {spec!r}: {why}; expected {FORMS}")

    if key == "per-channel":
        if not sep:
            return WhatIf(spec, "per-channel")
        nodes = tuple(n.strip() for n in value.split(","))
        if not all(nodes):
            raise bad("empty node name")
        return WhatIf(spec, "per-channel", nodes=nodes)
    if key == "bias-bits":
        try:
            bits = int(value)
        except ValueError:
            raise bad(f"{value!r} is not an integer") from None
        if bits not in CHOICES["bias_bits"]:
            raise bad(f"bias bits {bits} not supported")
        return WhatIf(spec, "bias-bits", bits=bits)
    if key == "encoding":
        tensor, colon, bounds = value.rpartition(":")  # tensor names may contain ':'
        parts = bounds.split(",")
        try:
            if not colon or not tensor or len(parts) != 2:
                raise ValueError
            vmin, vmax = float(parts[0]), float(parts[1])
        except ValueError:
            raise bad("encoding needs TENSOR:MIN,MAX with two numbers") from None
        if not (math.isfinite(vmin) and math.isfinite(vmax)) or vmin > vmax:
            raise bad("MIN and MAX must be finite with MIN <= MAX")
        return WhatIf(spec, "encoding", tensor=tensor, vmin=vmin, vmax=vmax)
    raise bad(f"unknown what-if {key!r}")
