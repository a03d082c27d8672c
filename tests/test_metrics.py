"""metrics.py against hand-computed values and math.fsum (an independent correctly rounded sum)."""

import math

import numpy as np
import pytest

from qdiverge.encodings.schema import make_encoding
from qdiverge.errors import InputError
from qdiverge.metrics import (
    MetricsAccumulator,
    _ExactSum,
    compare,
    cosine,
    fraction_differ,
    lsb_diff,
    mse,
    sqnr_db,
    topk_agreement,
)


def test_hand_computed_values():
    ref = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    test = np.array([1.0, 2.0, 3.0, 5.0], np.float32)
    m = compare(ref, test, make_encoding("t", 8, 0.5, -128))
    # signal 1+4+9+16 = 30, noise 1, dot 1+4+9+20 = 34, |test|^2 = 39
    assert m.sqnr_db == pytest.approx(10 * math.log10(30.0), abs=1e-12)
    assert m.cosine == pytest.approx(34 / math.sqrt(30 * 39), abs=1e-15)
    assert (m.mse, m.max_abs_diff, m.mean_abs_diff, m.fraction_differ) == (0.25, 1.0, 0.25, 0.25)
    assert (m.max_lsb, m.mean_lsb) == (2.0, 0.5)
    assert m.elements == 4
    assert sqnr_db(ref, test) == m.sqnr_db and mse(ref, test) == 0.25
    assert cosine(ref, test) == m.cosine and fraction_differ(ref, test) == 0.25


def test_per_channel_lsb_uses_each_channels_scale():
    ref = np.zeros((2, 2))
    test = np.array([[0.25, 0.5], [0.75, 1.0]])
    enc = make_encoding("t", 8, [0.25, 0.5], -128, axis=1)
    # |diff| / scale per column: [[1, 1], [3, 2]]
    assert lsb_diff(ref, test, enc) == (3.0, 7 / 4)
    enc_rows = make_encoding("t", 8, [0.25, 0.5], -128, axis=0)
    assert lsb_diff(ref, test, enc_rows) == (2.0, (1 + 2 + 1.5 + 2) / 4)  # rows: [[1, 2], [1.5, 2]]


def test_per_channel_scale_count_mismatch_is_input_error():
    enc = make_encoding("w", 8, [0.1, 0.2, 0.3], -128, axis=1)
    with pytest.raises(InputError, match="'w'"):
        compare(np.zeros((2, 2)), np.ones((2, 2)), enc)


def test_float_encoding_has_no_lsb():
    enc = make_encoding("f", 16, 1.0, 0.0, dtype="float")
    assert compare(np.zeros(3), np.ones(3), enc).max_lsb is None
    with pytest.raises(InputError, match="float"):
        lsb_diff(np.zeros(3), np.ones(3), enc)


def test_identical_and_zero_arrays():
    x = np.array([0.5, -2.0, 3.0])
    m = compare(x, x.copy())
    assert (m.sqnr_db, m.cosine, m.mse, m.max_abs_diff, m.fraction_differ) == (math.inf, 1.0, 0.0, 0.0, 0.0)
    z = compare(np.zeros(4), np.zeros(4))
    assert (z.sqnr_db, z.cosine) == (math.inf, 1.0)
    zs = compare(np.zeros(4), np.array([0.0, 1.0, 0.0, 0.0]))
    assert (zs.sqnr_db, zs.cosine, zs.fraction_differ) == (-math.inf, 0.0, 0.25)
    assert compare(x, -x).cosine == -1.0


def test_nan_policy():
    ref = np.array([np.nan, 1.0, 2.0])
    both = compare(ref, np.array([np.nan, 1.0, 2.0]))
    assert (both.sqnr_db, both.fraction_differ, both.max_abs_diff) == (math.inf, 0.0, 0.0)
    one = compare(ref, np.array([0.0, 1.0, 2.0]))
    assert one.fraction_differ == pytest.approx(1 / 3)
    for v in (one.sqnr_db, one.cosine, one.mse, one.max_abs_diff, one.mean_abs_diff):
        assert math.isnan(v)
    inf = np.array([np.inf, 1.0])
    assert compare(inf, inf.copy()).max_abs_diff == 0.0
    assert compare(np.array([1.0, 1.0]), inf).max_abs_diff == math.inf


