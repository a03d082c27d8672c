"""Data-movement kernels against the ONNX reference evaluator run on the codes themselves; Concat against
ONNX Runtime's QLinearConcat (table scheme), exact rational rescaling, and Hexagon NN's scaled copy."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
from kernel_harness import (
    ORT_PROFILE,
    SINGLE_PROFILE,
    bind,
    enc,
    ort_run,
    q31,
    qparams,
    round_fraction,
    run_kernel,
    s_z,
)
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from qdiverge.profiles.schema import Profile

X = np.random.default_rng(3).integers(-128, 128, (2, 3, 4, 5)).astype(np.int64)
E = enc(0.1, 3, signed=True)


def reference(op: str, inputs: list[np.ndarray], attrs: dict, n_out: int = 1) -> list[np.ndarray]:
    """ONNX's own reference implementation of ``op`` (opset 18), evaluated on int64 codes."""
    names = [f"i{k}" if a is not None else "" for k, a in enumerate(inputs)]
    outs = [f"o{k}" for k in range(n_out)]
    node = helper.make_node(op, names, outs, **attrs)
    vi = [helper.make_tensor_value_info(n, TensorProto.INT64, None) for n in names if n]
    graph = helper.make_graph(
        [node], "g", vi, [helper.make_tensor_value_info(o, TensorProto.INT64, None) for o in outs]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    feeds = {n: a for n, a in zip(names, inputs, strict=True) if n}
    return ReferenceEvaluator(model).run(None, feeds)


def emulate(op: str, inputs: list[np.ndarray | None], attrs: dict, const: bool, n_out: int = 1):
    """Run the kernel with index inputs either as constants (prepare time) or as run-time arrays."""
    n = len(inputs)
    constants = [None] + [a if const else None for a in inputs[1:]]
    b = bind(
        op,
        [E] + [None] * (n - 1),
        [E] * n_out,
        SINGLE_PROFILE,
        attrs,
        constants=constants,
        shapes=[X.shape] + [None] * (n - 1),
        n_outputs=n_out,
    )
    return run_kernel(b, *inputs)


i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731

CASES = [
    ("Reshape", [X, i64(0, -1, 5)], {}),
    ("Reshape", [X, i64(2, 0, -1)], {}),
    ("Flatten", [X], {"axis": 2}),
    ("Transpose", [X], {"perm": [2, 0, 3, 1]}),
    ("Transpose", [X], {}),
    ("Squeeze", [X[:, :1], i64(1)], {}),
    ("Unsqueeze", [X, i64(0, -1)], {}),
    ("Slice", [X, i64(1, -1), i64(4, -6), i64(1, 3), i64(1, -2)], {}),
    ("Slice", [X, i64(-100), i64(100), i64(-1)], {}),
    ("Gather", [X, np.array([[2, -1], [0, 0]], dtype=np.int64)], {"axis": 2}),
    ("Identity", [X], {}),
    ("Pad", [X, i64(0, 1, 2, 0, 0, 2, 1, 1)], {"mode": "edge"}),
    ("Pad", [X, i64(0, 0, 2, 3, 0, 0, 1, 3)], {"mode": "reflect"}),
]


@pytest.mark.parametrize("const", [True, False])
@pytest.mark.parametrize("op, inputs, attrs", CASES)
def test_structural_ops_equal_onnx_reference_on_codes(op, inputs, attrs, const):
    got = emulate(op, inputs, attrs, const)
    assert np.array_equal(got, reference(op, inputs, attrs)[0])


def test_split_equal_parts_and_explicit_sizes():
    for inputs, attrs, n in (([X], {"axis": 3, "num_outputs": 3}, 3), ([X, i64(1, 3)], {"axis": 2}, 2)):
        got = emulate("Split", inputs, attrs, True, n)
        for g, w in zip(got, reference("Split", inputs, attrs, n), strict=True):
            assert np.array_equal(g, w)


def test_negative_pads_crop():
    pads = i64(0, 1, -1, 0, 0, 0, 2, -2)
    got = emulate("Pad", [X, pads], {"mode": "edge"}, True)
    grown = reference("Pad", [X, i64(0, 1, 0, 0, 0, 0, 2, 0)], {"mode": "edge"})[0]
    assert np.array_equal(got, grown[:, :, 1:, :-2])


@pytest.mark.parametrize("value", [0.0, 0.73, -50.0])
def test_constant_pad_uses_the_code_of_the_pad_value(value):
    pads = i64(0, 0, 1, 2, 0, 0, 2, 1)
    b = bind(
        "Pad",
        [E, None, None],
        [E],
        SINGLE_PROFILE,
        {"mode": "constant"},
        constants=[None, pads, np.array(value, np.float32)],
    )
    got = run_kernel(b, X)
    s, z = s_z(E)
    code = min(max(z + round_fraction(Fraction(float(np.float32(value))) / s, "half_up"), -128), 127)
    want = reference("Pad", [X, pads, i64(code)], {"mode": "constant"})[0]
    assert np.array_equal(got, want)


def test_data_movement_rescales_only_to_a_different_declared_output_encoding():
    e_out = enc(0.13, -20, signed=True)
    b = bind("Transpose", [E], [e_out], SINGLE_PROFILE, {"perm": [3, 2, 1, 0]})
    got = run_kernel(b, X)
    (s, z), (so, zo) = s_z(E), s_z(e_out)
    qm, sh = q31(float(s) / float(so), cap_shift=True)
    rq = np.vectorize(lambda q: round_fraction(Fraction((int(q) - z) * qm, 1 << (31 - sh)), "half_up") + zo)
    assert np.array_equal(got, np.clip(rq(X.T), -128, 127))
    assert np.array_equal(run_kernel(bind("Transpose", [E], [None], SINGLE_PROFILE, {}), X), X.T)


def _concat_inputs():
    e1, e2, e_out = enc(0.05, 100), enc(0.021, 3), enc(0.06, 90)
    a = np.arange(256).reshape(1, 256, 1)
    b = np.random.default_rng(4).integers(0, 256, (1, 7, 1))
    return e1, e2, e_out, a, b


def test_concat_lut_method_equals_ort_qlinearconcat():
    e1, e2, e_out, a, b = _concat_inputs()
    want = ort_run(
        "QLinearConcat",
        [
            *qparams("Y", e_out),
            ("A", a.astype(np.uint8)),
            *qparams("A", e1),
            ("B", b.astype(np.uint8)),
            *qparams("B", e2),
        ],
        {"axis": 1},
    )[0]
    got = run_kernel(bind("Concat", [e1, e2], [e_out], ORT_PROFILE, {"axis": 1}), a, b)
    assert np.array_equal(got, want.astype(np.int64))


def test_concat_requant_equals_exact_q31_rescale_and_copies_shared_encodings():
    e1, _, e_out, a, _ = _concat_inputs()
    c = np.arange(256).reshape(1, 256, 1)
    got = run_kernel(bind("Concat", [e1, e_out], [e_out], SINGLE_PROFILE, {"axis": -1}), a, c)
    (s1, z1), (so, zo) = s_z(e1), s_z(e_out)
    qm, shift = q31(float(s1) / float(so), cap_shift=True)
    want = [
        min(max(round_fraction(Fraction((q - z1) * qm, 1 << (31 - shift)), "half_up") + zo, 0), 255)
        for q in range(256)
    ]
    assert got[0, :, 0].tolist() == want
    assert np.array_equal(got[0, :, 1], c.ravel())


def test_concat_hexagon_nn_scaled_copy_is_biased_down_within_one_lsb():
    e1, _, e_out, a, _ = _concat_inputs()
    got = run_kernel(
        bind("Concat", [e1], [e_out], Profile(name="h", concat_method="hexagon_nn"), {"axis": 1}), a
    )
    (s1, z1), (so, zo) = s_z(e1), s_z(e_out)
    exact = np.array(
        [min(max(round_fraction(s1 * (q - z1) / so, "half_even") + zo, 0), 255) for q in range(256)]
    )
    diff = got.ravel() - exact
    assert set(np.unique(diff)) <= {-1, 0} and np.count_nonzero(diff) > 0  # §4.6: 18/256 codes, all downward


# ---------------------------------------------------------------------------------------------- Resize

XR = np.random.default_rng(6).integers(0, 256, (1, 2, 6, 7))
ER = enc(0.05, 17)


def _resize_model(attrs: dict, scales: np.ndarray | None, sizes: np.ndarray | None) -> np.ndarray:
    from onnxruntime import InferenceSession

    inits, names = [], ["X", ""]
    for name, arr in (("scales", scales), ("sizes", sizes)):
        names.append(name if arr is not None else "")
        if arr is not None:
            inits.append(
                helper.make_tensor(
                    name,
                    TensorProto.FLOAT if name == "scales" else TensorProto.INT64,
                    arr.shape,
                    arr.ravel().tolist(),
                )
            )
    node = helper.make_node("Resize", names, ["Y"], **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.UINT8, XR.shape)],
        [helper.make_tensor_value_info("Y", TensorProto.UINT8, None)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    sess = InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": XR.astype(np.uint8)})[0].astype(np.int64)


def _resize(attrs: dict, scales, sizes, profile=SINGLE_PROFILE, e_out=ER) -> np.ndarray:
    b = bind(
        "Resize",
        [ER, None, None, None],
        [e_out],
        profile,
        attrs,
        constants=[None, None, scales, sizes],
        shapes=[XR.shape, None, None, None],
    )
    return run_kernel(b, XR)


RESIZE_SIZES = [
    (np.array([1, 1, 2, 2], np.float32), None),
    (np.array([1, 1, 0.5, 0.5], np.float32), None),
    (None, np.array([1, 2, 10, 4], np.int64)),
]


@pytest.mark.parametrize("scales, sizes", RESIZE_SIZES)
@pytest.mark.parametrize(
    "ctm", ["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "half_pixel_symmetric"]
)
@pytest.mark.parametrize("nearest", ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"])
def test_resize_nearest_equals_onnxruntime_on_codes(scales, sizes, ctm, nearest):
    attrs = {"mode": "nearest", "coordinate_transformation_mode": ctm, "nearest_mode": nearest}
    assert np.array_equal(_resize(attrs, scales, sizes), _resize_model(attrs, scales, sizes))


def _tflite_bilinear(x: np.ndarray, out_h: int, out_w: int, half: bool, align: bool) -> np.ndarray:
    """TFLite ResizeBilinearInteger (single rounding), on NCHW codes, written out with Python ints."""
    n, c, h, w = x.shape

    def scale10(i: int, o: int) -> int:
        return ((1 << 10) * (i - 1) + (o - 1) // 2) // (o - 1) if align else ((1 << 10) * i + o // 2) // o

    def interp(v: int, s: int, size: int) -> tuple[int, int, int]:
        src = v * s + s // 2 - (1 << 9) if half else v * s
        lo = max(int(src / 1024), 0)  # C division truncates toward zero
        hi = min(int((src + 1023) / 1024), size - 1)
        return src, lo, hi

    sh, sw = scale10(h, out_h), scale10(w, out_w)
    y = np.zeros((n, c, out_h, out_w), dtype=np.int64)
    for i, j in itertools.product(range(out_h), range(out_w)):
        iy, y0, y1 = interp(i, sh, h)
        ix, x0, x1 = interp(j, sw, w)
        dy, dx = iy - 1024 * y0, ix - 1024 * x0
        for a, b in itertools.product(range(n), range(c)):
            acc = (
                int(x[a, b, y0, x0]) * (1024 - dy) * (1024 - dx)
                + int(x[a, b, y1, x0]) * dy * (1024 - dx)
                + int(x[a, b, y0, x1]) * (1024 - dy) * dx
                + int(x[a, b, y1, x1]) * dy * dx
            )
            y[a, b, i, j] = (acc + (1 << 19)) >> 20
    return y


@pytest.mark.parametrize(
    "ctm, half, align",
    [("half_pixel", True, False), ("asymmetric", False, False), ("align_corners", False, True)],
)
@pytest.mark.parametrize("out_h, out_w", [(12, 14), (4, 5), (9, 7)])
def test_resize_bilinear_q10_equals_tflite_reference(ctm, half, align, out_h, out_w):
    attrs = {"mode": "linear", "coordinate_transformation_mode": ctm}
    got = _resize(attrs, None, np.array([1, 2, out_h, out_w], np.int64))
    assert np.array_equal(got, _tflite_bilinear(XR, out_h, out_w, half, align))


@pytest.mark.parametrize("ctm", ["half_pixel", "asymmetric", "align_corners", "half_pixel_symmetric"])
@pytest.mark.parametrize("scales, sizes", RESIZE_SIZES)
def test_resize_bilinear_exact_is_one_rounding_of_the_onnx_interpolation(ctm, scales, sizes):
    attrs = {"mode": "linear", "coordinate_transformation_mode": ctm}
    profile = Profile(name="exact", rescale=SINGLE_PROFILE.rescale, resize_method="exact")
    got = _resize(attrs, scales, sizes, profile)
    _, z = s_z(ER)
    h, w = XR.shape[2:]
    if sizes is not None:
        oh, ow = int(sizes[2]), int(sizes[3])
        sy, sx = Fraction(oh, h), Fraction(ow, w)
    else:
        sy = sx = Fraction(float(scales[2]))
        oh, ow = int(h * sy), int(w * sx)

    def coord(v: int, n_in: int, n_out: int, s: Fraction) -> Fraction:
        if ctm == "align_corners":
            c = Fraction(v * (n_in - 1), n_out - 1) if n_out > 1 else Fraction(0)
        elif ctm == "asymmetric":
            c = v / s
        else:
            c = (v + Fraction(1, 2)) / s - Fraction(1, 2)
            if ctm == "half_pixel_symmetric":
                c += Fraction(n_in, 2) * (1 - Fraction(n_out) / (s * n_in))
        return min(max(c, Fraction(0)), Fraction(n_in - 1))

    for i, j in itertools.product(range(oh), range(ow)):
        cy, cx = coord(i, h, oh, sy), coord(j, w, ow, sx)
        y0, x0 = int(cy), int(cx)
        y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
        fy, fx = cy - y0, cx - x0
        for a, b in itertools.product(range(1), range(2)):
            v = (
                (1 - fy) * (1 - fx) * (int(XR[a, b, y0, x0]) - z)
                + fy * (1 - fx) * (int(XR[a, b, y1, x0]) - z)
                + (1 - fy) * fx * (int(XR[a, b, y0, x1]) - z)
                + fy * fx * (int(XR[a, b, y1, x1]) - z)
            )
            assert got[a, b, i, j] == round_fraction(v, "half_up") + z, (i, j)
