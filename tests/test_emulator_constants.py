"""What the converter does with constants, bit for bit: derived encodings for un-quantized Add/Sub/Mul/Div
constants, a scalar divisor as a multiply, MatMul/Gemm + constant Add as one FullyConnected with an int32
bias, static shape computations folded (never a float fallback), Reshape of a constant."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from kernel_harness import q31, round_fraction
from onnx import TensorProto, helper
from onnx_builders import GraphBuilder, save

import qdiverge.encodings  # noqa: F401  (import order: encodings before quant)
from qdiverge.encodings.schema import Encoding, EncodingSet, encoding_from_range, make_encoding
from qdiverge.engines.emulator.runner import Emulator
from qdiverge.loading.model import load_model
from qdiverge.profiles import load_profile
from qdiverge.profiles.fusion import bias_of_add, fuses

HTP = load_profile("htp")
X_ENC = encoding_from_range("x", -3.7, 5.1)


def _emulator(tmp_path, g: GraphBuilder, encodings: dict[str, Encoding], calibrate=None) -> Emulator:
    model = load_model(save(g.build(), tmp_path))
    encset = EncodingSet(source="test", version="test")
    for name, e in encodings.items():
        (encset.params if e.is_param else encset.activations)[name] = e
    return Emulator(model, encset, HTP, calibrate=calibrate)


def _all_codes(e: Encoding, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Every code of ``e`` (repeated to fill ``shape``) and the float values the input quantizer maps to them."""
    codes = np.resize(np.arange(e.qmin, e.qmax + 1), shape)
    return codes, ((codes - e.zero_point[0]) * e.scale[0]).astype(np.float32)


def _step(emu: Emulator, name: str):
    return next(s for s in emu.steps if s.name == name)


def _fr(v: float) -> Fraction:
    return Fraction(float(v))


def test_add_float_constant_gets_a_derived_range_encoding_and_an_exact_integer_add(tmp_path):
    g = GraphBuilder()
    x = g.input("x", (1, 256))
    g.output(g.add(x, g.const("three", np.array(3.0, dtype=np.float32)), "add"))
    out = encoding_from_range("add_out", -0.7, 8.1)
    emu = _emulator(tmp_path, g, {"x": X_ENC, "add_out": out})
    step = _step(emu, "add")
    assert step.flags == ("derived-encoding:three",) and not step.float_fallback
    assert [r["derived_encodings"] for r in emu.fallback_report()] == [["three"]]
    derived = emu.constants.encoding("three")
    want_enc = encoding_from_range("three", 0.0, 3.0, 8)  # range widened to include 0, 8 bit
    assert derived is not None and (derived.scale, derived.offset) == (want_enc.scale, want_enc.offset)
    codes, xf = _all_codes(X_ENC, (1, 256))
    got = emu.run({"x": xf})["add_out"].codes
    np.testing.assert_array_equal(emu.quantize_input("x", xf).codes, codes)
    # oracle: one exact rounding (HTP: ties up) of s_x (q - z_x) + s_c (q_c - z_c), q_c = 255 holds 3.0
    (sx, zx), (sc, zc), (so, zo) = ((_fr(e.scale[0]), int(e.zero_point[0])) for e in (X_ENC, derived, out))
    qc = 255
    want = [
        min(max(round_fraction((sx * (q - zx) + sc * (qc - zc)) / so, "half_up") + zo, out.qmin), out.qmax)
        for q in codes.reshape(-1).tolist()
    ]
    np.testing.assert_array_equal(got.reshape(-1), want)


def test_constant_with_an_export_encoding_is_used_as_is_and_not_flagged(tmp_path):
    """AIMET with ``is_input_quantized`` quantizes Add/Mul constants as activations: that encoding wins."""
    g = GraphBuilder()
    x = g.input("x", (1, 256))
    g.output(g.op("Mul", [x, g.const("k", np.array(0.37, dtype=np.float32))], "mul_out", "mul"))
    k_enc = encoding_from_range("k", 0.0, 0.5)
    out = encoding_from_range("mul_out", -1.5, 2.0)
    emu = _emulator(tmp_path, g, {"x": X_ENC, "k": k_enc, "mul_out": out})
    assert emu.fallback_report() == [] and emu.constants.encoding("k") is k_enc
    codes, xf = _all_codes(X_ENC, (1, 256))
    got = emu.run({"x": xf})["mul_out"].codes.reshape(-1)
    zx, zk, zo = (int(e.zero_point[0]) for e in (X_ENC, k_enc, out))
    qk = int(np.rint(0.37 / float(k_enc.scale[0]))) + zk
    qm, shift = q31(float(k_enc.scale[0]) * float(X_ENC.scale[0]) / float(out.scale[0]))  # eltwise: float64
    want = [
        min(
            max(round_fraction(Fraction((q - zx) * (qk - zk) * qm, 1 << (31 - shift)), "half_up") + zo, 0),
            255,
        )
        for q in codes.reshape(-1).tolist()
    ]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("divisor", [6.0, -2.5])
