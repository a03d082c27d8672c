"""The "qnn-htp" engine: a QDQ ONNX model run on Qualcomm's HTP backend through onnxruntime-qnn.

The wheel ships ``libQnnHtp.so``, which on x86-64 runs an HTP simulation. CPU fallback is disabled, so a
node the backend rejects is an error instead of a silent float run on the CPU. Intermediate tensors are
observed through the integer codes of their ``QuantizeLinear`` (exposing a ``DequantizeLinear`` output
breaks the QDQ node units the EP groups); exposing a tensor can still undo a fusion, so
``check_capture_neutral`` compares the final outputs with the unmodified model.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from qdiverge.engines.base import Feeds, expose_outputs
from qdiverge.errors import InputError

HTP_ARCHS = (68, 69, 73, 75, 79, 81)
INSTALL_HINT = "install the qnn extra: pip install 'qdiverge[qnn]'"


@contextlib.contextmanager
def _native_stdout_to_stderr():
    """Send what native code prints to file descriptor 1 to stderr instead.

    libQnnHtp prints a banner on stdout when its first session is built, which would corrupt a report
    written to stdout (``--format json`` without ``-o``)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def load_qnn() -> ModuleType:
    """The ``onnxruntime_qnn`` module, registered with onnxruntime once per process."""
    try:
        qnn = importlib.import_module("onnxruntime_qnn")
    except ImportError as exc:
        raise InputError(f"onnxruntime_qnn is not importable; {INSTALL_HINT}") from exc
    if not _ep_devices(qnn.get_ep_name()):
        with _native_stdout_to_stderr():
            ort.register_execution_provider_library(qnn.get_ep_name(), qnn.get_library_path())
    return qnn


def _ep_devices(ep_name: str) -> list:
    return [d for d in ort.get_ep_devices() if d.ep_name == ep_name]


def make_htp_session(proto: onnx.ModelProto, htp_arch: int = 73) -> ort.InferenceSession:
    """An onnxruntime session that places every node of ``proto`` on HTP (or raises ``InputError``)."""
    if htp_arch not in HTP_ARCHS:
        raise InputError(f"htp_arch {htp_arch} is not one of {', '.join(map(str, HTP_ARCHS))}")
    qnn = load_qnn()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    options.add_provider_for_devices(
        _ep_devices(qnn.get_ep_name()),
        {"backend_path": qnn.get_qnn_htp_path(), "htp_arch": str(htp_arch)},
    )
    try:
        with _native_stdout_to_stderr():
            return ort.InferenceSession(proto.SerializeToString(), sess_options=options)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/EPFail types
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise InputError(f"HTP cannot run the model (CPU fallback is disabled): {first}") from exc


@dataclass(frozen=True)
class QuantTap:
    """Where a float tensor is quantized: the ``QuantizeLinear`` output holding its codes."""

    tensor: str
    codes: str
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int

    def dequantize(self, codes: np.ndarray) -> np.ndarray:
        """``(code - zp) * scale`` in float32, as ONNX ``DequantizeLinear`` computes it."""
        shape = [1] * codes.ndim
        if self.scale.size > 1:
            shape[self.axis % codes.ndim] = self.scale.size
        zp = self.zero_point.astype(np.int64).reshape(shape)
        scale = self.scale.astype(np.float32).reshape(shape)
        return ((codes.astype(np.int64) - zp).astype(np.float32) * scale).astype(np.float32)


def quant_taps(proto: onnx.ModelProto) -> dict[str, QuantTap]:
    """Every ``QuantizeLinear`` with constant parameters, keyed by the float tensor it quantizes.

    The codes tensor is also a key, so a caller may name either side.
    """
    consts = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    taps: dict[str, QuantTap] = {}
    for node in proto.graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3 or node.input[1] not in consts:
            continue
        zp = consts.get(node.input[2])
        if zp is None:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        tap = QuantTap(node.input[0], node.output[0], consts[node.input[1]], zp, axis)
        taps.setdefault(tap.tensor, tap)
        taps[tap.codes] = tap
    return taps


@dataclass
class HtpResult:
    """One HTP run: graph outputs as returned, plus codes and dequantized values of captured tensors."""

    outputs: dict[str, np.ndarray]
    codes: dict[str, np.ndarray] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)


class QnnHtpEngine:
    """Runs a QDQ ONNX model on HTP; captured tensors come back as codes and as dequantized floats."""

    name = "qnn-htp"

    def __init__(self, proto: onnx.ModelProto, htp_arch: int = 73):
        self.proto = proto
        self.htp_arch = htp_arch
        self.taps = quant_taps(proto)
        self.outputs = [o.name for o in proto.graph.output]
        self._sessions: dict[tuple[str, ...], ort.InferenceSession] = {}

    def tap(self, tensor: str) -> QuantTap:
        tap = self.taps.get(tensor)
        if tap is None:
            raise InputError(
                f"tensor {tensor!r} has no QuantizeLinear in the QDQ model; HTP cannot expose it"
            )
        return tap

    def _session(self, codes: tuple[str, ...]) -> ort.InferenceSession:
        if codes not in self._sessions:
            proto = expose_outputs(self.proto, codes) if codes else self.proto
            self._sessions[codes] = make_htp_session(proto, self.htp_arch)
        return self._sessions[codes]

    def run_quantized(self, feeds: Feeds, capture: Iterable[str] = ()) -> HtpResult:
        """Run once; for each name in ``capture`` return its integer codes and dequantized floats."""
        taps = {name: self.tap(name) for name in capture}
        extra = tuple(sorted({t.codes for t in taps.values()} - set(self.outputs)))
        session = self._session(extra)
        typed = {i.name: np.asarray(feeds[i.name]) for i in session.get_inputs() if i.name in feeds}
        missing = [i.name for i in session.get_inputs() if i.name not in feeds]
        if missing:
            raise InputError(f"no input data for graph input(s) {', '.join(missing)}")
        names = self.outputs + list(extra)
        values = dict(zip(names, session.run(names, typed), strict=True))
        result = HtpResult(outputs={o: values[o] for o in self.outputs})
        for name, tap in taps.items():
            result.codes[name] = values[tap.codes]
            result.values[name] = tap.dequantize(values[tap.codes])
        return result

    def run(self, feeds: Feeds, capture: Iterable[str] = ()) -> dict[str, np.ndarray]:
        """The ``Engine`` contract: graph outputs plus captured tensors, as floats."""
        result = self.run_quantized(feeds, capture)
        return {**result.outputs, **result.values}


@dataclass(frozen=True)
class CaptureCheck:
    """Whether exposing intermediates left the final outputs bit-identical."""

    max_diff: dict[str, float]

    @property
    def changed(self) -> list[str]:
        return [name for name, diff in self.max_diff.items() if diff != 0]

    def __bool__(self) -> bool:
        return not self.changed


def check_capture_neutral(engine: QnnHtpEngine, feeds: Feeds, capture: Iterable[str]) -> CaptureCheck:
    """Graph outputs with and without ``capture`` exposed (exposing a tensor may undo a fusion)."""
    plain = engine.run_quantized(feeds).outputs
    tapped = engine.run_quantized(feeds, capture).outputs
    diffs = {}
    for name, ref in plain.items():
        got = tapped[name]
        same = ref.shape == got.shape
        diffs[name] = (
            float(np.max(np.abs(ref.astype(np.float64) - got.astype(np.float64)))) if same else np.inf
        )
    return CaptureCheck(diffs)
