"""The "emulate" engine: the model as the target executes it, on integer codes.

Bind once: group nodes into ``Step``s (one per target op, after the profile's fusions), decide the target
encoding of every tensor, prepare one kernel per step. Then ``run`` is one flat loop over the steps.

Target encodings: a tensor's activation encoding if the export has one; for data-movement ops the input's
encoding passes through; a tensor inside a target fusion is never materialised; any other float tensor the
export leaves without an encoding (a sim supergroup the target does not fuse, an op AIMET does not quantize)
gets one derived as a converter would (``encoding_from_range`` over the sim's un-quantized values, through
the ``calibrate`` callback), and its step is flagged. Ops without a kernel, or whose ``prepare`` raises
``Unsupported``, run in float on onnxruntime (dequantize -> op -> quantize) and are flagged; never silently.

Constants are what the converter makes of them: static nodes (shape arithmetic, a Reshape of a constant)
are folded at bind time (``static``) and their steps only emit the folded values; a float constant an
``Add``/``Sub``/``Mul``/``Div`` reads without an encoding is quantized with one derived from its value range
(8-bit ``encoding_from_range``, as the converter quantizes static tensors) and the step is flagged; steps
with only integer outputs computed from integers (a Shape of a tensor of unknown shape) run exactly on
onnxruntime, unflagged: they are shape computations, not arithmetic the target approximates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from qdiverge.encodings.schema import Encoding, EncodingSet, encoding_from_range
from qdiverge.engines.base import make_session, release_free_memory
from qdiverge.engines.emulator import compiled, registry
from qdiverge.engines.emulator.requant import quantize_float
from qdiverge.engines.emulator.row_blocks import in_row_blocks
from qdiverge.engines.emulator.static import SHAPE_OPS, Constants, static_encoding, subgraph_model
from qdiverge.engines.qtensor import QTensor
from qdiverge.errors import InputError
from qdiverge.loading.model import Model, Node, weightless
from qdiverge.profiles.fusion import fuses
from qdiverge.profiles.schema import Profile

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
# ops whose float constant inputs the converter quantizes itself when the export gives them no encoding
DERIVES_CONSTANTS = frozenset({"Add", "Sub", "Mul", "Div"})
STATIC, SHAPE = "static", "shape"  # Step.note: folded at bind time | integer shape computation run exactly
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
    note: str = ""  # STATIC or SHAPE: exact, never a float fallback
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
        inferred = onnx.shape_inference.infer_shapes(weightless(model.proto))
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
        self.constants = Constants(model, encodings, profile.weight_rounding, self._types)
        self.steps: list[Step] = self._plan(self.constants.folded_nodes)
        self.target_encodings: dict[str, Encoding | None] = self._resolve_encodings(calibrate)
        self.constants.target = self.target_encodings
        for step in self.steps:
            step.output_encodings = tuple(self.target_encodings.get(o) for o in step.outputs)
            self._bind(step)
        self._last_use = self._last_uses()
        self._warm = False
        release_free_memory()  # binding freed the temporaries of weight quantization and shape inference

    # ---- planning -------------------------------------------------------------------------------
    def _is_float(self, name: str) -> bool:
        return self._types.get(name, onnx.TensorProto.FLOAT) in FLOAT_TYPES

    def _is_const(self, name: str) -> bool:
        return name in self.constants.values

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
                    or not fuses(self.profile, chain[-1], users[0], self.model)
                ):
                    break
                chain.append(users[0])
            else:
                best = chain
        return best

    def _plan(self, folded: frozenset[int]) -> list[Step]:
        steps, taken = [], set()
        for node in self.model.nodes:
            if node.index in taken:
                continue
            chain = [node] if node.index in folded else self._fusion_chain(node)
            taken.update(n.index for n in chain)
            internal = {o for n in chain[:-1] for o in n.outputs}
            inputs = [i for n in chain for i in n.inputs if i and i not in internal and not self._is_const(i)]
            steps.append(
                Step(
                    name=node.name,
                    nodes=tuple(chain),
                    inputs=tuple(dict.fromkeys(inputs)),
                    outputs=tuple(o for o in chain[-1].outputs if o),
                    output_encodings=(),
                    fused=[n.name for n in chain[1:]],
                    note=STATIC if node.index in folded else "",
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
                source = main.inputs[0] if main.inputs else ""
                if out in acts or not self._is_float(out):
                    target[out] = acts.get(out)
                elif (
                    len(step.nodes) == 1
                    and main.op_type in PASS_THROUGH
                    and (source in (*target, *alias, *derive) or self.constants.encoding(source) is not None)
                ):
                    alias[out] = source
                elif step.note == STATIC:  # a static tensor: the converter quantizes it over its values
                    target[out] = static_encoding(out, self.constants.values[out])
                    step.derived_encodings.append(out)
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
            target[name] = target[source] if source in target else self.constants.encoding(source)
        return target

    # ---- binding --------------------------------------------------------------------------------
    def _integer_only(self, step: Step) -> bool:
        """Integer outputs computed from integers or from a shape alone: a shape computation."""
        main = step.nodes[0]
        ints_in = main.op_type in SHAPE_OPS or not any(self._is_float(i) for i in main.inputs if i)
        return len(step.nodes) == 1 and ints_in and not any(self._is_float(o) for o in step.outputs)

    def _bind(self, step: Step) -> None:
        main = step.nodes[0]
        if step.note == STATIC:  # emits its folded values, on the output encodings
            step.params = tuple(self.constants.codes(o) for o in step.outputs)
            return
        if self._integer_only(step):
            step.note = SHAPE
            return
        names = main.inputs
        if main.op_type in DERIVES_CONSTANTS:
            step.derived_encodings += self.constants.derive(names)
        consts = self.constants
        binding = registry.Binding(
            node=main,
            input_encodings=[
                None if not n or self._is_const(n) else self.target_encodings.get(n) for n in names
            ],
            output_encodings=step.output_encodings,
            constants=[consts.values.get(n) if n else None for n in names],
            param_encodings=[consts.encoding(n) if n else None for n in names],
            input_shapes=[consts.shapes.get(n) if n else None for n in names],
            profile=self.profile,
            fused=step.nodes[1:],
            fused_constants=[[consts.values.get(i) for i in n.inputs] for n in step.nodes[1:]],
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
            if not n or (self._is_const(n) and not reads_constants)
            else consts.codes(n)
            if self._is_const(n)
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
        x = np.asarray(value, dtype=np.float32)

        dtype = enc.storage_dtype  # the codes are only passed on: kernels widen what they compute with

        def quantize(v: np.ndarray) -> np.ndarray:
            return quantize_float(v, enc, prof.input_rounding, prof.input_reciprocal, prof.input_fp16, dtype)

        if enc.per_channel or compiled.enabled():  # per-axis scales; or the compiled form is parallel itself
            return QTensor(quantize(x), enc)
        return QTensor(in_row_blocks(quantize, x.shape, np.dtype(dtype), x), enc)

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
        if not self._warm:  # the first run built the sessions: what that freed goes back to the system
            self._warm = True
            release_free_memory()
        return {n: _widened(t) for n, t in kept.items()}

    def run_step(self, step: Step, inputs: Mapping[str, QTensor]) -> dict[str, QTensor]:
        """Run one step on given input tensors (codes on the target encodings); used for isolated runs."""
        return {n: _widened(t) for n, t in self._execute(step, inputs).items()}

    def _execute(self, step: Step, inputs: Mapping[str, QTensor]) -> dict[str, QTensor]:
        """One step. Encoded outputs keep the integer dtype their kernel returned and only kernels with
        ``narrow_inputs`` read them so; the others get int64. Between two onnxruntime-backed kernels a
        tensor then stays uint8/int8 instead of a round trip through int64 (a third of the run time)."""
        if step.note == STATIC:
            outs = step.params
        elif step.float_fallback or step.note == SHAPE:
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
        """The step's nodes alone, constants as the target holds them (``_held``)."""
        used = {i for n in step.nodes for i in n.inputs if self._is_const(i)}
        inputs = {
            n: onnx.TensorProto.FLOAT
            if self.target_encodings.get(n)
            else self._types.get(n, onnx.TensorProto.FLOAT)
            for n in step.inputs
        }
        held = {n: self.constants.held(n) for n in used}
        return subgraph_model(self.model, step.nodes, inputs, step.outputs, held)

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
