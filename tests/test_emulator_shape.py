"""Data-movement kernels against the ONNX reference evaluator run on the codes themselves; Concat against
ONNX Runtime's QLinearConcat (table scheme), exact rational rescaling, and Hexagon NN's scaled copy."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from kernel_harness import ORT_PROFILE, SINGLE_PROFILE, bind, enc, ort_run, qparams, round_fraction, run_kernel, s_z
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from qdiverge.engines.emulator.fixed_point import quantize_multiplier
from qdiverge.profiles.schema import Profile

X = np.random.default_rng(3).integers(-128, 128, (2, 3, 4, 5)).astype(np.int64)
E = enc(0.1, 3, signed=True)


def reference(op: str, inputs: list[np.ndarray], attrs: dict, n_out: int = 1) -> list[np.ndarray]:
    """ONNX's own reference implementation of ``op`` (opset 18), evaluated on int64 codes."""
    names = [f"i{k}" if a is not None else "" for k, a in enumerate(inputs)]
    outs = [f"o{k}" for k in range(n_out)]
    node = helper.make_node(op, names, outs, **attrs)
    vi = [helper.make_tensor_value_info(n, TensorProto.INT64, None) for n in names if n]
    graph = helper.make_graph([node], "g", vi, [helper.make_tensor_value_info(o, TensorProto.INT64, None)
                                                for o in outs])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    feeds = {n: a for n, a in zip(names, inputs, strict=True) if n}
    return ReferenceEvaluator(model).run(None, feeds)


def emulate(op: str, inputs: list[np.ndarray | None], attrs: dict, const: bool, n_out: int = 1):
    """Run the kernel with index inputs either as constants (prepare time) or as run-time arrays."""
    n = len(inputs)
    constants = [None] + [a if const else None for a in inputs[1:]]
    b = bind(op, [E] + [None] * (n - 1), [E] * n_out, SINGLE_PROFILE, attrs, constants=constants,
             shapes=[X.shape] + [None] * (n - 1), n_outputs=n_out)  # fmt: skip
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
    b = bind("Pad", [E, None, None], [E], SINGLE_PROFILE, {"mode": "constant"},
             constants=[None, pads, np.array(value, np.float32)])  # fmt: skip
    got = run_kernel(b, X)
    s, z = s_z(E)
    code = min(max(z + round_fraction(Fraction(float(np.float32(value))) / s, "half_up"), -128), 127)
    want = reference("Pad", [X, pads, i64(code)], {"mode": "constant"})[0]
    assert np.array_equal(got, want)


def _concat_inputs():
    e1, e2, e_out = enc(0.05, 100), enc(0.021, 3), enc(0.06, 90)
    a = np.arange(256).reshape(1, 256, 1)
    b = np.random.default_rng(4).integers(0, 256, (1, 7, 1))
    return e1, e2, e_out, a, b


def test_concat_lut_method_equals_ort_qlinearconcat():
    e1, e2, e_out, a, b = _concat_inputs()
    want = ort_run("QLinearConcat", [*qparams("Y", e_out), ("A", a.astype(np.uint8)), *qparams("A", e1),
                                     ("B", b.astype(np.uint8)), *qparams("B", e2)], {"axis": 1})[0]  # fmt: skip
    got = run_kernel(bind("Concat", [e1, e2], [e_out], ORT_PROFILE, {"axis": 1}), a, b)
    assert np.array_equal(got, want.astype(np.int64))


def test_concat_requant_equals_exact_q31_rescale_and_copies_shared_encodings():
    e1, _, e_out, a, _ = _concat_inputs()
    c = np.arange(256).reshape(1, 256, 1)
    got = run_kernel(bind("Concat", [e1, e_out], [e_out], SINGLE_PROFILE, {"axis": -1}), a, c)
    (s1, z1), (so, zo) = s_z(e1), s_z(e_out)
    qm, shift = (int(v[0]) for v in quantize_multiplier(np.array([float(s1) / float(so)]), cap_shift=True))
    want = [min(max(round_fraction(Fraction((q - z1) * qm, 1 << (31 - shift)), "half_up") + zo, 0), 255)
            for q in range(256)]  # fmt: skip
    assert got[0, :, 0].tolist() == want
    assert np.array_equal(got[0, :, 1], c.ravel())


def test_concat_hexagon_nn_scaled_copy_is_biased_down_within_one_lsb():
    e1, _, e_out, a, _ = _concat_inputs()
    got = run_kernel(bind("Concat", [e1], [e_out], Profile(name="h", concat_method="hexagon_nn"), {"axis": 1}), a)
    (s1, z1), (so, zo) = s_z(e1), s_z(e_out)
    exact = np.array([min(max(round_fraction(s1 * (q - z1) / so, "half_even") + zo, 0), 255) for q in range(256)])
    diff = got.ravel() - exact
    assert set(np.unique(diff)) <= {-1, 0} and np.count_nonzero(diff) > 0  # §4.6: 18/256 codes, all downward