def test_shape_mismatch_and_empty():
    with pytest.raises(InputError, match="shapes"):
        compare(np.zeros(3), np.zeros(4))
    with pytest.raises(InputError, match="nothing"):
        MetricsAccumulator().result()


def test_topk_agreement():
    ref = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.0, 0.0, 1.0]])
    test = np.array([[0.1, 0.9, 0.0], [0.1, 0.8, 0.2], [0.5, 0.3, 0.2], [0.0, 0.0, 1.0]])
    # top-1 agrees on rows 0 and 3; row 1's ref class 0 is 3rd in test, row 2's class 2 is 3rd
    assert topk_agreement(ref, test, 1) == 0.5
    assert topk_agreement(ref, test, 2) == 0.5
    assert topk_agreement(ref, test, 3) == 1.0
    m = compare(ref, test, topk=2)
    assert (m.top1, m.topk, m.k) == (0.5, 0.5, 2)
    # ties go to the lower class index on both sides
    assert topk_agreement(np.array([1.0, 1.0]), np.array([2.0, 2.0]), 1) == 1.0


def test_exact_sum_matches_fsum_over_wide_ranges():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(20000) * rng.choice([1e-310, 1e-5, 1.0, 1e150, 1e300], 20000)
    s = _ExactSum()
    for part in np.array_split(x, 7):
        s.add(part)
    assert s.value() == math.fsum(x)
    assert s.value(3) == pytest.approx(math.fsum(x) / 3, rel=1e-15)
    t = _ExactSum()
    t.add(np.array([1e308, 1e308, -1e308]))
    assert t.value() == 1e308  # the running float sum would overflow to inf


def test_streaming_equals_one_shot_exactly():
    rng = np.random.default_rng(2)
    enc = make_encoding("t", 8, [0.02, 0.05, 0.1], -128, axis=-1)
    refs = [rng.standard_normal((5, 3)).astype(np.float32) * 10.0 ** rng.integers(-3, 3) for _ in range(9)]
    tests = [r + rng.integers(-2, 3, r.shape).astype(np.float32) * np.float32(0.05) for r in refs]
    acc = MetricsAccumulator(enc, topk=2)
    for r, t in zip(refs[::-1], tests[::-1], strict=True):  # order does not matter either
        acc.update(r, t)
    assert acc.result() == compare(np.concatenate(refs), np.concatenate(tests), enc, topk=2)
    # the sums themselves, against fsum on the concatenation
    ref64 = np.concatenate(refs).astype(np.float64)
    diff = np.abs(np.concatenate(tests).astype(np.float64) - ref64)
    assert acc.noise.value() == math.fsum((diff * diff).ravel())
    assert acc.abs_diff.value() == math.fsum(diff.ravel())
    assert acc.ref2.value() == math.fsum((ref64 * ref64).ravel())


def test_merged_accumulators_equal_one_shot():
    rng = np.random.default_rng(3)
    enc = make_encoding("t", 8, 0.05, -128)
    a_ref, b_ref = rng.standard_normal((3, 4)), rng.standard_normal((2, 4))
    a_test, b_test = a_ref + 0.05, b_ref - 0.1
    a, b = MetricsAccumulator(enc, topk=1), MetricsAccumulator(enc, topk=1)
    a.update(a_ref, a_test)
    b.update(b_ref, b_test)
    whole = compare(np.concatenate([a_ref, b_ref]), np.concatenate([a_test, b_test]), enc, topk=1)
    assert a.merged(b).result() == whole
    assert a.merged(MetricsAccumulator()).result().max_lsb is None  # only one side has LSBs
    assert whole.noise_ratio == pytest.approx(10 ** (-whole.sqnr_db / 10))
    assert compare(a_ref, a_ref).noise_ratio == 0.0
