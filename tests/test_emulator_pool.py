"""Pooling kernels against ONNX Runtime's QLinearAveragePool / QLinearGlobalAveragePool (ORT-modelled
profile) and against plain loop references with exact rational rounding (fixed-point profiles)."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
from kernel_harness import (
    ORT_PROFILE,
    SINGLE_PROFILE,
    TFLITE_PROFILE,
    bind,
    enc,
    ort_run,
    q31,
    qparams,
    round_fraction,
    run_kernel,
    s_z,
)

from qdiverge.profiles.schema import Profile

RNG = np.random.default_rng(5)
GEOMETRIES = [
    dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
    dict(kernel_shape=[2, 3], pads=[0, 1, 1, 0], strides=[1, 2]),
    dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER", strides=[2, 2]),
]
CEIL = [dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)]


def windows(x_shape, attrs):
    """Yield (output index, list of in-image taps, taps inside the declared pads) by brute force."""
    h, w = x_shape[-2:]
    kh, kw = attrs["kernel_shape"]
    sh, sw = attrs.get("strides", [1, 1])
    dh, dw = attrs.get("dilations", [1, 1])
    if attrs.get("auto_pad") == "SAME_UPPER":
        oh, ow = -(-h // sh), -(-w // sw)
        th, tw = max((oh - 1) * sh + (kh - 1) * dh + 1 - h, 0), max((ow - 1) * sw + (kw - 1) * dw + 1 - w, 0)
        pt, pl, pb, pr = th // 2, tw // 2, th - th // 2, tw - tw // 2
    else:
        pt, pl, pb, pr = attrs.get("pads", [0, 0, 0, 0])
        oh = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
        ow = (w + pl + pr - (kw - 1) * dw - 1) // sw + 1
    for i, j in itertools.product(range(oh), range(ow)):
        taps, padded = [], 0
        for a, c in itertools.product(range(kh), range(kw)):
            y, x = i * sh + a * dh - pt, j * sw + c * dw - pl
            if -pt <= y < h + pb and -pl <= x < w + pr:
                padded += 1
            if 0 <= y < h and 0 <= x < w:
                taps.append((y, x))
        yield (i, j), taps, padded, (oh, ow)


def loop_average(x, e_in, e_out, attrs, include_pad, profile):
    (s_in, z_in), (s_out, z_out) = s_z(e_in), s_z(e_out)
    shape = next(windows(x.shape, attrs))[3]
    y = np.zeros(x.shape[:2] + shape, dtype=np.int64)
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        for (i, j), taps, padded, _ in windows(x.shape, attrs):
            total = sum(int(x[n, c, a, b]) - z_in for a, b in taps)
            count = padded if include_pad else len(taps)
            if profile is TFLITE_PROFILE:  # RHAZ integer division on the shared encoding
                y[n, c, i, j] = round_fraction(Fraction(total, count), "half_away") + z_in
            else:  # one rescale by M = s_in / (N s_out), Q31, single rounding
                m = float(s_in) / (float(s_out) * count)
                qm, sh = q31(m, cap_shift=True)
                y[n, c, i, j] = round_fraction(Fraction(total * qm, 1 << (31 - sh)), "half_up") + z_out
    return np.clip(y, e_out.qmin, e_out.qmax)


@pytest.mark.parametrize("include_pad", [0, 1])
@pytest.mark.parametrize("attrs", GEOMETRIES + CEIL)
@pytest.mark.parametrize("signed", [False, True])
def test_average_pool_float_method_equals_ort_qlinearaveragepool(attrs, include_pad, signed):
    e_in, e_out = enc(0.07, 17 - 128 * signed, signed=signed), enc(0.05, 40 - 128 * signed, signed=signed)
    x = RNG.integers(e_in.qmin, e_in.qmax + 1, (2, 3, 9, 8))
    full = {**attrs, "count_include_pad": include_pad}
    want = ort_run(
        "QLinearAveragePool",
        [("X", x.astype(e_in.storage_dtype)), *qparams("X", e_in), *qparams("Y", e_out)],
        full,
    )[0]
    got = run_kernel(bind("AveragePool", [e_in], [e_out], ORT_PROFILE, full, shapes=[x.shape]), x)
    assert np.array_equal(got, want.astype(np.int64))


@pytest.mark.parametrize("profile", [SINGLE_PROFILE, TFLITE_PROFILE])
@pytest.mark.parametrize("include_pad", [0, 1])
@pytest.mark.parametrize("attrs", GEOMETRIES)
def test_average_pool_fixed_point_methods_equal_loop_reference(attrs, include_pad, profile):
    e_in = enc(0.07, 17)
    e_out = e_in if profile is TFLITE_PROFILE else enc(0.05, 40)
    x = RNG.integers(0, 256, (1, 2, 9, 8))
    full = {**attrs, "count_include_pad": include_pad}
    got = run_kernel(bind("AveragePool", [e_in], [e_out], profile, full, shapes=[x.shape]), x)
    assert np.array_equal(got, loop_average(x, e_in, e_out, attrs, include_pad, profile))


def test_hexagon_nn_average_is_within_one_lsb_of_exact():
    e = enc(0.07, 17)
    x = RNG.integers(0, 256, (1, 4, 9, 9))
    attrs = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    got = run_kernel(
        bind("AveragePool", [e], [e], Profile(name="h", pool_method="hexagon_nn"), attrs, shapes=[x.shape]), x
    )
    exact = loop_average(x, e, e, attrs, 0, TFLITE_PROFILE)
    assert np.abs(got - exact).max() <= 1


@pytest.mark.parametrize(
    "attrs",
    [
        dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        dict(kernel_shape=[2, 2], dilations=[2, 2], strides=[1, 1]),
    ],
)
def test_max_pool_equals_loop_reference_and_rescales(attrs):
    e_in, e_out = enc(0.1, 120), enc(0.2, 10)
    x = RNG.integers(0, 256, (2, 2, 7, 8))
    same = run_kernel(bind("MaxPool", [e_in], [e_in], SINGLE_PROFILE, attrs, shapes=[x.shape]), x)
    shape = next(windows(x.shape, attrs))[3]
    want = np.zeros(x.shape[:2] + shape, dtype=np.int64)
    for n, c in itertools.product(range(2), range(2)):
        for (i, j), taps, _, _ in windows(x.shape, attrs):
            want[n, c, i, j] = max(int(x[n, c, a, b]) for a, b in taps)
    assert np.array_equal(same, want)
    moved = run_kernel(bind("MaxPool", [e_in], [e_out], SINGLE_PROFILE, attrs, shapes=[x.shape]), x)
    m = float(e_in.scale[0]) / float(e_out.scale[0])
    qm, sh = q31(m, cap_shift=True)
    resc = np.vectorize(
        lambda q: round_fraction(Fraction((int(q) - 120) * qm, 1 << (31 - sh)), "half_up") + 10
    )
    assert np.array_equal(moved, np.clip(resc(want), 0, 255))


@pytest.mark.parametrize("signed", [False, True])
def test_global_average_pool_equals_ort_qlinearglobalaveragepool(signed, jit):
    e_in, e_out = enc(0.07, 17 - 128 * signed, signed=signed), enc(0.01, 40 - 128 * signed, signed=signed)
    x = RNG.integers(e_in.qmin, e_in.qmax + 1, (2, 16, 7, 7))
    want = ort_run(
        "QLinearGlobalAveragePool",
        [("X", x.astype(e_in.storage_dtype)), *qparams("X", e_in), *qparams("Y", e_out)],
        {},
    )[0]
    got = run_kernel(bind("GlobalAveragePool", [e_in], [e_out], ORT_PROFILE, shapes=[x.shape]), x)
    assert np.array_equal(got, want.astype(np.int64))


@pytest.mark.parametrize("form", ["attribute", "input"])
@pytest.mark.parametrize("axes, keepdims", [([1], 1), ([-1, 2], 0), (None, 1)])
def test_reduce_mean_equals_exact_rescale_of_the_sum(axes, keepdims, form, jit):
    e_in, e_out = enc(0.03, 5, signed=True), enc(0.02, -7, signed=True)
    x = RNG.integers(-128, 128, (2, 3, 4, 5))
    attrs: dict = {"keepdims": keepdims}
    consts = [None, None]
    if axes is not None and form == "attribute":
        attrs["axes"] = axes
    elif axes is not None:
        consts[1] = np.array(axes, dtype=np.int64)
    n = 1 if consts[1] is None else 2  # without an axes input the node has one input
    got = run_kernel(
        bind(
            "ReduceMean",
            [e_in, None][:n],
            [e_out],
            SINGLE_PROFILE,
            attrs,
            constants=consts[:n],
            shapes=[x.shape, None][:n],
        ),
        x,
    )
    norm = tuple(range(4)) if axes is None else tuple(sorted(a % 4 for a in axes))
    count = int(np.prod([x.shape[a] for a in norm]))
    total = np.sum(x - 5, axis=norm, keepdims=bool(keepdims))  # x - z_in
    m = float(e_in.scale[0]) / (float(e_out.scale[0]) * count)
    qm, sh = q31(m, cap_shift=True)
    want = np.vectorize(lambda t: round_fraction(Fraction(int(t) * qm, 1 << (31 - sh)), "half_up") - 7)(total)
    assert np.array_equal(got, np.clip(want, -128, 127))


@pytest.mark.parametrize(
    "attrs", [*GEOMETRIES, *CEIL, dict(kernel_shape=[2, 3], dilations=[2, 1], strides=[1, 2], ceil_mode=1)]
)
def test_max_pool_equals_onnxruntime_maxpool_on_codes(attrs):
    e = enc(0.1, 120)
    x = RNG.integers(0, 256, (1, 3, 9, 8))
    want = ort_run("MaxPool", [("X", x.astype(np.uint8))], attrs, domain="")[0]
    got = run_kernel(bind("MaxPool", [e], [e], SINGLE_PROFILE, attrs, shapes=[x.shape]), x)
    assert np.array_equal(got, want.astype(np.int64))
