"""The real HTP as the DSP side of ``run`` and ``bisect`` (``--target qnn-htp``).

The model's QDQ form (integer weights, int32 biases) runs on onnxruntime-qnn's HTP backend. Every tensor
the emulator's plan materialises is observed through the integer codes of its ``QuantizeLinear``, so
steps, cuts and tensor names line up with the emulator's. Tensors the export leaves without an encoding
get the emulator's target encoding (or a calibrated one inside a fused step): the EP only keeps a node
on HTP when its output is quantized, and HTP ignores that encoding where it fuses the op anyway.

Exposing an intermediate as a graph output can undo a fusion. The first ``run`` therefore compares the
graph outputs with and without the exposed tensors and, if they differ, narrows the exposed set until
they agree; the tensors dropped are listed in ``hidden`` and warned about.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx

from qdiverge.encodings.qdq_writer import write_qdq_model
from qdiverge.encodings.schema import Encoding, EncodingSet, encoding_from_range
from qdiverge.engines.base import extract_suffix
from qdiverge.engines.qnn_htp import QnnHtpEngine, QuantTap, check_capture_neutral, make_htp_session
from qdiverge.engines.qtensor import QTensor
from qdiverge.errors import InputError
from qdiverge.loading.model import Model

log = logging.getLogger("qdiverge")

Calibrate = Callable[[Iterable[str]], Mapping[str, tuple[float, float]]]
# session builds the neutrality search may spend before it gives up on intermediates
CHECK_BUDGET = 8


def _float_outputs(model: Model) -> set[str]:
    """Node outputs whose element type is floating point (unknown types count as float)."""
    try:
        graph = onnx.shape_inference.infer_shapes(model.proto).graph
    except Exception:  # best effort, as the emulator does
        graph = model.proto.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.output)}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, 0}
    return {o for n in model.nodes for o in n.outputs if o and types.get(o, 0) in floats}


def htp_encodings(
    model: Model, encodings: EncodingSet, target: Mapping[str, Encoding | None], calibrate: Calibrate | None
) -> EncodingSet:
    """``encodings`` plus a ``derived`` entry for every float node output the export leaves unquantized.

    The emulator's target encoding when it has one; otherwise (a tensor inside a fused step) one from
    the calibrated range, as a converter would derive it.
    """
    missing = sorted(t for t in _float_outputs(model) if t not in encodings.activations)
    derived = {t: target[t] for t in missing if target.get(t) is not None}
    rest = [t for t in missing if t not in derived]
    if rest:
        if calibrate is None:
            raise InputError(f"HTP needs encodings for {rest[:5]}; no calibration data given")
        ranges = calibrate(rest)
        derived.update({t: encoding_from_range(t, *ranges[t], 8) for t in rest if t in ranges})
    return dataclasses.replace(encodings, derived={**encodings.derived, **derived})


class HtpTarget:
    """Bisector DSP side backed by Qualcomm's HTP backend; steps are the emulator's (``plan``)."""

    name = "qnn-htp"

    def __init__(
        self,
        model: Model,
        encodings: EncodingSet,
        htp_arch: int = 73,
        *,
        plan,
        calibrate: Calibrate | None = None,
    ):
        self.model = model
        self.htp_arch = htp_arch
        self.steps = list(plan.steps)
        encset = htp_encodings(model, encodings, plan.target_encodings, calibrate)
        # the QDQ model quantizes every planned tensor with exactly these encodings
        self.target_encodings: dict[str, Encoding | None] = dict(plan.target_encodings)
        self.proto = write_qdq_model(model, encset, int_weights=True, int32_bias=True)
        self.engine = QnnHtpEngine(self.proto, htp_arch)
        self.taps = self._taps()
        wanted = [*model.inputs, *(o for s in self.steps for o in s.outputs), *model.outputs]
        self.candidates = tuple(dict.fromkeys(t for t in wanted if t in self.taps))
        self.exposed: tuple[str, ...] | None = None  # decided on the first run
        self.hidden: list[str] = []
        self._step_sessions: dict[str, object] = {}

    def _taps(self) -> dict[str, QuantTap]:
        """Tensor name -> its QuantizeLinear; a model output is found under its public name."""
        dq_out = {n.input[0]: n.output[0] for n in self.proto.graph.node if n.op_type == "DequantizeLinear"}
        outputs = set(self.model.outputs)
        taps: dict[str, QuantTap] = {}
        for key, tap in self.engine.taps.items():
            if key != tap.tensor:
                continue  # the codes-name alias
            public = dq_out.get(tap.codes)
            name = public if public in outputs else tap.tensor
            if self.target_encodings.get(name) is not None:
                taps[name] = tap
        return taps

    # ---- exposure ---------------------------------------------------------------------------------
    def available(self, tensor: str) -> bool:
        """Whether HTP provides ``tensor`` (false before the first run for anything but I/O)."""
        if tensor in self.model.outputs:
            return True
        return self.exposed is not None and tensor in self.exposed

    def _neutral(self, feeds: Mapping[str, np.ndarray], names: Sequence[str], budget: list[int]) -> bool:
        budget[0] -= 1
        return bool(check_capture_neutral(self.engine, feeds, [self.taps[t].codes for t in names]))

    def _narrow(self, feeds, names: Sequence[str], budget: list[int]) -> list[str]:
        """A subset of ``names`` whose exposure leaves the outputs unchanged (halving, within budget)."""
        if not names or budget[0] <= 0:
            return []
        if self._neutral(feeds, names, budget):
            return list(names)
        if len(names) == 1:
            return []
        mid = len(names) // 2
        return self._narrow(feeds, names[:mid], budget) + self._narrow(feeds, names[mid:], budget)

    def _decide_exposure(self, feeds: Mapping[str, np.ndarray]) -> None:
        budget = [CHECK_BUDGET]
        names = list(self.candidates)
        if not self._neutral(feeds, names, budget):
            kept = self._narrow(feeds, names, budget)
            if kept and not self._neutral(feeds, kept, [1]):
                kept = []
            self.hidden = [t for t in names if t not in kept]
            names = kept
            log.warning(
                f"qnn-htp: exposing {len(self.hidden)} intermediate tensor(s) changed the HTP outputs"
                f" (first: {self.hidden[0]}); they are left out (no layer values, no cut there)"
            )
        self.exposed = tuple(names)

    # ---- running ----------------------------------------------------------------------------------
    def _qtensor(self, name: str, codes: np.ndarray) -> QTensor:
        return QTensor(np.asarray(codes, dtype=np.int64), self.target_encodings.get(name))

    def run(self, feeds: Mapping[str, np.ndarray], keep: str = "outputs") -> dict[str, QTensor]:
        """Run the QDQ model on HTP; model outputs (``keep="all"``: every exposed tensor) as codes."""
        missing = [n for n in self.model.inputs if n not in feeds]
        if missing:
            raise InputError(f"missing model inputs {missing}")
        if self.exposed is None:
            self._decide_exposure(feeds)
        names = list(self.exposed or ()) if keep == "all" else []
        names += [o for o in self.model.outputs if o in self.taps and o not in names]
        result = self.engine.run_quantized(feeds, [self.taps[t].codes for t in names])
        values = {t: self._qtensor(t, result.codes[self.taps[t].codes]) for t in names}
        for o in self.model.outputs:
            if o not in values:  # an output without a quantizer comes back as floats
                values[o] = QTensor(result.outputs[o], None)
        return values if keep == "all" else {o: values[o] for o in self.model.outputs}

    def _step_session(self, step):
        if step.name not in self._step_sessions:
            taps = [self.taps.get(t) for t in (*step.inputs, *step.outputs)]
            if any(t is None for t in taps):
                self._step_sessions[step.name] = None
            else:
                ins, outs = taps[: len(step.inputs)], taps[len(step.inputs) :]
                sub = extract_suffix(
                    self.proto,
                    [t.codes for t in ins],
                    [t.codes for t in outs],
                    {t.codes: t.zero_point.dtype for t in ins},
                )
                name_of = {self.taps[t].codes: t for t in step.inputs}
                for graph_input in sub.graph.input:  # HTP needs static shapes
                    for dim in self.model.shapes.get(name_of[graph_input.name]) or ():
                        graph_input.type.tensor_type.shape.dim.add().dim_value = dim
                self._step_sessions[step.name] = make_htp_session(sub, self.htp_arch)
        return self._step_sessions[step.name]

    def run_step(self, step, inputs: Mapping[str, QTensor]) -> dict[str, QTensor]:
        """One step alone on HTP, fed integer codes; ``{}`` when a tensor of the step has no quantizer."""
        session = self._step_session(step)
        if session is None:
            return {}
        feeds = {
            self.taps[t].codes: np.asarray(inputs[t].codes).astype(self.taps[t].zero_point.dtype)
            for t in step.inputs
        }
        got = session.run([self.taps[t].codes for t in step.outputs], feeds)
        return {t: self._qtensor(t, codes) for t, codes in zip(step.outputs, got, strict=True)}
