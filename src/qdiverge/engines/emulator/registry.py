"""Explicit kernel registry for the integer emulator.

Every op has one kernel class, registered with ``@kernel("OpType")`` so ``grep '@kernel("Conv")'``
finds it. A kernel has two pure static methods:

* ``prepare(b: Binding) -> params``: runs once per node when the graph is bound. It is the only
  place where float scales become fixed-point multipliers (via ``fixed_point`` helpers), and it may
  raise ``Unsupported`` for attribute combinations it cannot do exactly (the runner then falls back
  to float, visibly).
* ``run(params, *inputs: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]``: integer codes in
  (storage domain, int64 arrays; non-encoded inputs such as int64 indices arrive as-is), integer
  codes out. No ONNX protos, no I/O, no globals. A kernel with ``reads_constants = False`` receives
  ``None`` for its constant inputs (it prepared them from ``Binding.constants``); one with
  ``narrow_inputs = True`` receives codes in whatever integer dtype their producer returned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from qdiverge.encodings.schema import Encoding
from qdiverge.loading.model import Node


class Unsupported(Exception):
    """A kernel cannot compute this node exactly; the runner falls back to float and flags it."""


@dataclass(frozen=True)
class Binding:
    """Everything ``prepare`` may look at for one node.

    ``input_encodings[i]`` is the target-side encoding of input ``i`` (``None`` for non-quantized
    tensors such as shapes or indices); ``constants[i]`` is the float value of input ``i`` when it is
    an initializer (weights, bias, shape tensors), else ``None``. ``param_encodings[i]`` is the
    param encoding of a constant input (weights), else ``None``. ``input_shapes`` are concrete.
    """

    node: Node
    input_encodings: Sequence[Encoding | None]
    output_encodings: Sequence[Encoding | None]
    constants: Sequence[np.ndarray | None]
    param_encodings: Sequence[Encoding | None]
    input_shapes: Sequence[tuple[int, ...] | None]
    profile: Any  # qdiverge.profiles.schema.Profile (kept loose here to avoid an import cycle)
    fused: Sequence[Node] = field(default_factory=tuple)  # activation nodes fused into this one
    fused_constants: Sequence[Sequence[np.ndarray | None]] = field(default_factory=tuple)  # per fused node

    def known_shape(self, i: int) -> tuple[int, ...]:
        """The shape of input ``i``; ``Unsupported`` when shape inference left it unknown."""
        shape = self.input_shapes[i]
        if shape is None:
            raise Unsupported(f"{self.node.op_type}: input shape unknown")
        return shape


class Kernel(Protocol):
    prepare: Callable[[Binding], Any]
    run: Callable[..., np.ndarray | tuple[np.ndarray, ...]]


KERNELS: dict[str, type] = {}


def kernel(*op_types: str) -> Callable[[type], type]:
    """Register a kernel class for ``op_types``."""

    def register(cls: type) -> type:
        for op in op_types:
            if op in KERNELS:
                raise RuntimeError(
                    f"kernel for {op} registered twice ({KERNELS[op].__name__}, {cls.__name__})"
                )
            KERNELS[op] = cls
        return cls

    return register


def lookup(op_type: str) -> type | None:
    """The kernel class for ``op_type``, or ``None`` (caller falls back to float and flags it)."""
    from qdiverge.engines.emulator import kernels  # noqa: F401  (imports register every kernel)

    return KERNELS.get(op_type)