def test_division_by_a_scalar_constant_is_one_multiply_by_its_reciprocal(tmp_path, divisor):
    g = GraphBuilder()
    x = g.input("x", (1, 256))
    g.output(g.op("Div", [x, g.const("c", np.array(divisor, dtype=np.float32))], "div_out", "div"))
    out = encoding_from_range("div_out", -1.6, 1.2)
    emu = _emulator(tmp_path, g, {"x": X_ENC, "div_out": out})
    step = _step(emu, "div")
    assert step.flags == ("derived-encoding:c",)
    c_enc = emu.constants.encoding("c")
    assert c_enc is not None
    codes, xf = _all_codes(X_ENC, (1, 256))
    got = emu.run({"x": xf})["div_out"].codes.reshape(-1)
    # the divisor as the target holds it: its code on the derived grid (ties even), dequantized
    qc = int(np.rint(divisor / float(c_enc.scale[0]))) + int(c_enc.zero_point[0])
    held = float(c_enc.scale[0]) * (qc - int(c_enc.zero_point[0]))
    qm, shift = q31(float(X_ENC.scale[0]) / (abs(held) * float(out.scale[0])))
    sign = 1 if held > 0 else -1
    zx, zo = int(X_ENC.zero_point[0]), int(out.zero_point[0])
    want = [
        min(max(round_fraction(Fraction(sign * (q - zx) * qm, 1 << (31 - shift)), "half_up") + zo, 0), 255)
        for q in codes.reshape(-1).tolist()
    ]
    np.testing.assert_array_equal(got, want)
    # and that is within half an output step (plus the Q31 error) of the exact quotient
    exact = (codes.reshape(-1) - zx) * float(X_ENC.scale[0]) / held / float(out.scale[0]) + zo
    inside = (exact > out.qmin) & (exact < out.qmax)
    assert np.abs(got[inside] - exact[inside]).max() <= 0.5 + 1e-6


def _linear_oracle(x_codes, x_enc, w, w_enc, bias, out_enc) -> np.ndarray:
    """int32-bias FullyConnected by loops: sum (q_x - z_x)(q_w - z_w) + R_even(b / (s_x s_w)), then one
    Q31 requantization (HTP: M from float32 scales, ties up), clamp."""
    sx, sw, so = (np.float32(e.scale[0]) for e in (x_enc, w_enc, out_enc))
    zx, zw, zo = (int(e.zero_point[0]) for e in (x_enc, w_enc, out_enc))
    wq = np.clip(np.rint(w / float(w_enc.scale[0])) + zw, w_enc.qmin, w_enc.qmax).astype(int)
    qm, shift = q31(float(np.float32(sx * sw) / so))
    rows, (k_dim, n_dim) = x_codes.reshape(-1, x_codes.shape[-1]), wq.shape
    out = np.zeros((rows.shape[0], n_dim), dtype=np.int64)
    for m, row in enumerate(rows.tolist()):
        for n in range(n_dim):
            acc = sum((row[k] - zx) * (int(wq[k, n]) - zw) for k in range(k_dim))
            acc += round_fraction(_fr(bias[n]) / (_fr(x_enc.scale[0]) * _fr(w_enc.scale[0])), "half_even")
            y = round_fraction(Fraction(acc * qm, 1 << (31 - shift)), "half_up") + zo
            out[m, n] = min(max(y, out_enc.qmin), out_enc.qmax)
    return out.reshape(*x_codes.shape[:-1], n_dim)


def _weight_encoding(name: str, w: np.ndarray) -> Encoding:
    return make_encoding(
        name, 8, float(np.abs(w).max()) / 127, -128.0, signed=True, symmetric=True, is_param=True
    )


