"""The "emulate" engine: the model as the target executes it, on integer codes.

Bind once: group nodes into ``Step``s (one per target op, after the profile's fusions), decide the target
encoding of every tensor, prepare one kernel per step. Then ``run`` is one flat loop over the steps.

Target encodings: a tensor's activation encoding if the export has one; for data-movement ops the input's
encoding passes through; a tensor inside a target fusion is never materialised; any other float tensor the
export leaves without an encoding (a sim supergroup the target does not fuse, an op AIMET does not quantize)
gets one derived as a converter would (``encoding_from_range`` over the sim's un-quantized values, through
the ``calibrate`` callback), and its step is flagged. Ops without a kernel, or whose ``prepare`` raises
``Unsupported``, run in float on onnxruntime (dequantize -> op -> quantize) and are flagged; never silently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qdiverge.encodings.schema import Encoding, EncodingSet, encoding_from_range
from qdiverge.engines.base import make_session
from qdiverge.engines.emulator import registry
from qdiverge.engines.emulator.requant import quantize_float
from qdiverge.engines.qtensor import QTensor
from qdiverge.errors import InputError
from qdiverge.loading.model import Model, Node
from qdiverge.profiles.fusion import fuses
from qdiverge.profiles.schema import Profile
from qdiverge.quant import dequantize

# outputs share the input's encoding on the target (TFLite spec, AIMET "is_output_quantized False")
PASS_THROUGH = frozenset(
    {
        "Reshape",
        "Transpose",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Slice",
        "Split",
        "Gather",
        "Identity",
        "MaxPool",
        "GlobalMaxPool",
        "Pad",
        "Expand",
        "Tile",
        "DepthToSpace",
        "SpaceToDepth",
        "Dropout",
        "ReduceMax",
        "ReduceMin",
        "Resize",
        "Upsample",
        "TopK",
    }
)
FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
)

Calibrate = Callable[[Iterable[str]], Mapping[str, tuple[float, float]]]


@dataclass
class Step:
    """One target op: ``nodes[0]`` plus the activations fused into it (``fused``)."""

    name: str
    nodes: tuple[Node, ...]
    inputs: tuple[str, ...]  # external non-constant inputs, in first-use order
    outputs: tuple[str, ...]
    output_encodings: tuple[Encoding | None, ...]
    fused: list[str] = field(default_factory=list)
    float_fallback: bool = False
    fallback_reason: str = ""
    derived_encodings: list[str] = field(default_factory=list)
    kernel: Any = None
    params: Any = None
    args: tuple[Any, ...] = ()  # per main-node input: a tensor name to read, or a prepared constant value

    @property
    def flags(self) -> tuple[str, ...]:
        out = [f"fused:{n}" for n in self.fused]
        out += [f"derived-encoding:{t}" for t in self.derived_encodings]
        if self.float_fallback:
            out.append(f"float-fallback:{self.fallback_reason}")
        return tuple(out)


@dataclass(frozen=True)
class _Arg:
    """A kernel argument read from the value table at run time."""

    name: str


def _wide(t: QTensor) -> np.ndarray:
    """The codes as int64 (what kernels compute with), other tensors as they are."""
    return t.codes if t.encoding is None else t.codes.astype(np.int64, copy=False)


def _widened(t: QTensor) -> QTensor:
    return t if t.encoding is None or t.codes.dtype == np.int64 else QTensor(_wide(t), t.encoding)


def _elem_types(model: Model) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model.proto)
    except Exception:  # best effort: unknown types are treated as float
        inferred = model.proto
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input, *graph.output)}
    types.update({t.name: t.data_type for t in graph.initializer})
    return {k: v for k, v in types.items() if v}


class Emulator:
    """Fixed-point emulation of ``model`` with ``encodings`` under ``profile`` (engine name ``emulate``)."""

    name = "emulate"

    def __init__(
        self,
        model: Model,
        encodings: EncodingSet,
        profile: Profile,
        supergroup_internal: Mapping[str, tuple[str, ...]] | None = None,
        calibrate: Calibrate | Mapping[str, tuple[float, float]] | None = None,
    ):
        self.model = model
        self.encodings = encodings
        self.profile = profile
        self._supergroup = dict(supergroup_internal or {})
        self._types = _elem_types(model)
        self._sessions: dict[str, Any] = {}
        self.steps: list[Step] = self._plan()
        self.target_encodings: dict[str, Encoding | None] = self._resolve_encodings(calibrate)
        for step in self.steps:
            step.output_encodings = tuple(self.target_encodings.get(o) for o in step.outputs)
            self._bind(step)
        self._last_use = self._last_uses()

    # ---- planning -------------------------------------------------------------------------------
    def _is_float(self, name: str) -> bool:
        return self._types.get(name, onnx.TensorProto.FLOAT) in FLOAT_TYPES

    def _fusion_chain(self, node: Node) -> list[Node]:
        best = [node]
        for pattern in self.profile.fusions:
            if pattern[0] != node.op_type or len(pattern) <= len(best):
                continue
            chain = [node]
            for op in pattern[1:]:
                outs = [o for o in chain[-1].outputs if o]
                users = self.model.consumers.get(outs[0], []) if len(outs) == 1 else []
                if (
                    len(users) != 1
                    or users[0].op_type != op
                    or outs[0] in self.model.outputs
                    or not fuses(self.profile, chain[-1], op, self.model)
                ):
                    break
                chain.append(users[0])
            else:
                best = chain
        return best

    def _plan(self) -> list[Step]:
        steps, taken = [], set()
        for node in self.model.nodes:
            if node.index in taken:
                continue
            chain = self._fusion_chain(node)
            taken.update(n.index for n in chain)
            internal = {o for n in chain[:-1] for o in n.outputs}
            inputs = [
                i
                for n in chain
                for i in n.inputs
                if i and i not in internal and not self.model.is_constant(i)
            ]
            steps.append(
                Step(
                    name=node.name,
                    nodes=tuple(chain),
                    inputs=tuple(dict.fromkeys(inputs)),
                    outputs=tuple(o for o in chain[-1].outputs if o),
                    output_encodings=(),
                    fused=[n.name for n in chain[1:]],
                )
            )
        return steps

    def _resolve_encodings(self, calibrate: Calibrate | Mapping[str, tuple[float, float]] | None) -> dict:
        acts, model = self.encodings.activations, self.model
        target: dict[str, Encoding | None] = {}
        alias: dict[str, str] = {}
        derive: dict[str, tuple[Step | None, int]] = {}
        for name in model.inputs:
            if name in acts or not self._is_float(name):
                target[name] = acts.get(name)
            else:
                derive[name] = (None, 8)
        for step in self.steps:
            main = step.nodes[0]
            first = next((target.get(i) for i in main.inputs if target.get(i) is not None), None)
            for out in step.outputs:
                if out in acts or not self._is_float(out):
                    target[out] = acts.get(out)
                elif (
                    len(step.nodes) == 1
                    and main.op_type in PASS_THROUGH
                    and main.inputs[0] in (*target, *alias, *derive)
                ):
                    alias[out] = main.inputs[0]
                else:
                    derive[out] = (step, first.bitwidth if first is not None else 8)
        if derive:
            if calibrate is None:
                raise InputError(
                    f"the target needs encodings the export lacks for {sorted(derive)[:5]};"
                    " no calibration data given"
                )
            ranges = calibrate if isinstance(calibrate, Mapping) else calibrate(list(derive))
            for name, (step, bits) in derive.items():
                if name not in ranges:
                    raise InputError(f"calibration gave no range for tensor {name!r}")
                lo, hi = ranges[name]
                target[name] = encoding_from_range(name, lo, hi, bits)
                if step is not None:
                    why = "+".join(self._supergroup.get(name, ()))
                    step.derived_encodings.append(f"{name} (sim supergroup {why})" if why else name)
        for name, source in alias.items():
            while source in alias:
                source = alias[source]
            target[name] = target.get(source)
        return target

    # ---- binding --------------------------------------------------------------------------------
    def _constant(self, name: str) -> Any:
        """A constant input as kernels receive it: codes if it has an encoding, else the raw array."""
        value = self.model.initializers[name]
        enc = self.encodings.get(name)
        if enc is None or enc.is_float or not np.issubdtype(value.dtype, np.floating):
            return value
        return quantize_float(value, enc, self.profile.weight_rounding)

    def _bind(self, step: Step) -> None:
        main, model = step.nodes[0], self.model
        names = main.inputs
        consts = [model.initializers.get(n) if n else None for n in names]
        binding = registry.Binding(
            node=main,
            input_encodings=[
                None if not n or model.is_constant(n) else self.target_encodings.get(n) for n in names
            ],
            output_encodings=step.output_encodings,
            constants=consts,
            param_encodings=[
                self.encodings.params.get(n) if n and model.is_constant(n) else None for n in names
            ],
            input_shapes=[model.shapes.get(n) if n else None for n in names],
            profile=self.profile,
            fused=step.nodes[1:],
            fused_constants=[[model.initializers.get(i) for i in n.inputs] for n in step.nodes[1:]],
        )
        kernel = registry.lookup(main.op_type)
        if kernel is None:
            return self._fall_back(step, f"no kernel for {main.op_type}")
        if step.fused and not getattr(kernel, "fuses", False):
            return self._fall_back(step, f"{main.op_type} kernel cannot fuse {'+'.join(step.fused)}")
        try:
            step.params = kernel.prepare(binding)
        except registry.Unsupported as exc:
            return self._fall_back(step, str(exc))
        step.kernel = kernel
        # a kernel that took its constants (weights) from the binding gets None for them: no int64 copy
        reads_constants = getattr(kernel, "reads_constants", True)
        step.args = tuple(
            None
            if not n or (model.is_constant(n) and not reads_constants)
            else self._constant(n)
            if model.is_constant(n)
            else _Arg(n)
            for n in names
        )

    def _fall_back(self, step: Step, reason: str) -> None:
        step.float_fallback, step.fallback_reason = True, reason

    def _last_uses(self) -> dict[str, int]:
        last: dict[str, int] = {}
        for k, step in enumerate(self.steps):
            for name in step.inputs:
                last[name] = k
        return last

    # ---- running --------------------------------------------------------------------------------
    def quantize_input(self, name: str, value: np.ndarray) -> QTensor:
        enc = self.target_encodings.get(name)
        if enc is None or enc.is_float:
            return QTensor(np.asarray(value), None)
        prof = self.profile
        return QTensor(
            quantize_float(value, enc, prof.input_rounding, prof.input_reciprocal, prof.input_fp16), enc
        )

    def run(self, feeds: Mapping[str, np.ndarray], keep: str = "outputs") -> dict[str, QTensor]:
        """Run every step on float ``feeds``; return the graph outputs (``keep="all"``: every tensor)."""
        missing = [n for n in self.model.inputs if n not in feeds]
        if missing:
            raise InputError(f"missing model inputs {missing}")
        values = {n: self.quantize_input(n, feeds[n]) for n in self.model.inputs}
        wanted = set(self.model.outputs)
        for k, step in enumerate(self.steps):
            values.update(self._execute(step, values))
            if keep != "all":
                for name in step.inputs:
                    if self._last_use.get(name) == k and name not in wanted:
                        values.pop(name, None)
        kept = values if keep == "all" else {n: values[n] for n in self.model.outputs}
        return {n: _widened(t) for n, t in kept.items()}

    def run_step(self, step: Step, inputs: Mapping[str, QTensor]) -> dict[str, QTensor]:
        """Run one step on given input tensors (codes on the target encodings); used for isolated runs."""
        return {n: _widened(t) for n, t in self._execute(step, inputs).items()}

    def _execute(self, step: Step, inputs: Mapping[str, QTensor]) -> dict[str, QTensor]:
        """One step. Encoded outputs keep the integer dtype their kernel returned and only kernels with
        ``narrow_inputs`` read them so; the others get int64. Between two onnxruntime-backed kernels a
        tensor then stays uint8/int8 instead of a round trip through int64 (a third of the run time)."""
        if step.float_fallback:
            outs = self._run_float(step, inputs)
        else:
            narrow = getattr(step.kernel, "narrow_inputs", False)
            args = [
                a if not isinstance(a, _Arg) else inputs[a.name].codes if narrow else _wide(inputs[a.name])
                for a in step.args
            ]
            result = step.kernel.run(step.params, *args)
            outs = result if isinstance(result, tuple) else (result,)
        return {
            name: QTensor(arr if enc is None or arr.dtype.kind in "iu" else np.asarray(arr, np.int64), enc)
            for name, arr, enc in zip(step.outputs, outs, step.output_encodings, strict=True)
        }

    def _run_float(self, step: Step, inputs: Mapping[str, QTensor]) -> tuple[np.ndarray, ...]:
        session = self._sessions.get(step.name)
        if session is None:
            session = self._sessions[step.name] = make_session(self._single_step_model(step))
        feeds = {n: inputs[n].dequantize() for n in step.inputs}
        results = session.run(list(step.outputs), feeds)
        prof = self.profile
        return tuple(
            r
            if enc is None or enc.is_float
            else quantize_float(r, enc, prof.input_rounding, prof.input_reciprocal, prof.input_fp16)
            for r, enc in zip(results, step.output_encodings, strict=True)
        )

    def _single_step_model(self, step: Step) -> onnx.ModelProto:
        """The step's nodes alone, constants fake-quantized with their param encodings."""
        model, used = self.model, {i for n in step.nodes for i in n.inputs if i}
        inits = []
        for name in sorted(used & set(model.initializers)):
            value, enc = model.initializers[name], self.encodings.get(name)
            if enc is not None and not enc.is_float and np.issubdtype(value.dtype, np.floating):
                value = dequantize(quantize_float(value, enc, self.profile.weight_rounding), enc).astype(
                    value.dtype
                )
            inits.append(numpy_helper.from_array(np.asarray(value), name))
        inputs = [
            helper.make_tensor_value_info(
                n,
                self._types.get(n, onnx.TensorProto.FLOAT)
                if not self.target_encodings.get(n)
                else onnx.TensorProto.FLOAT,
                None,
            )
            for n in step.inputs
        ]
        nodes = [
            nproto
            for nproto in model.proto.graph.node
            if tuple(nproto.output) in {tuple(n.outputs) for n in step.nodes}
        ]
        graph = helper.make_graph(
            nodes, step.name, inputs, [onnx.ValueInfoProto(name=o) for o in step.outputs], inits
        )
        out = helper.make_model(graph, opset_imports=list(model.proto.opset_import))
        out.ir_version = model.proto.ir_version
        return out

    def fallback_report(self) -> list[dict[str, Any]]:
        """Steps that did not run as plain integer kernels: float fallbacks and derived encodings."""
        return [
            {
                "step": s.name,
                "ops": "+".join(n.op_type for n in s.nodes),
                "float_fallback": s.fallback_reason,
                "derived_encodings": list(s.derived_encodings),
            }
            for s in self.steps
            if s.float_fallback or s.derived_encodings
        ]

    def describe(self) -> Sequence[str]:
        return [
            f"{s.name}: {'+'.join(n.op_type for n in s.nodes)} {' '.join(s.flags)}".rstrip()
            for s in self.steps
        ]
