"""Whether a target fuses one op into the op before it: the one place the profile's fusion rules are read."""

from __future__ import annotations

from qdiverge.loading.model import Model, Node
from qdiverge.profiles.schema import Profile


def is_strided_depthwise(node: Node, model: Model) -> bool:
    """A Conv with one group per input channel (depthwise) and a stride above 1."""
    if node.op_type != "Conv" or len(node.inputs) < 2 or node.inputs[1] not in model.initializers:
        return False
    weight = model.initializers[node.inputs[1]]
    group = int(node.attr("group", 1))
    depthwise = group > 1 and weight.ndim >= 2 and weight.shape[1] == 1
    return depthwise and any(int(s) > 1 for s in node.attr("strides", [1]))


def fuses(profile: Profile, producer: Node, consumer_op: str, model: Model) -> bool:
    """Whether ``profile`` runs ``consumer_op`` fused into ``producer`` (no requantization between them)."""
    if consumer_op in profile.unfused_after_strided_depthwise and is_strided_depthwise(producer, model):
        return False
    return any(
        chain[i] == producer.op_type and chain[i + 1] == consumer_op
        for chain in profile.fusions
        for i in range(len(chain) - 1)
    )
