"""The "sim" engine: AIMET QuantSim reproduced as a plain ONNX graph run by onnxruntime.

Weights are fake-quantized once, offline, with ``quant.aimet_qdq``. After every tensor with an
activation encoding the graph gets AIMET's quantize-dequantize written in ONNX ops. ONNX ``Round``
rounds half to even, AIMET rounds half away from zero, so the rounding is ``floor(v + 0.5)`` in float64.
Float ops run on onnxruntime's CPU kernels, the kernels AIMET's own session uses, and like AIMET's
session they run unfused: in aimet-onnx a QcQuantizeOp custom node (enabled or not) follows every weight
and every activation, so onnxruntime cannot fuse across ops, rewrite convolutions to its NCHWc layout or
prepack weights. Left on, the NCHWc rewrite alone changes the float summation order of large
convolutions and flips values across rounding boundaries (seen on a 128->256 3x3 conv).
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qdiverge.encodings.schema import Encoding, EncodingSet
from qdiverge.engines.base import Feeds, expose_outputs, extract_suffix, make_session
from qdiverge.loading.model import Model
from qdiverge.quant import aimet_qdq, float32_params

QDQ_SUFFIX = "::qdq"
SHARED_BYTES = 4096  # initializers at least this large are fed to suffix sessions from one shared copy


@dataclass(frozen=True)
class SimGraph:
    """The transformed model and where each encoded tensor's quantized value lives in it."""

    proto: onnx.ModelProto
    visible: dict[str, str]  # ONNX tensor name -> name of the value its consumers read in ``proto``


def _qdq_nodes(tensor: str, out: str, enc: Encoding, shape: tuple[int, ...] | None) -> tuple[list, list]:
    """ONNX nodes computing AIMET's QDQ of ``tensor`` into ``out``, plus their constant initializers."""
    p = f"{tensor}::q/"
    if enc.is_float:
        nodes = [
            helper.make_node("Cast", [tensor], [p + "h"], to=TensorProto.FLOAT16),
            helper.make_node("Cast", [p + "h"], [out], to=TensorProto.FLOAT),
        ]
        return nodes, []
    if enc.per_channel and shape is None:
        raise ValueError(f"per-channel activation {tensor} needs a known shape")
    # per-tensor constants are 0-d so that the QDQ never changes the tensor's shape (scalars stay scalars)
    params = float32_params(enc, tuple(shape)) if enc.per_channel else float32_params(enc, (1,))
    if not enc.per_channel:
        params = tuple(v.reshape(()) for v in params)
    scale, offset, vmin, vmax = params
    consts = [
        numpy_helper.from_array(np.asarray(scale, np.float32), p + "scale"),
        numpy_helper.from_array(np.asarray(offset, np.float32), p + "offset"),
        numpy_helper.from_array(np.asarray(vmin, np.float32), p + "min"),
        numpy_helper.from_array(np.asarray(vmax, np.float32), p + "max"),
        numpy_helper.from_array(np.array(0.5, np.float64), p + "half"),
    ]
    if enc.per_channel:  # Clip takes scalar bounds only
        clamp = [
            helper.make_node("Min", [p + "x", p + "max"], [p + "lo"]),
            helper.make_node("Max", [p + "lo", p + "min"], [p + "c"]),
        ]
    else:
        clamp = [helper.make_node("Clip", [p + "x", p + "min", p + "max"], [p + "c"])]
    nodes = [
        helper.make_node("IsNaN", [tensor], [p + "nan"]),
        helper.make_node("Where", [p + "nan", p + "min", tensor], [p + "x"]),
        *clamp,
        helper.make_node("Div", [p + "c", p + "scale"], [p + "d"]),
        helper.make_node("Sub", [p + "d", p + "offset"], [p + "v"]),
        # round half away from zero of v >= 0 (v is clamped to [0, 2^bw - 1] up to float32 round-off):
        # floor(v + 0.5) in float64, where the sum is exact (float32's floor(v + 0.5) rounds twice)
        helper.make_node("Cast", [p + "v"], [p + "v64"], to=TensorProto.DOUBLE),
        helper.make_node("Add", [p + "v64", p + "half"], [p + "vh"]),
        helper.make_node("Floor", [p + "vh"], [p + "q64"]),
        helper.make_node("Cast", [p + "q64"], [p + "q"], to=TensorProto.FLOAT),
        helper.make_node("Add", [p + "q", p + "offset"], [p + "qo"]),
        helper.make_node("Mul", [p + "scale", p + "qo"], [out]),
    ]
    return nodes, consts


