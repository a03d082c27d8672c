"""Cut points: where the graph splits into a DSP prefix (emulator) and a sim suffix.

Cut ``k`` means steps ``0..k`` of the emulator's plan ran on the DSP side. Cut ``-1`` (the "input"
cut) means only graph-input quantization came from the DSP side. The tensors live across a cut are
those produced on the DSP side and read by a sim node that is not part of the prefix, plus graph
outputs already produced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from qdiverge.loading.model import Model


@dataclass(frozen=True)
class Cut:
    """The boundary after ``step_index`` (``-1``: after input quantization)."""

    step_index: int
    live: tuple[str, ...]


def plan_cuts(
    model: Model, step_nodes: Sequence[Sequence[str]], step_outputs: Sequence[Sequence[str]]
) -> list[Cut]:
    """One cut after graph-input quantization and one after every step, with their live tensors.

    ``step_nodes[k]`` are the model node names executed by step ``k``; ``step_outputs[k]`` the tensors it
    produces. Computed in one pass from the end so the cost is linear in graph size.
    """
    node_index = {n.name: i for i, n in enumerate(model.nodes)}
    step_of_node: dict[int, int] = {}
    for k, names in enumerate(step_nodes):
        for name in names:
            step_of_node[node_index[name]] = k
    # last step index at which each tensor is read by a node (a model node's step)
    last_read: dict[str, int] = {}
    for node in model.nodes:
        k = step_of_node.get(node.index, len(step_nodes))
        for inp in node.inputs:
            if inp and not model.is_constant(inp):
                last_read[inp] = max(last_read.get(inp, -1), k)
    outputs = set(model.outputs)
    produced_at: dict[str, int] = {name: -1 for name in model.inputs}
    for k, outs in enumerate(step_outputs):
        for out in outs:
            produced_at[out] = k
    cuts = []
    for k in range(-1, len(step_nodes)):
        live = tuple(
            sorted(t for t, p in produced_at.items() if p <= k and (last_read.get(t, -1) > k or t in outputs))
        )
        cuts.append(Cut(k, live))
    return cuts
