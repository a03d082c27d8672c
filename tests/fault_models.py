"""Fault-injection models for the bisect and diagnosis acceptance tests, and an in-process CLI runner.

One small net (6 weighted layers, MobileNet-style) with a fault that makes one layer compute
differently on the DSP than in the sim, or the same net with the fault removed:

* ``bias8``: per-tensor depthwise weights with collapsed, dead channels (tiny weights, large negative
  BN-folded bias) on a target with 8-bit biases: the dead channels' bias sets the per-tensor 8-bit bias
  scale, which wipes out the live channels' biases on the DSP; the sim adds the float bias. Fixed: an
  int32-bias target (``htp``).
* ``saturate``: a dead pointwise channel exported with AIMET's minimum weight scale (float32 eps) and a
  large folded bias: ``|b| / (s_in * s_w)`` exceeds int32, so the DSP saturates the bias; the sim adds
  the float bias. Fixed: a normal scale on that channel.
* ``strided``: stride-2 depthwise Conv -> HardSwish as a sim supergroup (no encoding on the conv
  output); ``htp`` does not fuse HardSwish after a strided depthwise conv, so the DSP requantizes the conv
  output to an encoding the converter derives. Fixed: stride 1 (fused on the target too), or the
  export carries an encoding for the conv output (both sides quantize it the same way).

The depthwise convs' outputs carry no encoding, as in exports from AIMET before 2.14, whose supergroups
still took depthwise convs (the config reader follows today's AIMET and leaves them out, so the CLI
warns about those tensors).

Encodings are calibrated on the float model (min/max over uniform inputs in the input encoding, as the
CLI's random inputs are drawn) and written as AIMET 1.0.0 JSON with ``encodings_fixtures.v100``.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
import onnxruntime as ort
import yaml
from encodings_fixtures import v100, write
from onnx_builders import GraphBuilder, save

from qdiverge.cli import main

C = 8  # channels
EPS32 = float(np.finfo(np.float32).eps)  # AIMET's minimum scale: what a dead channel exports
FAULTY = {  # fault -> the nodes of the layer the fault is injected into
    "bias8": {"dw1", "relu1"},
    "saturate": {"pw2", "relu2"},
    "strided": {"dw3", "hs3"},
}
FIXES = {"bias8": ("int32-bias",), "saturate": ("normal-scale",), "strided": ("stride-1", "encoded")}
CONFIG = {
    "defaults": {
        "ops": {"is_output_quantized": "True"},
        "params": {"is_quantized": "True", "is_symmetric": "True"},
        "strict_symmetric": "False",
        "unsigned_symmetric": "True",
        "per_channel_quantization": "True",
    },
    "params": {"bias": {"is_quantized": "False"}},
    "op_type": {},
    "supergroups": [{"op_list": ["Conv", "Relu"]}, {"op_list": ["Conv", "HardSwish"]}],
    "model_input": {"is_input_quantized": "True"},
    "model_output": {},
}


@dataclass(frozen=True)
class Case:
    """Files for one ``qdiverge bisect`` run and the nodes of the faulty layer."""

    model: Path
    encodings: Path
    config: Path
    target: str
    faulty: frozenset[str]

    def args(self) -> list[str]:
        return [str(self.model), str(self.encodings), "--config", str(self.config), "--target", self.target]


def _net(fault: str, fix: str, seed: int = 0) -> tuple[onnx.ModelProto, set[str]]:
    """input -> conv0+relu0 -> dw1+relu1 -> pw2+relu2 -> dw3+hs3 -> pw4 -> GAP -> Flatten -> gemm5.

    Returns the model and the weight names quantized per tensor (the rest are per channel)."""
    g = GraphBuilder(seed)
    rng = g.rng

    def conv(x: str, name: str, w: np.ndarray, b: np.ndarray, **attrs) -> str:
        inputs = [x, g.const(f"{name}.weight", w), g.const(f"{name}.bias", b)]
        return g.op("Conv", inputs, f"{name}_out", name, **attrs)

    def normal(*shape: int, std: float) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    x = g.input("input", (1, C, 8, 8))
    x = conv(x, "conv0", normal(C, C, 3, 3, std=0.15), normal(C, std=0.2), pads=[1] * 4)
    x = g.act("Relu", x, "relu0")

    w1, b1 = normal(C, 1, 3, 3, std=0.4), normal(C, std=0.3)
    if fault == "bias8":  # two dead channels: collapsed weights, BN-folded bias far below zero
        w1[6:] *= 0.005
        b1[6:] = [-24.0, -31.0]
    x = g.act("Relu", conv(x, "dw1", w1, b1, pads=[1] * 4, group=C), "relu1")

    w2, b2 = normal(C, C, 1, 1, std=0.4), normal(C, std=0.2)
    if fault == "saturate":  # a dead channel whose folded bias is its whole output
        w2[5], b2[5] = 0.0, 6.0
    x = g.act("Relu", conv(x, "pw2", w2, b2), "relu2")

    w3, b3 = normal(C, 1, 3, 3, std=0.4), normal(C, std=0.3)
    if fault == "strided":
        b3[3] = -18.0  # a channel far below HardSwish's knee widens the range of the conv output
    stride = 1 if fix == "stride-1" else 2 if fault == "strided" else 1
    x = g.act("HardSwish", conv(x, "dw3", w3, b3, pads=[1] * 4, group=C, strides=[stride] * 2), "hs3")

    x = conv(x, "pw4", normal(C, C, 1, 1, std=0.4), normal(C, std=0.2))
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x], "gap_out", "gap")], "flat_out", "flat")
    w5, b5 = g.const("gemm5.weight", normal(10, C, std=0.5)), g.const("gemm5.bias", normal(10, std=0.1))
    g.output(g.op("Gemm", [x, w5, b5], "logits", "gemm5", transB=1))
    per_tensor = {"gemm5.weight"} | ({"dw1.weight"} if fault == "bias8" else set())
    return g.build(), per_tensor


def _calibrate(model: onnx.ModelProto, tensors: list[str], samples: int = 32) -> dict:
    """Float min/max of ``tensors`` over uniform inputs in [-1, 1], widened to include 0."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    known = {o.name for o in exposed.graph.output}
    exposed.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors if t not in known)
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(123)
    lo = {t: 0.0 for t in tensors}
    hi = {t: 0.0 for t in tensors}
    for _ in range(samples):
        values = session.run(tensors, {"input": rng.uniform(-1, 1, (1, C, 8, 8)).astype(np.float32)})
        for t, v in zip(tensors, values, strict=True):
            lo[t], hi[t] = min(lo[t], float(v.min())), max(hi[t], float(v.max()))
    return {t: (lo[t], hi[t]) for t in tensors}


