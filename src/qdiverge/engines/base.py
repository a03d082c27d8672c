"""The contract every engine meets, and the onnxruntime plumbing the float and sim engines share."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from collections.abc import Collection, Iterable, Mapping
from typing import Protocol

import numpy as np
import onnx
import onnxruntime as ort

from qdiverge.errors import InputError

Feeds = Mapping[str, np.ndarray]


class Engine(Protocol):
    """Runs a model on float feeds and returns float arrays keyed by ONNX tensor name."""

    name: str

    def run(self, feeds: Feeds, capture: Iterable[str] = ()) -> dict[str, np.ndarray]:
        """Model outputs plus every tensor named in ``capture``."""
        ...


_SHARED_ARENA = False


def _register_shared_arena() -> None:
    """One memory arena for every session that asks for it: a per-session arena would keep each node's
    largest buffers for good (2x the peak RSS), and no arena costs page faults on every large buffer."""
    global _SHARED_ARENA
    if not _SHARED_ARENA:
        with contextlib.suppress(Exception):  # already registered in this process: share that one
            ort.create_and_register_allocator(
                ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT),
                ort.OrtArenaCfg(0, -1, -1, -1),
            )
        _SHARED_ARENA = True


def release_free_memory() -> None:
    """Hand the C heap's free memory back to the operating system (glibc ``malloc_trim``; elsewhere nothing).

    Loading a model, shape inference and building sessions free far more than they keep, in pieces glibc
    holds on to, memory nothing will use again: on the MobileNetV3-Large benchmark (``bench_emulator.py
    --batch 8`` with ``QDIVERGE_JIT=0``) the emulator's peak RSS went from 255 to 229 MB with it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def make_session(
    proto: onnx.ModelProto,
    threads: int = 0,
    optimize: bool = True,
    arena: bool = True,
    shared_arena: bool = False,
    layout: bool = True,
) -> ort.InferenceSession:
    """A CPU onnxruntime session, with default graph optimizations unless ``optimize`` is False.

    ``optimize=False`` runs every node as its own kernel on unpacked weights: no fusions, no NCHWc
    layout rewrite, no weight prepacking. That is what aimet-onnx's sim session ends up doing, because
    its QcQuantizeOp custom nodes sit on every weight and activation and block those rewrites.
    ``shared_arena``: allocate from one process-wide arena (the emulator's many per-node sessions).
    ``layout=False``: all graph optimizations but the NCHWc layout rewrite (and its reorders).
    """
    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors reach the user once, as the exception; not as ORT log lines
    if not layout:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.add_session_config_entry("session.disable_prepacking", "1")
    if threads:
        options.intra_op_num_threads = threads
    if not arena:  # many long-lived small sessions: an arena each would hold its peak memory forever
        options.enable_cpu_mem_arena = False
    if shared_arena:
        _register_shared_arena()
        options.add_session_config_entry("session.use_env_allocators", "1")
    # idle workers sleep instead of spinning: qdiverge alternates many short runs of several sessions
    # (sim, suffixes, emulator accumulators), and spinning pools steal each other's cores
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(
            proto.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"onnxruntime cannot build the model: {first}") from exc
    session._model_bytes = None  # ORT keeps the serialized model only to rebuild on a provider fallback
    return session


def expose_outputs(proto: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """Copy of ``proto`` whose graph outputs also include ``names`` (types left to ORT)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    present = {o.name for o in out.graph.output}
    for name in names:
        if name not in present:
            out.graph.output.append(onnx.ValueInfoProto(name=name))
            present.add(name)
    return out


def extract_suffix(
    proto: onnx.ModelProto,
    inputs: Iterable[str],
    outputs: Iterable[str],
    input_types: Mapping[str, np.dtype] | None = None,
    external: Collection[str] = (),
) -> onnx.ModelProto:
    """The part of ``proto`` that computes ``outputs`` from the tensors ``inputs`` (which become inputs).

    Walks back from the outputs and stops at the given inputs, so nothing upstream of the cut is kept.
    New inputs are float32 unless ``input_types`` says otherwise (a cut can cross an int64 shape tensor).
    Initializers named in ``external`` become graph inputs too (the caller feeds them), so the suffix
    does not carry a copy of those weights.
    """
    cut = set(inputs)
    wanted = list(outputs)
    producer = {o: n for n in proto.graph.node for o in n.output}
    init_names = {t.name for t in proto.graph.initializer}
    keep: set[int] = set()
    index_of = {id(n): i for i, n in enumerate(proto.graph.node)}
    stack = [t for t in wanted if t not in cut]
    seen: set[str] = set()
    used_inits: set[str] = set()
    graph_inputs = {i.name for i in proto.graph.input}
    needed_graph_inputs: set[str] = set()
    while stack:
        tensor = stack.pop()
        if tensor in seen or not tensor:
            continue
        seen.add(tensor)
        if tensor in cut:
            continue
        if tensor in init_names:
            used_inits.add(tensor)
            continue
        node = producer.get(tensor)
        if node is None:
            if tensor in graph_inputs:
                needed_graph_inputs.add(tensor)
                continue
            raise InputError(f"cannot cut the graph: tensor {tensor!r} has no producer")
        keep.add(index_of[id(node)])
        stack.extend(i for i in node.input if i)
    # built from parts, not copied whole: copying the model's weights once per cut dominated the cost
    sub = onnx.ModelProto(ir_version=proto.ir_version)
    sub.opset_import.extend(proto.opset_import)
    sub.functions.extend(proto.functions)
    graph = sub.graph
    graph.name = proto.graph.name
    nodes = [n for i, n in enumerate(proto.graph.node) if i in keep]
    graph.node.extend(nodes)
    graph.input.extend(i for i in proto.graph.input if i.name in needed_graph_inputs)
    for tensor in proto.graph.initializer:
        if tensor.name not in used_inits:
            continue
        if tensor.name in external:
            graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
            )
        else:
            graph.initializer.append(tensor)
    used = {i for n in nodes for i in n.input} | set(wanted)
    types = input_types or {}
    for name in sorted(cut & used):
        elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(types.get(name, np.float32)))
        graph.input.append(onnx.helper.make_tensor_value_info(name, elem, None))
    graph.output.extend(onnx.ValueInfoProto(name=o) for o in wanted)
    return sub
