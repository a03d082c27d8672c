"""Conv / MatMul kernels, bit for bit: the ``onnx`` profile against onnxruntime's QLinearConv /
QLinearMatMul / ConvInteger / MatMulInteger, the fast accumulation against the plain-loop oracle, the
``tflite`` profile against gemmlowp arithmetic written with Python ints."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from loop_reference import conv_acc_loop, conv_transpose_acc_loop
from onnx import TensorProto, helper, numpy_helper

from qdiverge.encodings.schema import make_encoding
from qdiverge.engines.emulator.accumulate import conv_sum
from qdiverge.engines.emulator.kernels.conv import Conv, ConvTranspose, conv_accumulate
from qdiverge.engines.emulator.kernels.matmul import MatMul
from qdiverge.engines.emulator.linear import Epilogue
from qdiverge.engines.emulator.registry import Binding
from qdiverge.engines.emulator.requant import prepare_requant
from qdiverge.loading.model import Node
from qdiverge.profiles import load_profile

ONNX = load_profile("onnx")
TFLITE = load_profile("tflite")
ONNX_TYPE = {np.dtype("uint8"): TensorProto.UINT8, np.dtype("int8"): TensorProto.INT8}


def _enc(name: str, scale, zero_point, dtype: np.dtype, axis: int | None = None, param: bool = False):
    signed = dtype == np.int8
    qmin = -128 if signed else 0
    zp = np.atleast_1d(np.asarray(zero_point, dtype=np.float64))
    return make_encoding(
        name, 8, np.asarray(scale, np.float64), qmin - zp, signed=signed, axis=axis, is_param=param
    )


def _run_ort(nodes, inits, feeds, out_type=None):
    inputs = [
        helper.make_tensor_value_info(k, ONNX_TYPE.get(v.dtype, TensorProto.FLOAT), v.shape)
        for k, v in feeds.items()
    ]
    graph = helper.make_graph(
        nodes,
        "t",
        inputs,
        [onnx.ValueInfoProto(name="y")],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(["y"], feeds)[0]


def _random_conv_case(rng: np.random.Generator):
    depthwise = rng.random() < 0.3
    group = 1
    cin = int(rng.integers(1, 6))
    if depthwise:
        group = cin = int(rng.integers(2, 7))
        cout = cin * int(rng.integers(1, 3))
    elif rng.random() < 0.3:
        group = int(rng.integers(2, 4))
        cin = group * int(rng.integers(1, 3))
        cout = group * int(rng.integers(1, 3))
    else:
        cout = int(rng.integers(1, 6))
    kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    attrs = {
        "kernel_shape": [kh, kw],
        "strides": [int(rng.integers(1, 3)), int(rng.integers(1, 3))],
        "group": group,
    }
    if rng.random() < 0.3:
        attrs["auto_pad"] = str(rng.choice(["SAME_UPPER", "SAME_LOWER", "VALID"]))
    else:
        attrs["pads"] = [int(v) for v in rng.integers(0, 3, size=4)]
        attrs["dilations"] = [int(rng.integers(1, 3)), int(rng.integers(1, 3))]
    h, w = int(rng.integers(kh * 2, 10)), int(rng.integers(kw * 2, 10))
    x_dtype = np.dtype(rng.choice(["uint8", "int8"]))
    w_dtype = np.dtype("int8") if x_dtype == np.int8 else np.dtype(rng.choice(["uint8", "int8"]))
    return dict(
        x_shape=(int(rng.integers(1, 3)), cin, h, w),
        w_shape=(cout, cin // group, kh, kw),
        attrs=attrs,
        x_dtype=x_dtype,
        w_dtype=w_dtype,
        per_channel=bool(rng.random() < 0.5),
    )


def _codes(rng, dtype, shape):
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, size=shape).astype(dtype)


def _conv_problem(rng, case):
    x = _codes(rng, case["x_dtype"], case["x_shape"])
    wq = _codes(rng, case["w_dtype"], case["w_shape"])
    cout = case["w_shape"][0]
    x_scale, y_scale = np.float32(rng.uniform(0.005, 0.05)), np.float32(rng.uniform(0.02, 0.3))
    n_w = cout if case["per_channel"] else 1
    w_scale = rng.uniform(0.002, 0.02, size=n_w).astype(np.float32)
    info_x = np.iinfo(case["x_dtype"])
    x_zp = int(rng.integers(info_x.min, info_x.max + 1))
    y_zp = int(rng.integers(info_x.min, info_x.max + 1))
    w_zp = 0 if case["w_dtype"] == np.int8 else int(rng.integers(100, 156))
    bias_q = rng.integers(-20000, 20000, size=cout).astype(np.int32)
    return x, wq, x_scale, x_zp, w_scale, w_zp, y_scale, y_zp, bias_q


def _binding(op, attrs, inputs, x_enc, w_float, w_enc, b_float, y_enc, profile, fused=(), fused_constants=()):
    node = Node(0, op.lower(), op, "", tuple(inputs), ("y",), attrs)
    consts = [None, w_float, b_float][: len(inputs)]
    return Binding(
        node=node,
        input_encodings=[x_enc, None, None][: len(inputs)],
        output_encodings=[y_enc],
        constants=consts,
        param_encodings=[None, w_enc, None][: len(inputs)],
        input_shapes=[None] * len(inputs),
        profile=profile,
        fused=fused,
        fused_constants=fused_constants,
    )


def _u8_case(x_shape, w_shape, per_channel: bool, group: int = 1, stride: int = 1) -> dict:
    """A uint8-input, int8-weight 3x3 'same' Conv case for ``_conv_problem``."""
    attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [stride] * 2, "group": group}
    return dict(
        x_shape=x_shape,
        w_shape=w_shape,
        attrs=attrs,
        x_dtype=np.dtype("uint8"),
        w_dtype=np.dtype("int8"),
        per_channel=per_channel,
    )


def _prepared_conv(case, problem, profile=ONNX):
    _, wq, x_scale, x_zp, w_scale, w_zp, y_scale, y_zp, bias_q = problem
    cout = wq.shape[0]
    w_scale_c = np.broadcast_to(w_scale, (cout,)).astype(np.float64)
    w_float = ((wq.astype(np.float32) - w_zp) * w_scale_c.astype(np.float32)[:, None, None, None]).astype(
        np.float32
    )
    b_float = (bias_q * (np.float64(x_scale) * w_scale_c)).astype(np.float32)
    w_enc = _enc(
        "w",
        w_scale,
        np.full(w_scale.size, w_zp),
        case["w_dtype"],
        axis=0 if w_scale.size > 1 else None,
        param=True,
    )
    b = _binding(
        "Conv",
        case["attrs"],
        ("x", "w", "b"),
        _enc("x", x_scale, x_zp, case["x_dtype"]),
        w_float,
        w_enc,
        b_float,
        _enc("y", y_scale, y_zp, case["x_dtype"]),
        profile,
    )
    return Conv.prepare(b)


@pytest.mark.parametrize("seed", range(40))
def test_conv_onnx_profile_equals_ort_qlinearconv(seed):
    rng = np.random.default_rng(seed)
    case = _random_conv_case(rng)
    problem = _conv_problem(rng, case)
    x, wq, x_scale, x_zp, w_scale, w_zp, y_scale, y_zp, bias_q = problem
    xd, wd = case["x_dtype"], case["w_dtype"]
    inits = {
        "xs": np.array(x_scale, np.float32),
        "xz": np.array(x_zp, xd),
        "w": wq,
        "ws": w_scale,
        "wz": np.full(w_scale.shape, w_zp, wd),
        "ys": np.array(y_scale, np.float32),
        "yz": np.array(y_zp, xd),
        "b": bias_q,
    }
    node = helper.make_node(
        "QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"], **case["attrs"]
    )
    expected = _run_ort([node], inits, {"x": x})
    got = Conv.run(_prepared_conv(case, problem), x.astype(np.int64))
    np.testing.assert_array_equal(got, expected.astype(np.int64))


@pytest.mark.parametrize("seed", range(12))
def test_conv_accumulation_equals_ort_conv_integer_and_loop(seed):
    rng = np.random.default_rng(100 + seed)
    case = _random_conv_case(rng)
    case["x_dtype"], case["w_dtype"] = np.dtype("uint8"), np.dtype("uint8")
    case["per_channel"] = False
    attrs = case["attrs"]
    attrs.pop("auto_pad", None)
    attrs.setdefault("pads", [1, 0, 2, 1])
    problem = _conv_problem(rng, case)
    x, wq, _, x_zp, _, w_zp, *_ = problem
    node = helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], **attrs)
    expected = _run_ort(
        [node], {"w": wq, "xz": np.array(x_zp, np.uint8), "wz": np.array(w_zp, np.uint8)}, {"x": x}
    )
    got = conv_accumulate(_prepared_conv(case, problem), x.astype(np.int64))
    np.testing.assert_array_equal(got.astype(np.int64), expected)
    np.testing.assert_array_equal(got.astype(np.int64), _loop_acc(case, problem, x))


def test_float64_path_for_large_bounds_matches_loop():
    rng = np.random.default_rng(7)
    case = _u8_case((1, 300, 3, 3), (2, 300, 3, 3), per_channel=True)
    problem = _conv_problem(rng, case)
    x, wq, _, x_zp, *_ = problem
    params = _prepared_conv(case, problem)
    assert params.dtype is np.float64  # 255 * 2700 * 128 > 2^24: float32 would not be exact
    got = conv_accumulate(params, x.astype(np.int64)).astype(np.int64)
    np.testing.assert_array_equal(
        got, conv_acc_loop(x, x_zp, wq.astype(np.int64), (1, 1), (1, 1), (1, 1, 1, 1), 1)
    )


@pytest.mark.parametrize("seed", range(6))
def test_conv_transpose_matches_loop(seed):
    rng = np.random.default_rng(200 + seed)
    group = int(rng.integers(1, 3))
    c, mg, k, s = 2 * group, int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.integers(1, 3))
    pads = tuple(int(v) for v in rng.integers(0, k, size=4)) if k > 1 else (0, 0, 0, 0)
    x = _codes(rng, np.uint8, (2, c, 4, 5))
    wq = _codes(rng, np.int8, (c, mg, k, k))
    x_enc, y_enc = _enc("x", 0.02, 117, np.dtype("uint8")), _enc("y", 0.5, 128, np.dtype("uint8"))
    w_enc = _enc("w", 0.01, 0, np.dtype("int8"), param=True)
    attrs = {"kernel_shape": [k, k], "strides": [s, s], "pads": list(pads), "group": group}
    b = _binding(
        "ConvTranspose",
        attrs,
        ("x", "w"),
        x_enc,
        wq.astype(np.float32) * np.float32(0.01),
        w_enc,
        None,
        y_enc,
        ONNX,
    )
    params = ConvTranspose.prepare(b)
    got = ConvTranspose.run(params, x.astype(np.int64))
    acc = conv_transpose_acc_loop(x, 117, wq.astype(np.int64), (s, s), pads, group)
    np.testing.assert_array_equal(got, params.epilogue(acc, axis=1))


def _matmul_problem(rng, a_dtype, b_dtype, per_channel):
    m, k, n = (int(v) for v in rng.integers(1, 40, size=3))
    a = _codes(rng, a_dtype, (2, m, k))
    bq = _codes(rng, b_dtype, (k, n))
    a_scale, y_scale = np.float32(rng.uniform(0.01, 0.05)), np.float32(rng.uniform(0.05, 0.5))
    b_scale = rng.uniform(0.002, 0.02, size=n if per_channel else 1).astype(np.float32)
    ia = np.iinfo(a_dtype)
    a_zp, y_zp = int(rng.integers(ia.min, ia.max + 1)), int(rng.integers(ia.min, ia.max + 1))
    b_zp = 0 if b_dtype == np.int8 else int(rng.integers(100, 156))
    return a, bq, a_scale, a_zp, b_scale, b_zp, y_scale, y_zp


@pytest.mark.parametrize("seed", range(12))
def test_matmul_onnx_profile_equals_ort_qlinearmatmul(seed):
    rng = np.random.default_rng(300 + seed)
    a_dtype = np.dtype(["uint8", "int8"][seed % 2])
    b_dtype = np.dtype("int8") if a_dtype == np.int8 else np.dtype(["uint8", "int8"][(seed // 2) % 2])
    per_channel = seed % 3 == 0
    a, bq, a_scale, a_zp, b_scale, b_zp, y_scale, y_zp = _matmul_problem(rng, a_dtype, b_dtype, per_channel)
    inits = {
        "as": np.array(a_scale),
        "az": np.array(a_zp, a_dtype),
        "b": bq,
        "bs": b_scale,
        "bz": np.full(b_scale.shape, b_zp, b_dtype),
        "ys": np.array(y_scale),
        "yz": np.array(y_zp, a_dtype),
    }
    node = helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"])
    expected = _run_ort([node], inits, {"a": a})
    b_float = ((bq.astype(np.float32) - b_zp) * b_scale[None, :]).astype(np.float32)
    b_enc = _enc(
        "b", b_scale, np.full(b_scale.size, b_zp), b_dtype, axis=1 if per_channel else None, param=True
    )
    binding = _binding(
        "MatMul",
        {},
        ("a", "b"),
        _enc("a", a_scale, a_zp, a_dtype),
        b_float,
        b_enc,
        None,
        _enc("y", y_scale, y_zp, a_dtype),
        ONNX,
    )
    got = MatMul.run(MatMul.prepare(binding), a.astype(np.int64))
    np.testing.assert_array_equal(got, expected.astype(np.int64))


def _gemmlowp_requant(acc: int, real_multiplier: float, z_out: int) -> int:
    """TFLite default build written with Python ints: QuantizeMultiplier, SRDHM (C division), RDBYPOT."""
    import math

    q, shift = math.frexp(real_multiplier)
    qm = math.floor(q * 2**31 + 0.5)
    if qm == 2**31:
        qm, shift = qm // 2, shift + 1
    x = acc * 2 ** max(shift, 0)
    ab = x * qm
    nudge = 2**30 if ab >= 0 else 1 - 2**30
    num = ab + nudge
    high = abs(num) // 2**31 * (1 if num >= 0 else -1)  # C division truncates toward zero
    right = max(-shift, 0)
    mask = (1 << right) - 1
    rem, threshold = high & mask, (mask >> 1) + (1 if high < 0 else 0)
    return min(127, max(-128, (high >> right) + (1 if rem > threshold else 0) + z_out))


@pytest.mark.parametrize("seed", range(4))
def test_tflite_profile_equals_gemmlowp_on_matmul_integer(seed):
    rng = np.random.default_rng(400 + seed)
    a, bq, a_scale, a_zp, b_scale, _, y_scale, y_zp = _matmul_problem(
        rng, np.dtype("uint8"), np.dtype("uint8"), False
    )
    y_zp = int(rng.integers(-128, 128))
    node = helper.make_node("MatMulInteger", ["a", "b", "az", "bz"], ["y"])
    acc = _run_ort([node], {"b": bq, "az": np.array(a_zp, np.uint8), "bz": np.array(0, np.uint8)}, {"a": a})
    b_float = (bq.astype(np.float32) * b_scale[0]).astype(np.float32)
    b_enc = _enc("b", b_scale, 0, np.dtype("uint8"), param=True)
    binding = _binding(
        "MatMul",
        {},
        ("a", "b"),
        _enc("a", a_scale, a_zp, np.dtype("uint8")),
        b_float,
        b_enc,
        None,
        _enc("y", y_scale, y_zp, np.dtype("int8")),
        TFLITE,
    )
    got = MatMul.run(MatMul.prepare(binding), a.astype(np.int64))
    m = float(np.float64(a_scale) * np.float64(b_scale[0]) / np.float64(y_scale))
    expected = np.vectorize(lambda v: _gemmlowp_requant(int(v), m, y_zp))(acc)
    np.testing.assert_array_equal(got, expected)


def test_fused_relu_and_clip_are_integer_clamps():
    rng = np.random.default_rng(9)
    case = dict(
        x_shape=(1, 3, 6, 6),
        w_shape=(4, 3, 3, 3),
        attrs={"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
        x_dtype=np.dtype("uint8"),
        w_dtype=np.dtype("int8"),
        per_channel=False,
    )
    problem = _conv_problem(rng, case)
    x = problem[0].astype(np.int64)
    plain = Conv.run(_prepared_conv(case, problem), x)
    y_scale, y_zp = float(problem[6]), problem[7]
    clip = Node(1, "clip", "Clip", "", ("y", "lo", "hi"), ("z",), {})
    b = _prepared_conv(
        case, problem
    )  # reuse the weights of the plain conv, add the fused Clip(0, 6*s) binding
    x_enc, y_enc = (
        _enc("x", problem[2], problem[3], case["x_dtype"]),
        _enc("y", y_scale, y_zp, case["x_dtype"]),
    )
    cout = case["w_shape"][0]
    w_float = (problem[1].astype(np.float32) * problem[4][0]).astype(np.float32)
    b_float = (problem[8] * (np.float64(problem[2]) * np.float64(problem[4][0]))).astype(np.float32)
    binding = _binding(
        "Conv",
        case["attrs"],
        ("x", "w", "b"),
        x_enc,
        w_float,
        _enc("w", problem[4], 0, case["w_dtype"], param=True),
        b_float,
        y_enc,
        ONNX,
        fused=(clip,),
        fused_constants=([None, np.float32(0.0), np.float32(6 * y_scale)],),
    )
    fused = Conv.run(Conv.prepare(binding), x)
    assert b.epilogue.bias.size == cout
    np.testing.assert_array_equal(fused, np.clip(plain, y_zp, y_zp + 6))


# ---- the onnxruntime fast path (engines/emulator/accumulate.py) against the oracles --------------------
HTP = load_profile("htp")


def _loop_acc(case, problem, x):
    """The plain-loop accumulator for a case with explicit pads."""
    _, wq, _, x_zp, _, w_zp, *_ = problem
    attrs = case["attrs"]
    return conv_acc_loop(
        x,
        x_zp,
        wq.astype(np.int64) - w_zp,
        attrs["strides"],
        attrs.get("dilations", [1, 1]),
        attrs["pads"],
        attrs["group"],
    )


@pytest.mark.parametrize("seed", range(16))
@pytest.mark.parametrize("profile", [ONNX, HTP, TFLITE], ids=lambda p: p.name)
def test_ort_conv_path_equals_loop_oracle(seed, profile):
    rng = np.random.default_rng(500 + seed)
    case = _random_conv_case(rng)
    case["attrs"].pop("auto_pad", None)
    case["attrs"].setdefault("pads", [int(v) for v in rng.integers(0, 3, size=4)])
    problem = _conv_problem(rng, case)
    x = problem[0].astype(np.int64)
    params = _prepared_conv(case, problem, profile)
    assert params.ort is not None
    # the session requantizes itself for ORT's float32 form and HTP's 8-bit q12_prescaled form
    assert params.ort.requantizes == (profile is ONNX or params.epilogue.requant.form == "q12_prescaled")
    acc = _loop_acc(case, problem, x)
    if not params.ort.requantizes:  # the session's raw accumulator is the exact integer sum
        np.testing.assert_array_equal(params.ort(x).astype(np.int64), acc)
    # the in-session requantization (onnx, htp) or the numpy epilogue (others) against the integer epilogue
    np.testing.assert_array_equal(Conv.run(params, x), params.epilogue(acc, axis=1))


@pytest.mark.parametrize("seed", range(8))
def test_ort_conv_path_auto_pad_equals_numpy_path(seed):
    rng = np.random.default_rng(600 + seed)
    case = _random_conv_case(rng)
    case["attrs"]["auto_pad"] = ["SAME_UPPER", "SAME_LOWER", "VALID"][seed % 3]
    case["attrs"].pop("pads", None)
    problem = _conv_problem(rng, case)
    x = problem[0].astype(np.int64)
    for profile in (ONNX, HTP):
        params = _prepared_conv(case, problem, profile)
        same_dilated = seed % 3 < 2 and max(case["attrs"].get("dilations", [1])) > 1
        assert (params.ort is None) == same_dilated  # onnxruntime refuses SAME with dilations
        np.testing.assert_array_equal(
            Conv.run(params, x), params.epilogue(conv_accumulate(params, x), axis=1)
        )


def test_ort_conv_path_1d_equals_loop_oracle():
    rng = np.random.default_rng(13)
    x = _codes(rng, np.uint8, (2, 3, 10))
    wq = _codes(rng, np.int8, (4, 3, 3))
    attrs = {"kernel_shape": [3], "pads": [1, 2], "strides": [2]}
    for profile in (ONNX, HTP):
        binding = _binding(
            "Conv",
            attrs,
            ("x", "w"),
            _enc("x", 0.02, 120, np.dtype("uint8")),
            (wq.astype(np.float32) * np.float32(0.01)).astype(np.float32),
            _enc("w", 0.01, 0, np.dtype("int8"), param=True),
            None,
            _enc("y", 0.3, 128, np.dtype("uint8")),
            profile,
        )
        params = Conv.prepare(binding)
        assert params.ort is not None
        acc = conv_acc_loop(
            x[:, :, None, :], 120, wq[:, :, None, :].astype(np.int64), (1, 2), (1, 1), (0, 1, 0, 2), 1
        )
        np.testing.assert_array_equal(
            Conv.run(params, x.astype(np.int64)), params.epilogue(acc, axis=1)[:, :, 0]
        )


def test_ort_conv_path_chunks_the_batch_exactly(monkeypatch):
    from qdiverge.engines.emulator import accumulate

    rng = np.random.default_rng(11)
    case = _u8_case((5, 4, 9, 7), (6, 4, 3, 3), per_channel=True)
    problem = _conv_problem(rng, case)
    x = problem[0].astype(np.int64)
    for profile in (ONNX, HTP):
        whole = Conv.run(_prepared_conv(case, problem, profile), x)
        monkeypatch.setattr(accumulate, "_CHUNK_ELEMENTS", 6 * 9 * 7 * 2)  # two batch items per call
        params = _prepared_conv(case, problem, profile)
        Conv.run(params, x[:1])  # learns the output size per item
        np.testing.assert_array_equal(Conv.run(params, x), whole)
        np.testing.assert_array_equal(whole, params.epilogue(_loop_acc(case, problem, x), axis=1))
        monkeypatch.undo()


@pytest.mark.parametrize("y_zp", [0, 90, 255])
def test_ort_conv_path_fused_relu_at_any_zero_point(y_zp):
    rng = np.random.default_rng(12)
    case = _u8_case((2, 3, 6, 6), (4, 3, 3, 3), per_channel=False)
    x, wq, x_scale, x_zp, w_scale, _, y_scale, _, bias_q = _conv_problem(rng, case)
    relu = Node(1, "relu", "Relu", "", ("y",), ("z",), {})
    binding = _binding(
        "Conv",
        case["attrs"],
        ("x", "w", "b"),
        _enc("x", x_scale, x_zp, case["x_dtype"]),
        (wq.astype(np.float32) * w_scale[0]).astype(np.float32),
        _enc("w", w_scale, 0, case["w_dtype"], param=True),
        (bias_q * (np.float64(x_scale) * np.float64(w_scale[0]))).astype(np.float32),
        _enc("y", y_scale, y_zp, case["x_dtype"]),
        ONNX,
        fused=(relu,),
        fused_constants=([None],),
    )
    params = Conv.prepare(binding)
    assert params.ort is not None and params.ort.requantizes
    acc = conv_acc_loop(x, x_zp, wq.astype(np.int64), (1, 1), (1, 1), (1, 1, 1, 1), 1)
    expected = params.epilogue(acc, axis=1)
    np.testing.assert_array_equal(Conv.run(params, x.astype(np.int64)), expected)
    assert expected.min() == max(y_zp, 0)  # the clamp is active


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("profile", [ONNX, HTP], ids=lambda p: p.name)
def test_ort_gemm_and_matmul_paths_equal_int64_oracle(seed, profile):
    from qdiverge.engines.emulator.kernels.matmul import Gemm

    rng = np.random.default_rng(700 + seed)
    a, bq, a_scale, a_zp, b_scale, _, y_scale, y_zp = _matmul_problem(rng, np.uint8, np.int8, seed % 2 == 0)
    a2 = a[0]  # (M, K)
    b_float = (bq.astype(np.float32) * b_scale[None, :]).astype(np.float32)
    per_channel = b_scale.size > 1
    a_enc, y_enc = _enc("a", a_scale, a_zp, np.dtype("uint8")), _enc("y", y_scale, y_zp, np.dtype("uint8"))
    trans_a = seed % 3 == 0
    bias = rng.normal(0, 0.5, size=bq.shape[1]).astype(np.float32)
    gemm = Gemm.prepare(
        _binding(
            "Gemm",
            {"transA": int(trans_a)},
            ("a", "w", "b"),
            a_enc,
            b_float,
            _enc("w", b_scale, 0, np.dtype("int8"), axis=1 if per_channel else None, param=True),
            bias,
            y_enc,
            profile,
        )
    )
    matmul = MatMul.prepare(
        _binding(
            "MatMul",
            {},
            ("a", "w"),
            a_enc,
            b_float,
            _enc("w", b_scale, 0, np.dtype("int8"), axis=1 if per_channel else None, param=True),
            None,
            y_enc,
            profile,
        )
    )
    assert gemm.ort is not None and matmul.ort is not None
    acc = (a2.astype(np.int64) - a_zp) @ bq.astype(np.int64)  # exact in int64
    a_in = np.ascontiguousarray(a2.T) if trans_a else a2
    np.testing.assert_array_equal(Gemm.run(gemm, a_in.astype(np.int64)), gemm.epilogue(acc, axis=-1))
    acc3 = (a.astype(np.int64) - a_zp) @ bq.astype(np.int64)
    np.testing.assert_array_equal(MatMul.run(matmul, a.astype(np.int64)), matmul.epilogue(acc3, axis=-1))


@pytest.mark.parametrize("form", ["q31", "q31_unnormalized"])
def test_apply_requant_in_place_equals_python_ints(form):
    from qdiverge.engines.emulator.requant import apply_requant, prepare_requant
    from qdiverge.profiles.schema import RequantSpec

    rng = np.random.default_rng(14)
    # per channel: powers of two make exact ties (x / 4 at x = 2 mod 4), > 1 makes left shifts (unnormalized)
    m = np.array([0.25, 0.125, 1 / 16, rng.uniform(0.01, 0.3), 1.5])
    params = prepare_requant(m, RequantSpec(multiplier=form, rounding="half_up"), 7)
    acc = rng.integers(-500, 500, size=(2, 5, 3, 4))  # mostly inside the clamp
    mult, left, right = (
        np.broadcast_to(v, 5) for v in (params.multiplier, params.left_shift, params.right_shift)
    )

    def one(v: int, c: int) -> int:  # floor((v * 2^left * qm + 2^(right - 1)) / 2^right) + 7, clamped
        wrapped = (int(v) << int(left[c])) & 0xFFFFFFFF
        wrapped -= (wrapped >> 31) << 32  # int32 wrap of the left shift
        prod, shift = wrapped * int(mult[c]), int(right[c])
        return min(127, max(-128, ((prod + (1 << shift >> 1)) >> shift) + 7))

    expected = np.array(
        [[[[one(v, c) for v in row] for row in plane] for c, plane in enumerate(img)] for img in acc]
    )
    kept = acc.copy()
    np.testing.assert_array_equal(apply_requant(acc, params, -128, 127), expected)
    np.testing.assert_array_equal(acc, kept)  # not overwritten by default
    np.testing.assert_array_equal(apply_requant(acc, params, -128, 127, overwrite=True), expected)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("profile", [HTP, ONNX], ids=lambda p: p.name)
def test_ort_conv_path_fused_hardswish_equals_numpy_epilogue(seed, profile):
    """The accumulator session's fused HardSwish (float64 ONNX ops) reproduces the numpy epilogue exactly."""
    rng = np.random.default_rng(700 + seed)
    group, stride = (4, 2) if seed % 2 else (1, 1)
    case = _u8_case(
        (3, 4, 7, 7), (4 if seed % 2 else 6, 1 if seed % 2 else 4, 3, 3), bool(seed % 3), group, stride
    )
    x, wq, x_scale, x_zp, w_scale, _, y_scale, y_zp, bias_q = _conv_problem(rng, case)
    w_scale_c = np.broadcast_to(w_scale, (wq.shape[0],)).astype(np.float64)
    hardswish = Node(1, "hs", "HardSwish", "", ("y",), ("z",), {})
    binding = _binding(
        "Conv",
        case["attrs"],
        ("x", "w", "b"),
        _enc("x", x_scale, x_zp, case["x_dtype"]),
        (wq.astype(np.float32) * w_scale_c.astype(np.float32)[:, None, None, None]).astype(np.float32),
        _enc("w", w_scale, 0, case["w_dtype"], axis=0 if w_scale.size > 1 else None, param=True),
        (bias_q * (np.float64(x_scale) * w_scale_c)).astype(np.float32),
        _enc("y", y_scale, y_zp, case["x_dtype"]),
        profile,
        fused=(hardswish,),
        fused_constants=([None],),
    )
    params = Conv.prepare(binding)
    # in the session when the activation rounds half to even (ONNX Round); else numpy finishes
    assert params.ort is not None and params.ort.requantizes == (params.epilogue.act_rounding == "half_even")
    acc = conv_acc_loop(x, x_zp, wq.astype(np.int64), (stride, stride), (1, 1), (1, 1, 1, 1), group)
    np.testing.assert_array_equal(Conv.run(params, x.astype(np.int64)), params.epilogue(acc, axis=1))