@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
def test_matmul_plus_constant_add_is_one_linear_op_with_an_int32_bias(tmp_path, op):
    g = GraphBuilder(seed=3)
    x = g.input("x", (3, 16))
    w = (g.rng.standard_normal((16, 5)) * 0.3).astype(np.float32)
    bias = (g.rng.standard_normal(5) * 0.8).astype(np.float32)
    wt = g.const("w", w.T.copy() if op == "Gemm" else w)
    y = g.op(op, [x, wt], "fc_out", "fc", **({"transB": 1} if op == "Gemm" else {}))
    b = g.const("b", bias if op == "MatMul" else bias.reshape(1, 5))
    g.output(g.add(y, b, "add"))
    x_enc = encoding_from_range("x", -2.0, 2.5)
    w_enc = _weight_encoding("w", w)
    out = encoding_from_range("add_out", -4.0, 4.0)
    emu = _emulator(tmp_path, g, {"x": x_enc, "w": w_enc, "add_out": out})
    (step,) = emu.steps
    assert step.fused == ["add"] and step.flags == ("fused:add",)
    assert "fc_out" not in emu.target_encodings  # the MatMul output is never materialised: nothing derived
    codes = np.random.default_rng(1).integers(0, 256, (3, 16))
    xf = ((codes - x_enc.zero_point[0]) * x_enc.scale[0]).astype(np.float32)
    got = emu.run({"x": xf})["add_out"].codes
    np.testing.assert_array_equal(got, _linear_oracle(codes, x_enc, w, w_enc, bias, out))


def test_matmul_bias_relu_is_one_op_but_a_lone_add_relu_is_not(tmp_path):
    g = GraphBuilder(seed=4)
    x = g.input("x", (3, 16))
    w = (g.rng.standard_normal((16, 5)) * 0.3).astype(np.float32)
    bias = (g.rng.standard_normal(5) * 0.8).astype(np.float32)
    y = g.add(g.op("MatMul", [x, g.const("w", w)], "fc_out", "fc"), g.const("b", bias), "add")
    y = g.act("Relu", y, "relu")
    z = g.act("Relu", g.add(y, g.const("one", np.ones(5, dtype=np.float32)), "res"), "relu2")
    g.output(z)
    x_enc, w_enc = encoding_from_range("x", -2.0, 2.5), _weight_encoding("w", w)
    out = encoding_from_range("relu_out", 0.0, 4.0)
    encs = {"x": x_enc, "w": w_enc, "relu_out": out, "one": encoding_from_range("one", 0.0, 1.0)}
    encs |= {n: encoding_from_range(n, 0.0, 5.0) for n in ("res_out", "relu2_out")}
    emu = _emulator(tmp_path, g, encs)
    fc, res = _step(emu, "fc"), _step(emu, "res")
    assert fc.fused == ["add", "relu"] and res.fused == []  # [MatMul, Add, Relu] does not fuse Add+Relu alone
    model = emu.model
    nodes = {n.name: n for n in model.nodes}
    assert fuses(HTP, nodes["add"], nodes["relu"], model) and not fuses(
        HTP, nodes["res"], nodes["relu2"], model
    )
    codes = np.random.default_rng(1).integers(0, 256, (3, 16))
    xf = ((codes - x_enc.zero_point[0]) * x_enc.scale[0]).astype(np.float32)
    got = emu.run({"x": xf}, keep="all")["relu_out"].codes
    want = np.maximum(_linear_oracle(codes, x_enc, w, w_enc, bias, out), int(out.zero_point[0]))
    np.testing.assert_array_equal(got, want)


def test_add_that_is_not_a_column_bias_is_not_fused(tmp_path):
    g = GraphBuilder()
    x = g.input("x", (4, 8))
    y = g.matmul(x, "fc", 8, 4)
    g.output(g.add(y, g.const("rowbias", np.ones((4, 1), dtype=np.float32)), "add"))
    model = load_model(save(g.build(), tmp_path))
    fc, add = model.nodes
    assert bias_of_add(fc, add, model) is None and not fuses(HTP, fc, add, model)
    assert not fuses(load_profile("onnx"), fc, add, model)  # ORT runs the Add as its own QLinearAdd


