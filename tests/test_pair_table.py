"""The 8-bit pair tables of the two-input kernels equal their arithmetic, input dtypes and broadcasting included."""

from __future__ import annotations

import numpy as np
import pytest
from kernel_harness import SINGLE_PROFILE, TFLITE_PROFILE, enc

from qdiverge.engines.emulator import compiled
from qdiverge.engines.emulator.code_tables import PairTable
from qdiverge.engines.emulator.kernels.elementwise import Add, Div, Mul, Sub
from qdiverge.engines.emulator.registry import Binding
from qdiverge.engines.emulator.row_blocks import in_row_blocks
from qdiverge.loading.model import Node
from qdiverge.profiles import load_profile


def _binding(op: str, ea, eb, eo, profile) -> Binding:
    node = Node(0, op, op, "", ("a", "b"), ("y",), {})
    return Binding(
        node=node,
        input_encodings=[ea, eb],
        output_encodings=(eo,),
        constants=[None, None],
        param_encodings=[None, None],
        input_shapes=[None, None],
        profile=profile,
        fused=(),
        fused_constants=[],
    )


def _codes(rng, e, shape, dtype):
    return rng.integers(e.qmin, e.qmax + 1, size=shape).astype(dtype)


PROFILES = [
    load_profile("htp"),
    load_profile("onnx"),
    load_profile("hexagon-nn"),
    TFLITE_PROFILE,
    SINGLE_PROFILE,
]


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
@pytest.mark.parametrize("kernel", [Add, Sub, Mul, Div], ids=lambda k: k.__name__)
@pytest.mark.parametrize("signed", [False, True])
def test_pair_table_equals_the_kernel_arithmetic(profile, kernel, signed, jit):
    rng = np.random.default_rng(7)
    ea, eb, eo = (
        enc(0.031, 3 - 128 * signed, signed=signed),
        enc(0.017, 200 - 128 * signed, signed=signed),
        enc(0.05, 90),
    )
    if profile.eltwise_method == "hexagon_nn" and signed:
        eo = enc(0.05, -10, signed=True)
    params = kernel.prepare(_binding(kernel.__name__, ea, eb, eo, profile))
    assert params.table is not None
    narrow = np.int8 if signed else np.uint8
    for shape_a, shape_b in (
        ((2, 5, 7, 9), (2, 5, 7, 9)),
        ((2, 5, 7, 9), (2, 5, 1, 1)),
        ((1, 5, 1, 1), (2, 5, 7, 9)),
    ):
        for dtype in (narrow, np.int64):
            a, b = _codes(rng, ea, shape_a, dtype), _codes(rng, eb, shape_b, dtype)
            got = kernel.run(params, a, b)
            arithmetic = kernel.run(
                type(params)(**{**params.__dict__, "table": None}), a.astype(np.int64), b.astype(np.int64)
            )
            assert got.shape == arithmetic.shape
            np.testing.assert_array_equal(got.astype(np.int64), arithmetic)


def test_pair_table_only_for_8_bit_codes():
    wide = enc(0.001, 30000, bits=16)
    assert PairTable.build(lambda a, b: a + b, wide, enc(0.1, 0)) is None
    four_bit = enc(0.1, 3, bits=4)
    table = PairTable.build(lambda a, b: 16 * a + b, four_bit, four_bit)
    assert table is not None and table.values.dtype == np.uint8
    a, b = np.arange(16).repeat(16), np.tile(np.arange(16), 16)
    np.testing.assert_array_equal(table(a, b), 16 * a + b)


@pytest.mark.parametrize("b_shape", [(8, 64, 32, 32), (8, 64, 1, 1), (1, 64, 1, 1), (32,)])
def test_large_lookups_on_row_blocks_equal_the_whole_array(b_shape):
    """Above the threshold the numpy form splits rows across threads; broadcast inputs go whole to each block."""
    previous = compiled.set_enabled(False)
    try:
        rng = np.random.default_rng(9)
        table = PairTable.build(lambda a, b: (a * 7 + b * 3) % 251, enc(0.1, 0), enc(0.1, 0))
        assert table is not None
        a = rng.integers(0, 256, (8, 64, 32, 32)).astype(np.uint8)  # 2^19 elements, 8 rows
        b = rng.integers(0, 256, b_shape).astype(np.uint8)
        want = (a.astype(np.int64) * 7 + b.astype(np.int64) * 3) % 251
        np.testing.assert_array_equal(table(a, b), want)
        wide = a.astype(np.int64)
        np.testing.assert_array_equal(
            in_row_blocks(np.add, wide.shape, np.dtype(np.int64), wide, b), wide + b
        )
    finally:
        compiled.set_enabled(previous)