def _prescaled_epilogue(rng, channels: int, signed: bool, clamp: str, bias_bound: int) -> Epilogue:
    """An HTP ``q12_prescaled`` epilogue with random multipliers spanning ``g`` from -4 to 24."""
    lo, hi = (-128, 127) if signed else (0, 255)
    zp = int(rng.integers(lo, hi + 1))
    qmin, qmax = lo, hi
    if clamp == "relu":
        qmin = max(zp, lo)
    elif clamp == "clip":
        qmin, qmax = max(zp - 5, lo), min(zp + 40, hi)
    m = 10.0 ** rng.uniform(-7, 1.2, size=channels)
    bias = rng.integers(-bias_bound, bias_bound + 1, size=channels)
    return Epilogue(
        bias=bias,
        overflow="wrap",
        needs_int32=False,
        requant=prepare_requant(m, HTP.conv, zp, 8),
        qmin=qmin,
        qmax=qmax,
        acc_scale=np.ones(channels),
        activation=None,
        out_scale=1.0,
        out_zero_point=zp,
        act_rounding="half_even",
        float_exact=False,
        float32_sum=bias_bound < (1 << 23),
    )


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("clamp", ["none", "relu", "clip"])
@pytest.mark.parametrize("signed", [False, True])
def test_prescaled_session_tails_equal_integer_requant(seed, clamp, signed, jit):
    """The in-session ``q12_prescaled`` tails (float32 under 2^24, else float64) equal the integer epilogue on
    accumulators at every code boundary of each channel and out to +-2^23, through an identity conv."""
    rng = np.random.default_rng(900 + seed)
    channels = 12
    for bias_bound, tail in ((1 << 20, "QuantizeLinear"), (1 << 28, "Cast")):
        ep = _prescaled_epilogue(rng, channels, signed, clamp, bias_bound)
        m = ep.requant.multiplier * 2.0 ** -(15.0 + ep.requant.right_shift - ep.requant.left_shift)
        codes = np.arange(-300, 300)[:, None] + 0.5  # around every code boundary and past both ends
        near = np.rint(codes / m[None, :]) - ep.bias[None, :] + rng.integers(-2, 3, size=(codes.size, 1))
        wide = rng.integers(-(1 << 23), 1 << 23, size=(400, channels))
        acc = np.clip(np.concatenate([near, wide]), -(1 << 23), (1 << 23) - 1).astype(np.int64)
        x = acc.T.reshape(1, channels, -1, 1)  # acc[c] as channel c of an identity depthwise conv
        identity = np.ones((channels, 1, 1, 1), dtype=np.float32)
        ort_sum = conv_sum(
            {"kernel_shape": [1, 1], "group": channels}, identity, 0, (-(1 << 23), 1 << 23), ep
        )
        assert ort_sum.requantizes
        if jit and tail == "QuantizeLinear":
            assert ort_sum.tail is not None and ort_sum.tail.kind == "prescaled"
        else:
            assert tail in {n.op_type for n in ort_sum.model.graph.node}
        np.testing.assert_array_equal(ort_sum(x).astype(np.int64), ep(x.copy(), axis=1))


