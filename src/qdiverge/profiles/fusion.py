"""Whether a target fuses one op into the op before it: the one place the profile's fusion rules are read."""

from __future__ import annotations

import numpy as np

from qdiverge.loading.model import Model, Node
from qdiverge.profiles.schema import Profile


def is_depthwise(node: Node, model: Model) -> bool:
    """A Conv with one input channel per group (depthwise, any depth multiplier)."""
    if node.op_type != "Conv" or len(node.inputs) < 2 or node.inputs[1] not in model.initializers:
        return False
    shape = model.initializers.shape(node.inputs[1])
    return int(node.attr("group", 1)) > 1 and len(shape) >= 2 and shape[1] == 1


def is_strided_depthwise(node: Node, model: Model) -> bool:
    """A depthwise Conv with a stride above 1."""
    return is_depthwise(node, model) and any(int(s) > 1 for s in node.attr("strides", [1]))


def bias_of_add(producer: Node, add: Node, model: Model) -> np.ndarray | None:
    """The constant ``add`` puts on a MatMul / bias-less Gemm output as a per-output-column bias, else None.

    A converter folds ``MatMul(x, W) + b`` into one FullyConnected with an int32 bias at ``s_in * s_w``
    (AIMET's MatmulAdd pass makes ``b`` a disabled bias param for the same reason) when ``W`` is a 2-D
    constant and ``b`` a constant that broadcasts over the last (output column) axis only.
    """
    if producer.op_type not in ("MatMul", "Gemm") or add.op_type != "Add" or len(producer.inputs) < 2:
        return None
    if producer.op_type == "Gemm" and (len(producer.inputs) > 2 and producer.inputs[2]):
        return None  # Gemm already has a bias
    weight = producer.inputs[1]
    others = [i for i in add.inputs if i != producer.outputs[0]]
    if weight not in model.initializers or len(others) != 1 or others[0] not in model.initializers:
        return None
    shape = model.initializers.shape(weight)
    if len(shape) != 2:
        return None
    columns = shape[0] if producer.op_type == "Gemm" and producer.attr("transB", 0) else shape[1]
    bias = model.initializers[others[0]]
    out_shape = model.shapes.get(producer.outputs[0])
    rank_ok = bias.ndim <= 1 or (out_shape is not None and bias.ndim <= len(out_shape))
    if (
        not rank_ok
        or bias.size == 0
        or any(d != 1 for d in bias.shape[:-1])
        or bias.shape[-1] not in (1, columns)
    ):
        return None
    return bias


def _pair(profile: Profile, producer: Node, consumer: Node, model: Model) -> bool:
    """The conditions on one fused pair beyond op types."""
    op = consumer.op_type
    if op in profile.unfused_after_strided_depthwise and is_strided_depthwise(producer, model):
        return False
    return op != "Add" or bias_of_add(producer, consumer, model) is not None  # only a constant bias joins


def _behind(profile: Profile, pattern: tuple[str, ...], k: int, node: Node, model: Model) -> bool:
    """Whether ``node`` is ``pattern[k]`` at the end of a fused ``pattern[:k + 1]`` (checked backwards)."""
    if node.op_type != pattern[k]:
        return False
    if k == 0:
        return True
    prev = next((model.producer[i] for i in node.inputs if i in model.producer), None)
    single = prev is not None and len(model.consumers.get(prev.outputs[0], [])) == 1
    return (
        single
        and prev.outputs[0] not in model.outputs
        and _pair(profile, prev, node, model)
        and _behind(profile, pattern, k - 1, prev, model)
    )


def fuses(profile: Profile, producer: Node, consumer: Node, model: Model) -> bool:
    """Whether ``profile`` runs ``consumer`` fused into ``producer`` (no requantization between them): some
    fusion pattern has the pair, with ``producer`` fused into the pattern's earlier ops (an Add + Relu
    fuses after a MatMul in [MatMul, Add, Relu], not on its own)."""
    return _pair(profile, producer, consumer, model) and any(
        chain[i + 1] == consumer.op_type and _behind(profile, chain, i, producer, model)
        for chain in profile.fusions
        for i in range(len(chain) - 1)
    )
