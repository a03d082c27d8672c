"""What every detector reads: the model, its encodings, the target profile, and graph look-ups.

The look-ups answer the questions the detectors share: which encoding a tensor has on the target
(its own, or the one it inherits through data-movement ops), which encoding the target requantizes a
compute op to (its output's, or the end of a fused chain's), which axis of a weight holds the output
channels, and whether the target fuses two ops.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from qdiverge.encodings.bind import DATA_MOVEMENT_OPS, upstream_encoding, weight_axes
from qdiverge.encodings.schema import Encoding, EncodingSet
from qdiverge.loading.model import Model, Node
from qdiverge.profiles.fusion import fuses
from qdiverge.profiles.schema import LUT_ACTIVATIONS, Profile
from qdiverge.reports.model import Finding

# Ops with a weight whose output channels get a requantization multiplier s_in * s_w[c] / s_out
LINEAR_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# Ops whose float output an integer target must hold in some encoding
COMPUTE_OPS = (
    LINEAR_OPS
    | frozenset(LUT_ACTIVATIONS)
    | frozenset(
        {
            "Add",
            "Sub",
            "Mul",
            "Div",
            "Concat",
            "Relu",
            "Clip",
            "PRelu",
            "LeakyRelu",
            "Softmax",
            "AveragePool",
            "GlobalAveragePool",
            "ReduceMean",
            "Resize",
            "BatchNormalization",
            "InstanceNormalization",
            "LayerNormalization",
            "GroupNormalization",
        }
    )
)


@dataclass(frozen=True)
class Limits:
    """Every detector threshold, in one place (keyword defaults of the rules read from here)."""

    collapse_lsb: float = 4.0  # a per-tensor weight channel with max|w| below this many LSB has collapsed
    bias_lsb: float = 0.5  # bias error (output LSB) that makes bias-precision a warning
    bias_lsb_error: float = 2.0  # ... and an error
    requant_lsb: float = 0.5  # requant error beyond the rounding's own 0.5 LSB that is reported
    requant_lsb_error: float = 2.0
    clip_fraction: float = 0.01  # observed fraction clipped by an encoding: warning
    clip_fraction_error: float = 0.10  # ... and error
    min_range: float = 0.01  # encoding range below which converters widen it (SNPE 0.01, QNN 1e-4)
    rescale_ratio: float = 8.0  # Add/Sub/Concat input scale ratio that loses precision in the rescale
    lut_lsb: float = 1.0  # LUT code farther than this from the exact function
    scale_rtol: float = 1e-6  # relative tolerance when two scales should be equal


@dataclass
class CheckContext:
    """Inputs of the detectors. ``observed`` maps a tensor to (min, max, fraction clipped by its encoding)
    seen on the user's inputs; ``config`` is the AIMET quantsim config when one was given."""

    model: Model
    encodings: EncodingSet
    profile: Profile
    config: Any = None  # qdiverge.encodings.config.QuantsimConfig
    observed: Mapping[str, tuple[float, float, float]] | None = None
    limits: Limits = field(default_factory=Limits)

    def own_encoding(self, tensor: str) -> Encoding | None:
        """The encoding the export gives ``tensor`` itself (activation, param, or 2.0.0 derived entry)."""
        enc = self.encodings.activations.get(tensor) or self.encodings.params.get(tensor)
        return enc or self.encodings.derived.get(tensor)

    def input_encoding(self, tensor: str) -> Encoding | None:
        """Encoding activation ``tensor`` carries on the target, following data-movement ops upstream."""
        return upstream_encoding(self.model, self.encodings, tensor)

    def node_of(self, tensor: str) -> str:
        """Name of the node a tensor's finding attaches to: its producer, else its first consumer."""
        node = self.model.producer.get(tensor)
        if node is None and self.model.consumers.get(tensor):
            node = self.model.consumers[tensor][0]
        return node.name if node is not None else ""

    def sole_consumer(self, tensor: str) -> Node | None:
        consumers = self.model.consumers.get(tensor, [])
        if len(consumers) != 1 or tensor in self.model.outputs:
            return None
        return consumers[0]

    def fuses(self, first: Node, second: Node) -> bool:
        """Whether the target fuses node ``second`` into the preceding node ``first``."""
        return fuses(self.profile, first, second, self.model)

    def output_encoding(self, node: Node) -> tuple[Encoding | None, str]:
        """Encoding the target requantizes ``node``'s accumulator to: the end of the chain the target fuses
        (whatever the sim quantized inside it), else the output's own encoding, else the first encoding
        down a data-movement or supergroup-internal chain."""
        tensor, current = node.outputs[0], node
        for _ in range(len(self.model.nodes)):
            nxt = self.sole_consumer(tensor)
            if nxt is not None and self.fuses(current, nxt):
                tensor, current = nxt.outputs[0], nxt
                continue
            enc = self.own_encoding(tensor)
            if enc is not None:
                return enc, tensor
            if nxt is None or not (nxt.op_type in DATA_MOVEMENT_OPS or tensor in self.supergroup_tensors):
                break
            tensor, current = nxt.outputs[0], nxt
        return None, tensor

    @cached_property
    def supergroup_tensors(self) -> Mapping[str, tuple[str, ...]]:
        """Supergroup-internal tensors of the sim config, with their op chains ({} without a config)."""
        if self.config is None:
            return {}
        from qdiverge.encodings.config import supergroup_internal_tensors

        op_types = {node.name: node.op_type for node in self.model.nodes}
        tensors = supergroup_internal_tensors(self.config, self.model)  # chains of node names
        return {t: tuple(op_types[name] for name in chain) for t, chain in tensors.items()}

    def weight(self, node: Node) -> tuple[str, tuple[int, ...], int]:
        """(name, shape, output-channel axis) of a linear op's weight, without decoding its value (read that
        from ``model.initializers`` where it is needed; it is absent when the weight is not a constant)."""
        name = node.inputs[1] if len(node.inputs) > 1 else ""
        shape = self.model.shapes.get(name, ())
        axes = weight_axes(node, len(shape))
        return name, shape, axes[0] if axes else 0

    def bias(self, node: Node) -> tuple[str, np.ndarray | None]:
        """(name, value) of a linear op's constant bias: its third input, or MatMul's following Add."""
        if node.op_type == "MatMul":
            add = self.sole_consumer(node.outputs[0])
            if add is not None and add.op_type == "Add":
                name = next((i for i in add.inputs if i in self.model.initializers), "")
                return name, self.model.initializers.get(name)
            return "", None
        name = node.inputs[2] if len(node.inputs) > 2 else ""
        return name, self.model.initializers.get(name)


def per_channel_scale(enc: Encoding, channels: int) -> np.ndarray:
    """Float64 scales of ``enc`` broadcast to ``channels`` output channels."""
    scale = np.asarray(enc.scale, dtype=np.float64).reshape(-1)
    return np.broadcast_to(scale, (channels,)) if scale.size == 1 else scale


def finding(
    rule: str,
    severity: str,
    message: str,
    *,
    node: str,
    tensor: str,
    fix: str = "",
    **numbers: float | int | str,
) -> Finding:
    """A ``Finding`` that names its node and tensor in ``numbers`` (``attach`` matches on them); numpy
    scalars become plain Python numbers so reports serialize them."""
    plain = {k: v.item() if isinstance(v, np.generic) else v for k, v in numbers.items()}
    return Finding(rule, severity, message, {"node": node, "tensor": tensor, **plain}, fix)


def worst_channels(values: np.ndarray, count: int = 8) -> str:
    """``"c3=1.21 c7=0.9"``: the ``count`` largest per-channel values, for a finding's numbers."""
    order = np.argsort(-values, kind="stable")[:count]
    return " ".join(f"c{int(c)}={float(values[c]):.3g}" for c in order)