@pytest.mark.parametrize("dyadic", [False, True])
@pytest.mark.parametrize("act_dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_fused_hardswish_session_tail_equals_numpy_epilogue(act_dtype, dyadic, jit):
    """The session's fused HardSwish (in ``act_dtype``) equals the numpy epilogue on 10^5 accumulators per
    channel over the whole activation range; dyadic scales put many values exactly on rounding ties."""
    rng = np.random.default_rng(31 + dyadic)
    channels = 8
    out_scale = 2.0**-5 if dyadic else float(rng.uniform(0.01, 0.05))
    acc_scale = 2.0 ** -rng.integers(8, 14, size=channels) if dyadic else 10 ** rng.uniform(-4, -2, channels)
    bias = rng.integers(-5000, 5000, size=channels)
    ep = Epilogue(
        bias=bias,
        overflow="wrap",
        needs_int32=False,
        requant=prepare_requant(acc_scale / out_scale, HTP.conv, 3, 8),
        qmin=0,
        qmax=255,
        acc_scale=acc_scale,
        activation=lambda v: v * np.clip(v + 3.0, 0.0, 6.0) / 6.0,
        out_scale=out_scale,
        out_zero_point=3,
        act_rounding="half_even",
        float_exact=False,
        activation_op="HardSwish",
        float32_sum=True,
        act_dtype=act_dtype,
    )
    reach = np.ceil(10.0 / acc_scale).astype(np.int64)  # real values out to +-10 in every channel
    acc = np.stack([rng.integers(-r, r, size=100_000) - b for r, b in zip(reach, bias, strict=True)])
    x = acc.reshape(1, channels, -1, 1)
    identity = np.ones((channels, 1, 1, 1), dtype=np.float32)
    ort_sum = conv_sum({"kernel_shape": [1, 1], "group": channels}, identity, 0, (-(1 << 23), 1 << 23), ep)
    assert ort_sum.requantizes
    if jit:  # the compiled tail's arithmetic is checked in test_compiled.py; here the codes
        np.testing.assert_array_equal(ort_sum(x).astype(np.int64), ep(x.copy(), axis=1))
        return
    probe = onnx.ModelProto()  # the session's graph with the unrounded q as an output too
    probe.CopyFrom(ort_sum.model)
    want = ep(x.copy(), axis=1)
    assert len(np.unique(want)) > 200  # the whole output range is exercised
    np.testing.assert_array_equal(ort_sum(x).astype(np.int64), want)
    # codes differ only where a 1-ulp difference crosses a tie (rare); the unrounded q must be bit-identical
    probe.graph.output.append(
        helper.make_tensor_value_info("q", helper.np_dtype_to_tensor_dtype(np.dtype(act_dtype)), None)
    )
    q = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["q"], {"xq": x.astype(np.int32), **ort_sum.feeds}
    )[0]
    real = (x + bias[None, :, None, None]).astype(act_dtype) * acc_scale.astype(act_dtype)[
        None, :, None, None
    ]
    np.testing.assert_array_equal(q, ep.activation(real) / act_dtype(out_scale))