def test_shape_chain_is_folded_and_softmax_after_a_computed_reshape_is_integer(tmp_path):
    """Shape -> Cast -> Slice -> Cast -> Concat -> Reshape -> MatMul(+bias) -> Softmax, as Paddle exports
    a flatten: the shape arithmetic is folded at bind time, nothing is a float fallback, and the shapes
    after the computed Reshape are known (the Softmax gets its integer kernel)."""
    g = GraphBuilder(seed=5)
    x = g.input("x", (2, 6, 1, 1))
    s = g.op("Shape", [x], "shape_out", "shape")
    s = g.op("Cast", [s], "cast32_out", "cast32", to=TensorProto.INT32)
    zero, one = (g.const(n, np.array([v], dtype=np.int32)) for n, v in (("zero", 0), ("one", 1)))
    s = g.op("Slice", [s, zero, one, zero], "slice_out", "slice")
    s = g.op("Cast", [s], "cast64_out", "cast64", to=TensorProto.INT64)
    s = g.op("Concat", [s, g.const("six", np.array([6], dtype=np.int64))], "concat_out", "concat", axis=0)
    y = g.op("Reshape", [x, s], "flat_out", "flat")
    y = g.add(g.matmul(y, "fc", 6, 3), g.weight("fc.bias", (3,)), "bias")
    g.output(g.op("Softmax", [y], "prob_out", "prob", axis=1))
    model_w = load_model(save(g.build(), tmp_path)).initializers["fc.weight"]
    encs = {
        "x": encoding_from_range("x", -2.0, 2.0),
        "fc.weight": _weight_encoding("fc.weight", model_w),
        "bias_out": encoding_from_range("bias_out", -3.0, 3.0),
        "prob_out": encoding_from_range("prob_out", 0.0, 1.0),
    }
    emu = _emulator(tmp_path, g, encs)
    notes = {s.name: s.note for s in emu.steps}
    assert {n: notes[n] for n in ("shape", "cast32", "slice", "cast64", "concat")} == dict.fromkeys(
        ("shape", "cast32", "slice", "cast64", "concat"), "static"
    )
    assert emu.fallback_report() == [] and not any(s.float_fallback for s in emu.steps)
    np.testing.assert_array_equal(emu.constants.values["concat_out"], [2, 6])
    assert emu.constants.shapes["flat_out"] == (2, 6) and _step(emu, "prob").kernel is not None
    xf = np.random.default_rng(0).uniform(-2, 2, (2, 6, 1, 1)).astype(np.float32)
    everything = emu.run({"x": xf}, keep="all")
    np.testing.assert_array_equal(everything["concat_out"].codes, [2, 6])
    for step in emu.steps:  # isolated runs reproduce the chained run, folded steps included
        got = emu.run_step(step, {n: everything[n] for n in step.inputs})
        for name, t in got.items():
            np.testing.assert_array_equal(t.codes, everything[name].codes)


def test_shape_of_a_data_dependent_tensor_runs_exactly_without_a_flag(tmp_path):
    g = GraphBuilder()
    x = g.input("x", (3, 4))
    nz = g.op("NonZero", [x], "nz_out", "nz")
    g.op("Shape", [nz], "shape_out", "shape")
    g.outputs.append(helper.make_tensor_value_info("shape_out", TensorProto.INT64, None))
    emu = _emulator(tmp_path, g, {"x": X_ENC})
    assert _step(emu, "shape").note == "shape" and not _step(emu, "shape").float_fallback
    assert [r["step"] for r in emu.fallback_report()] == ["nz"]  # NonZero itself has no integer kernel
    xf = np.array([[0, 1, 0, 2], [3, 0, 0, 0], [0, 0, 0, 0]], dtype=np.float32)
    np.testing.assert_array_equal(emu.run({"x": xf})["shape_out"].codes, [2, 3])


@pytest.mark.parametrize("encoded", [True, False])
def test_reshape_of_a_constant_bias_is_static(tmp_path, encoded):
    """Paddle's conv bias as Add(conv, Reshape(b, [1, C, 1, 1])): the Reshape is folded; the Add reads the
    constant on b's export encoding, or on one derived from its values (then that static step is flagged)."""
    g = GraphBuilder()
    x = g.input("x", (1, 3, 2, 2))
    b = g.const("b", np.array([-0.3, 0.1, 0.45], dtype=np.float32))
    g.output(g.add(x, g.reshape(b, "rb", (1, 3, 1, 1)), "add"))
    encs = {"x": X_ENC, "add_out": encoding_from_range("add_out", -4.0, 6.0)}
    if encoded:
        encs["b"] = encoding_from_range("b", -0.3, 0.45)
    emu = _emulator(tmp_path, g, encs)
    assert _step(emu, "rb").note == "static" and not _step(emu, "add").flags
    assert [r["derived_encodings"] for r in emu.fallback_report()] == ([] if encoded else [["rb_out"]])
    b_enc = emu.constants.encoding("rb_out")
    assert b_enc is not None and (b_enc is encs["b"] if encoded else b_enc.offset[0] < 0)
    xf = np.random.default_rng(2).uniform(-3, 5, (1, 3, 2, 2)).astype(np.float32)
    got = emu.run({"x": xf})["add_out"]
    held = b_enc.scale[0] * np.rint(np.array([-0.3, 0.1, 0.45]) / b_enc.scale[0])  # real = s * (q_u + offset)
    ref = emu.quantize_input("x", xf).dequantize() + held.reshape(1, 3, 1, 1)
    assert np.abs(got.dequantize() - ref).max() <= got.encoding.scale[0] * (0.5 + 1e-3)
