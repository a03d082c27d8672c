"""Runner planning: fusion, pass-through and derived encodings, visible float fallback, run == run_step."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import qdiverge.encodings  # noqa: F401  (import order: encodings before quant)
from qdiverge.encodings.schema import EncodingSet, encoding_from_range, make_encoding
from qdiverge.engines.emulator.runner import Emulator
from qdiverge.loading.model import load_model
from qdiverge.profiles import load_profile


def _model(tmp_path):
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 4, 1, 1)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
        helper.make_node("HardSwish", ["c2"], ["h2"], name="hswish2"),
        helper.make_node("Flatten", ["h2"], ["f"], name="flat"),
        helper.make_node("Cos", ["f"], ["y"], name="cos"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 100])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, str(tmp_path / "m.onnx"))
    model = load_model(tmp_path / "m.onnx")
    enc = EncodingSet(source="test", version="test")
    for name, (lo, hi) in {"x": (-2, 2), "r1": (0, 3), "h2": (-0.4, 4), "y": (-1, 1)}.items():
        enc.activations[name] = encoding_from_range(name, lo, hi)
    for w in ("w1", "w2"):
        value = model.initializers[w]
        enc.params[w] = make_encoding(
            w,
            8,
            np.abs(value).reshape(4, -1).max(1) / 127,
            -128.0,
            signed=True,
            symmetric=True,
            axis=0,
            is_param=True,
        )
    return model, enc


def test_plan_flags_and_run(tmp_path):
    model, enc = _model(tmp_path)
    asked = []

    def calibrate(names):
        asked.extend(names)
        return {n: (-1.0, 5.0) for n in names}

    emu = Emulator(
        model,
        enc,
        load_profile("onnx"),
        supergroup_internal={"c2": ("conv2", "hswish2")},
        calibrate=calibrate,
    )
    plan = {s.name: s for s in emu.steps}
    assert [s.name for s in emu.steps] == ["conv1", "conv2", "hswish2", "flat", "cos"]
    assert plan["conv1"].fused == ["relu1"] and "c1" not in emu.target_encodings
    assert asked == ["c2"] and plan["conv2"].derived_encodings == ["c2 (sim supergroup conv2+hswish2)"]
    assert emu.target_encodings["f"] is emu.target_encodings["h2"]  # Flatten passes the encoding through
    assert plan["cos"].float_fallback and "no kernel for Cos" in plan["cos"].fallback_reason
    assert [e["step"] for e in emu.fallback_report()] == ["conv2", "cos"]

    x = np.random.default_rng(1).normal(0, 1, (2, 3, 5, 5)).astype(np.float32)
    everything = emu.run({"x": x}, keep="all")
    assert set(emu.run({"x": x})) == {"y"}
    for step in emu.steps:  # isolated runs on the same inputs reproduce the chained run
        got = emu.run_step(step, {n: everything[n] for n in step.inputs})
        for name, t in got.items():
            np.testing.assert_array_equal(t.codes, everything[name].codes)
    y = everything["y"]
    assert y.encoding is enc.activations["y"] and y.codes.dtype == np.int64
    # the float fallback quantizes cos(dequantized input) with the output encoding
    ref = np.cos(everything["f"].dequantize())
    assert np.abs(y.dequantize() - ref).max() <= enc.activations["y"].scale[0] / 2 + 1e-6


def test_htp_fuses_hardswish_so_nothing_is_derived(tmp_path):
    model, enc = _model(tmp_path)
    emu = Emulator(model, enc, load_profile("htp"))
    assert [s.name for s in emu.steps] == ["conv1", "conv2", "flat", "cos"]
    assert emu.steps[1].fused == ["hswish2"] and not emu.steps[1].float_fallback


def test_an_activation_missing_from_lut_ops_runs_in_float_and_is_flagged(tmp_path):
    """``lut.ops`` decides which activations are tables on the target; the others fall back visibly."""
    import dataclasses

    model, enc = _model(tmp_path)
    enc.activations["c2"] = encoding_from_range("c2", -3, 3)  # unfused: HardSwish is its own step
    htp = load_profile("htp")
    no_fusion = dataclasses.replace(htp, fusions=(("Conv", "Relu"),))
    as_table = Emulator(model, enc, no_fusion)
    hswish = next(s for s in as_table.steps if s.name == "hswish2")
    assert not hswish.float_fallback
    without = dataclasses.replace(no_fusion, lut=dataclasses.replace(htp.lut, ops=("Sigmoid",)))
    hswish = next(s for s in Emulator(model, enc, without).steps if s.name == "hswish2")
    assert hswish.float_fallback and "lut.ops" in hswish.fallback_reason