def _activation(lo: float, hi: float) -> tuple:
    scale = float(np.float32((hi - lo) / 255.0))
    return 8, False, [scale], [float(round(lo / scale))], False


def _weight(w: np.ndarray, per_channel: bool) -> tuple:
    rows = np.abs(w.reshape(w.shape[0], -1)).max(axis=1) if per_channel else np.array([np.abs(w).max()])
    scales = [float(s) for s in np.maximum(rows / 127.0, EPS32).astype(np.float32)]
    return 8, True, scales, [-128] * len(scales), True


def encodings_for(model: onnx.ModelProto, per_tensor: set[str], extra: tuple[str, ...] = ()) -> dict:
    """AIMET 1.0.0 encodings: activations at every supergroup end (plus ``extra``), int8 symmetric weights."""
    acts = ["input", "relu0_out", "relu1_out", "relu2_out", "hs3_out", "pw4_out", "gap_out", "logits", *extra]
    ranges = _calibrate(model, acts)
    encs = {t: _activation(*ranges[t]) for t in acts}
    for init in model.graph.initializer:
        if init.name.endswith(".weight"):
            w = onnx.numpy_helper.to_array(init)
            encs[init.name] = _weight(w, init.name not in per_tensor)
    return v100(encs)


def fault_case(tmp_path: Path, fault: str, fix: str = "") -> Case:
    """Write the model, encodings, config (and target profile) of ``fault`` to ``tmp_path``; ``fix`` (one
    of ``FIXES[fault]``) removes the fault."""
    assert not fix or fix in FIXES[fault], fix
    model, per_tensor = _net(fault, fix)
    folder = tmp_path / f"{fault}_{fix or 'faulty'}"
    folder.mkdir()
    data = encodings_for(model, per_tensor, extra=("dw3_out",) if fix == "encoded" else ())
    if fault == "saturate":  # the dead channel exports AIMET's minimum scale (fixed: a normal one)
        entry = next(e for e in data["param_encodings"] if e["name"] == "pw2.weight")
        entry["scale"][5] = float(np.median(entry["scale"])) if fix else EPS32
    # htp with the exact q31 conv requant: HTP's 12-bit form (probe prescale) adds +-1 LSB noise at every
    # layer, and these models measure the injected fault alone
    fields = {**_htp_fields(), "name": "htp-exact-requant"}
    fields["conv"] = {**fields["conv"], "multiplier": "q31"}
    if fault == "bias8" and not fix:
        fields.update(name="htp-bias8", bias_bits=8)
    target = str(folder / "htp_target.yaml")
    Path(target).write_text(yaml.safe_dump(fields))
    config = folder / "quantsim_config.json"
    config.write_text(json.dumps(CONFIG))
    return Case(save(model, folder), write(data, folder), config, target, frozenset(FAULTY[fault]))


def float_range(case: Case, tensor: str) -> tuple[float, float]:
    """Calibrated float range of ``tensor`` (what AIMET would export with its quantizer enabled)."""
    return _calibrate(onnx.load(str(case.model)), [tensor])[tensor]


def _htp_fields() -> dict:
    from qdiverge.profiles import TARGETS_DIR

    fields = yaml.safe_load((TARGETS_DIR / "htp.yaml").read_text())
    fields.pop("name")
    return fields


def run_cli(*args: str | Path) -> tuple[int, str, str]:
    """``qdiverge ARGS`` in this process through ``main`` (exit-code mapping included):
    (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with (
        mock.patch.object(sys, "argv", ["qdiverge", *map(str, args)]),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def bisect_json(case: Case, *extra: str, samples: int = 8) -> dict:
    """``qdiverge bisect --format json`` on ``case``; fails the test on a non-zero exit."""
    args = ("-q", "bisect", *case.args(), "--samples", str(samples), "--format", "json", *extra)
    code, out, err = run_cli(*args)
    assert code == 0, err
    return json.loads(out)


def faulty_rows(report: dict, case: Case) -> list[dict]:
    """Report rows (rank order) of the emulator steps that run the faulty layer's nodes; a row is named
    by the first node of its step (a fused step lists its op types in ``op_type``)."""
    return [row for row in report["layers"] if row["node"] in case.faulty]