def build_sim_graph(model: Model, encodings: EncodingSet) -> SimGraph:
    """Rewrite ``model`` into the QuantSim graph for ``encodings``."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    graph = proto.graph
    # params: fake-quantize the initializer values in place
    new_inits = []
    for init in graph.initializer:
        enc = encodings.params.get(init.name)
        if enc is not None and init.data_type == onnx.TensorProto.FLOAT:
            value = aimet_qdq(model.initializers[init.name], enc)
            new_inits.append(numpy_helper.from_array(value, init.name))
        else:
            new_inits.append(init)
    del graph.initializer[:]
    graph.initializer.extend(new_inits)

    visible: dict[str, str] = {}
    extra_nodes: dict[str, list] = {}
    head_nodes: list = []
    graph_outputs = set(model.outputs)
    for name, enc in encodings.activations.items():
        if name in encodings.params:
            continue
        is_output = name in graph_outputs
        raw = f"{name}::raw" if is_output else name
        out = name if is_output else name + QDQ_SUFFIX
        nodes, consts = _qdq_nodes(raw, out, enc, model.shapes.get(name))
        graph.initializer.extend(consts)
        visible[name] = out
        producer = model.producer.get(name)
        if producer is None:  # graph input or constant used as activation: QDQ goes first
            head_nodes.extend(nodes)
        else:
            extra_nodes.setdefault(producer.name, []).extend(nodes)
        if is_output:
            _rename_producer_output(graph, name, raw)
        else:
            for node in graph.node:
                for i, inp in enumerate(node.input):
                    if inp == name:
                        node.input[i] = out
    ordered = list(head_nodes)
    names = [n.name for n in model.nodes]
    for nproto, name in zip(list(graph.node), names, strict=True):
        ordered.append(nproto)
        ordered.extend(extra_nodes.get(name, []))
    del graph.node[:]
    graph.node.extend(ordered)
    del graph.value_info[:]
    return SimGraph(proto=proto, visible=visible)


def _rename_producer_output(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, out in enumerate(node.output):
            if out == old:
                node.output[i] = new


class OrtGraphEngine:
    """Runs an ONNX graph on onnxruntime, caching one session per set of captured tensors."""

    def __init__(
        self,
        name: str,
        proto: onnx.ModelProto,
        outputs: list[str],
        visible: dict[str, str],
        optimize: bool = True,
    ):
        self.name = name
        self._optimize = optimize
        self._proto = proto
        self._outputs = outputs
        self._visible = visible
        self._sessions: dict[tuple[str, ...], object] = {}
        self._suffix: dict[tuple[tuple[str, ...], tuple[str, ...]], object] = {}
        self._weights: dict[str, np.ndarray] | None = None

    def _shared_weights(self) -> dict[str, np.ndarray]:
        """Large initializers, fed to every suffix session from this one copy.

        Every cut gets its own suffix session; with the weights inside each one, building them was mostly
        copying, serializing and parsing the same weights again (and keeping a copy per session)."""
        if self._weights is None:
            self._weights = {
                t.name: numpy_helper.to_array(t)
                for t in self._proto.graph.initializer
                if len(t.raw_data) >= SHARED_BYTES
            }
        return self._weights

    def internal(self, tensor: str) -> str:
        """Name of the value consumers of ``tensor`` read inside the engine's graph."""
        return self._visible.get(tensor, tensor)

    def run(self, feeds: Feeds, capture: Iterable[str] = ()) -> dict[str, np.ndarray]:
        names = tuple(dict.fromkeys([*self._outputs, *capture]))
        session = self._sessions.get(names)
        if session is None:
            proto = expose_outputs(self._proto, [self.internal(n) for n in names])
            session = make_session(proto, optimize=self._optimize)
            self._sessions[names] = session
        results = session.run([self.internal(n) for n in names], dict(feeds))  # type: ignore[attr-defined]
        return dict(zip(names, results, strict=True))

    def run_raw(self, feeds: Feeds, tensors: Iterable[str]) -> dict[str, np.ndarray]:
        """Values of ``tensors`` before their quantizer (what a calibration pass would observe)."""
        names = tuple(tensors)
        raw = {n: (f"{n}::raw" if n in self._outputs and n in self._visible else n) for n in names}
        key = ("::raw", *names)
        session = self._sessions.get(key)
        if session is None:
            session = make_session(expose_outputs(self._proto, list(raw.values())), optimize=self._optimize)
            self._sessions[key] = session
        results = session.run(list(raw.values()), dict(feeds))  # type: ignore[attr-defined]
        return dict(zip(names, results, strict=True))

    def _suffix_session(self, cut_feeds: Feeds, wanted: tuple[str, ...]):
        """The cached session computing ``wanted`` from the tensors of ``cut_feeds`` (None: nothing to compute)."""
        key = (tuple(sorted(cut_feeds)), wanted)
        if key in self._suffix:
            return self._suffix[key]
        internal_in = [self.internal(n) for n in sorted(cut_feeds)]
        computed = [self.internal(o) for o in wanted if self.internal(o) not in internal_in]
        session = None
        if computed:
            types = {self.internal(n): np.asarray(v).dtype for n, v in cut_feeds.items()}
            sub = extract_suffix(self._proto, internal_in, computed, types, self._shared_weights())
            # one thread: every cut keeps a session, and one intra-op pool (spinning threads) per session
            # made split mode ~10x slower on a busy 2-core machine (benchmarks/bench_bisect.py)
            session = make_session(sub, threads=1, optimize=self._optimize, arena=False)
        self._suffix[key] = session
        return session

    def prepare_suffixes(self, cuts: Iterable[Feeds], outputs: Iterable[str] | None = None) -> None:
        """Build the sessions of many cuts at once, on two threads (onnxruntime releases the GIL while it
        builds, and building them one by one was most of a cold split-mode run)."""
        wanted = tuple(outputs or self._outputs)
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(lambda feeds: self._suffix_session(feeds, wanted), cuts))

    def run_suffix(self, cut_feeds: Feeds, outputs: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Run only the part of the graph downstream of ``cut_feeds`` (quantized values at the cut)."""
        wanted = tuple(outputs or self._outputs)
        session = self._suffix_session(cut_feeds, wanted)
        internal_in = {self.internal(n) for n in cut_feeds}
        passthrough = {n for n in wanted if self.internal(n) in internal_in}
        results: dict[str, np.ndarray] = {n: np.asarray(cut_feeds[n]) for n in passthrough}
        if session is not None:
            needed = {i.name for i in session.get_inputs()}  # type: ignore[attr-defined]
            feed = {self.internal(n): v for n, v in cut_feeds.items() if self.internal(n) in needed}
            feed.update((k, v) for k, v in self._shared_weights().items() if k in needed)
            computed_names = [n for n in wanted if n not in passthrough]
            values = session.run([self.internal(n) for n in computed_names], feed)  # type: ignore[attr-defined]
            results.update(zip(computed_names, values, strict=True))
        return {n: results[n] for n in wanted}


def sim_engine(model: Model, encodings: EncodingSet) -> OrtGraphEngine:
    graph = build_sim_graph(model, encodings)
    return OrtGraphEngine("sim", graph.proto, model.outputs, graph.visible, optimize=False)


def float_engine(model: Model) -> OrtGraphEngine:
    return OrtGraphEngine("float", model.proto, model.outputs, {})
