"""How far a test tensor is from a reference tensor: pure functions of arrays, and their streaming form.

Every statistic is computed from a few sums over elements (signal, noise, dot product, |diff|, LSB
error) plus a max and a count. The sums are *exact* (``_ExactSum``): each float64 term is added as an
integer multiple of 2^-1126, and only the final value is rounded once. So a ``MetricsAccumulator`` fed
sample by sample gives bit-for-bit the result of ``compare`` on the concatenation, in any order, and
memory does not grow with the number of samples.

Conventions:

* ``sqnr_db = 10 log10(sum ref^2 / sum (test - ref)^2)``; ``inf`` when the arrays are identical (also
  when both are all zero), ``-inf`` when the reference is all zero and the test is not.
* ``cosine`` is 1.0 for two all-zero arrays and 0.0 when exactly one of them is all zero.
* LSB errors are ``|test - ref| / scale`` with the scale of the element's channel (or block), so per
  channel encodings are handled; they are ``None`` without an integer encoding.
* NaN: an element where both arrays hold NaN (or the same infinity) agrees and adds no error. A NaN
  on one side only counts as a differing element and makes the error statistics (SQNR, cosine, MSE,
  |diff|, LSB) NaN, so a NaN cannot hide behind a good average.
* Top-k agreement treats the last axis as classes and every other index as a sample: a sample agrees
  when the reference's top-1 class is among the test's k highest scores. Ties go to the lower index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qdiverge.encodings.schema import Encoding
from qdiverge.errors import InputError
from qdiverge.quant import _per_element

# name on the command line -> (TensorMetrics attribute, True when higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "sqnr": ("sqnr_db", True),
    "cosine": ("cosine", True),
    "mse": ("mse", False),
    "max_abs": ("max_abs_diff", False),
    "mean_abs": ("mean_abs_diff", False),
    "max_lsb": ("max_lsb", False),
    "mean_lsb": ("mean_lsb", False),
    "differ": ("fraction_differ", False),
    "top1": ("top1", True),
}

# Every finite float64 is m * 2^(e - 53) with |m| < 2^53 and e >= -1073 (np.frexp), so an integer
# multiple of 2^-_SCALE_BITS.
_SCALE_BITS = 1126
LSB_SNAP = 1e-3  # |x - round(x)| below this (in LSB) is float32 round-off, not a real fraction
# Per exponent bin the high (< 2^27) and low (< 2^26) mantissa parts are summed in float64 by
# bincount; the sums stay exact integers while count * 2^27 <= 2^53.
_CHUNK = 1 << 26


class _ExactSum:
    """The exact sum of float64 terms; order and chunking cannot change the result."""

    __slots__ = ("exact", "nan", "neg_inf", "pos_inf")

    def __init__(self) -> None:
        self.exact = 0  # the sum times 2^_SCALE_BITS
        self.nan = self.pos_inf = self.neg_inf = False

    @property
    def finite(self) -> bool:
        return not (self.nan or self.pos_inf or self.neg_inf)

    def add(self, terms: np.ndarray) -> None:
        t = np.asarray(terms, dtype=np.float64).ravel()
        ok = np.isfinite(t)
        if not ok.all():
            bad = t[~ok]
            self.nan |= bool(np.isnan(bad).any())
            self.pos_inf |= bool((bad == np.inf).any())
            self.neg_inf |= bool((bad == -np.inf).any())
            t = t[ok]
        t = t[t != 0]
        for start in range(0, t.size, _CHUNK):
            mant, exp = np.frexp(t[start : start + _CHUNK])
            m = (mant * 2.0**53).astype(np.int64)  # exact: |mant| in [0.5, 1)
            lo_exp = int(exp.min())
            bins = exp - lo_exp
            hi = np.bincount(bins, weights=(m >> 26).astype(np.float64))
            lo = np.bincount(bins, weights=(m & ((1 << 26) - 1)).astype(np.float64))
            for b in np.flatnonzero((hi != 0) | (lo != 0)):
                shift = int(b) + lo_exp - 53 + _SCALE_BITS
                self.exact += ((int(hi[b]) << 26) + int(lo[b])) << shift

    def plus(self, other: _ExactSum) -> _ExactSum:
        out = _ExactSum()
        out.exact = self.exact + other.exact
        out.nan, out.pos_inf, out.neg_inf = (
            self.nan or other.nan,
            self.pos_inf or other.pos_inf,
            self.neg_inf or other.neg_inf,
        )
        return out

    def value(self, divisor: int = 1) -> float:
        """The sum divided by ``divisor``, rounded once."""
        if self.nan or (self.pos_inf and self.neg_inf):
            return math.nan
        if self.pos_inf or self.neg_inf:
            return math.inf if self.pos_inf else -math.inf
        try:
            return self.exact / (divisor << _SCALE_BITS)  # int / int is correctly rounded
        except OverflowError:
            return math.copysign(math.inf, self.exact)


@dataclass(frozen=True)
class TensorMetrics:
    """Every statistic of one comparison (see the module docstring for the conventions)."""

    elements: int
    sqnr_db: float
    cosine: float
    mse: float
    max_abs_diff: float
    mean_abs_diff: float
    max_lsb: float | None
    mean_lsb: float | None
    fraction_differ: float
    top1: float | None = None
    topk: float | None = None
    k: int | None = None

    @property
    def noise_ratio(self) -> float:
        """sum (test - ref)^2 / sum ref^2, i.e. 10^(-SQNR/10): grows with divergence, 0 when identical."""
        return 10.0 ** (-self.sqnr_db / 10.0) if not math.isnan(self.sqnr_db) else math.nan

    def get(self, metric: str) -> float | None:
        """The value of a ``METRICS`` name (``"sqnr"``, ``"max_lsb"``, ...)."""
        return getattr(self, METRICS[metric][0])


def _ratio_db(num: int, den: int) -> float:
    """10 log10(num / den) for positive ints of any size."""
    try:
        ratio = num / den
        if ratio > 0:
            return 10.0 * math.log10(ratio)
    except OverflowError:
        pass
    return 10.0 * (math.log10(num) - math.log10(den))


def _sqnr_from(signal: _ExactSum, noise: _ExactSum) -> float:
    if not (signal.finite and noise.finite):
        with np.errstate(all="ignore"):
            return float(10.0 * np.log10(np.float64(signal.value()) / np.float64(noise.value())))
    if noise.exact == 0:
        return math.inf
    if signal.exact == 0:
        return -math.inf
    return _ratio_db(signal.exact, noise.exact)


def _cosine_from(dot: _ExactSum, ref2: _ExactSum, test2: _ExactSum) -> float:
    if not (dot.finite and ref2.finite and test2.finite):
        return math.nan
    if ref2.exact == 0 or test2.exact == 0:
        return 1.0 if ref2.exact == test2.exact else 0.0
    # cos^2 = dot^2 / (ref2 * test2) as one correctly rounded int division; no overflow on any range
    cos = math.sqrt(dot.exact * dot.exact / (ref2.exact * test2.exact))
    return min(cos, 1.0) if dot.exact >= 0 else -min(cos, 1.0)


def _topk_hits(ref: np.ndarray, test: np.ndarray, k: int) -> tuple[int, int, int]:
    """(samples, top-1 hits, top-k hits) with the last non-singleton axis as classes: logits shaped
    ``(N, C, 1, 1)`` (a 1x1-conv head) have their classes on axis 1, not on the last axis."""
    while ref.ndim > 1 and ref.shape[-1] == 1:
        ref, test = ref.reshape(ref.shape[:-1]), test.reshape(test.shape[:-1])
    if ref.ndim == 0 or ref.shape[-1] <= 1:
        return 0, 0, 0  # no class axis (a scalar or a regression output): top-k does not apply
    r = ref.reshape(-1, ref.shape[-1])
    t = test.reshape(-1, test.shape[-1])
    want = np.argmax(r, axis=1)[:, None]
    order = np.argsort(-t, axis=1, kind="stable")[:, : min(k, t.shape[1])]
    return r.shape[0], int((order[:, :1] == want).sum()), int((order == want).any(axis=1).sum())


class MetricsAccumulator:
    """Streaming ``compare``: ``update`` per sample, ``result`` at the end; memory is O(1) in samples.

    ``encoding`` gives LSB errors; ``topk`` (e.g. 5) marks a classifier output and adds top-1 and
    top-k agreement over samples (last axis = classes).
    """

    def __init__(self, encoding: Encoding | None = None, topk: int | None = None) -> None:
        if topk is not None and topk < 1:
            raise InputError(f"top-k needs k >= 1, got {topk}")
        self.encoding = encoding if encoding is not None and not encoding.is_float else None
        self.k = topk
        self.n = self.n_differ = self.samples = self.top1_hits = self.topk_hits = 0
        self.ref2, self.test2, self.dot = _ExactSum(), _ExactSum(), _ExactSum()
        self.noise, self.abs_diff, self.lsb = _ExactSum(), _ExactSum(), _ExactSum()
        self.max_abs = self.max_lsb = 0.0

    def update(self, ref: np.ndarray, test: np.ndarray) -> None:
        ref = np.asarray(ref, dtype=np.float64)
        test = np.asarray(test, dtype=np.float64)
        if ref.shape != test.shape:
            raise InputError(f"cannot compare shapes {ref.shape} and {test.shape}")
        both_nan = np.isnan(ref) & np.isnan(test)
        agree = (ref == test) | both_nan
        # pairs that agree contribute exactly 0, so inf == inf does not become inf - inf = nan
        with np.errstate(invalid="ignore"):  # inf - inf where the pair agrees; masked right here
            diff = np.abs(np.where(agree, 0.0, test - ref))
        r = np.where(both_nan, 0.0, ref)
        t = np.where(both_nan, 0.0, test)
        self.n += ref.size
        self.n_differ += int(ref.size - np.count_nonzero(agree))
        self.ref2.add(r * r)
        self.test2.add(t * t)
        self.dot.add(r * t)
        self.noise.add(diff * diff)
        self.abs_diff.add(diff)
        if diff.size:
            self.max_abs = max(self.max_abs, float(diff.max()), key=_nan_first)
        if self.encoding is not None:
            lsb = diff / self._scales(ref.shape)
            # two float32 values on one grid differ by a whole number of steps; snap the float32 round-off
            # (~1e-6 LSB) so a 1-code difference reads as exactly 1 LSB
            whole = np.rint(lsb)
            lsb = np.where(np.abs(lsb - whole) < LSB_SNAP, whole, lsb)
            self.lsb.add(lsb)
            if lsb.size:
                self.max_lsb = max(self.max_lsb, float(lsb.max()), key=_nan_first)
        if self.k is not None:
            s, h1, hk = _topk_hits(ref, test, self.k)
            self.samples += s
            self.top1_hits += h1
            self.topk_hits += hk

    def merged(self, other: MetricsAccumulator) -> MetricsAccumulator:
        """Both accumulators as one, e.g. several model outputs pooled into one record. Exact, like
        ``update``; LSB statistics survive only when both sides have them (each in its own encoding)."""
        out = MetricsAccumulator(self.encoding if other.encoding is not None else None, self.k)
        if self.k != other.k:
            out.k = None
        for name in ("n", "n_differ", "samples", "top1_hits", "topk_hits"):
            setattr(out, name, getattr(self, name) + getattr(other, name))
        for name in ("ref2", "test2", "dot", "noise", "abs_diff", "lsb"):
            setattr(out, name, getattr(self, name).plus(getattr(other, name)))
        out.max_abs = max(self.max_abs, other.max_abs, key=_nan_first)
        out.max_lsb = max(self.max_lsb, other.max_lsb, key=_nan_first)
        return out

    def _scales(self, shape: tuple[int, ...]) -> np.ndarray:
        enc = self.encoding
        assert enc is not None
        if enc.scale.size == 1:
            return np.float64(enc.scale.item())
        try:
            scale = _per_element(enc, enc.scale, shape)
            return np.broadcast_to(scale, shape)
        except (ValueError, IndexError, AssertionError) as exc:
            raise InputError(
                f"encoding {enc.name!r}: {enc.scale.size} scale(s) on axis {enc.axis}"
                f" do not fit shape {shape}"
            ) from exc

    def result(self) -> TensorMetrics:
        if self.n == 0:
            raise InputError("nothing was compared (no elements)")
        lsb = self.encoding is not None
        return TensorMetrics(
            elements=self.n,
            sqnr_db=_sqnr_from(self.ref2, self.noise),
            cosine=_cosine_from(self.dot, self.ref2, self.test2),
            mse=self.noise.value(self.n),
            max_abs_diff=self.max_abs,
            mean_abs_diff=self.abs_diff.value(self.n),
            max_lsb=self.max_lsb if lsb else None,
            mean_lsb=self.lsb.value(self.n) if lsb else None,
            fraction_differ=self.n_differ / self.n,
            top1=self.top1_hits / self.samples if self.k is not None and self.samples else None,
            topk=self.topk_hits / self.samples if self.k is not None and self.samples else None,
            k=self.k,
        )


def _nan_first(x: float) -> float:
    """Sort key for ``max`` that lets NaN win, so a NaN seen once stays the maximum."""
    return math.inf if math.isnan(x) else x


def compare(
    ref: np.ndarray, test: np.ndarray, encoding: Encoding | None = None, topk: int | None = None
) -> TensorMetrics:
    """All statistics of ``test`` against ``ref`` in one go."""
    acc = MetricsAccumulator(encoding, topk)
    acc.update(ref, test)
    return acc.result()


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    return compare(ref, test).sqnr_db


def cosine(ref: np.ndarray, test: np.ndarray) -> float:
    return compare(ref, test).cosine


def mse(ref: np.ndarray, test: np.ndarray) -> float:
    return compare(ref, test).mse


def fraction_differ(ref: np.ndarray, test: np.ndarray) -> float:
    return compare(ref, test).fraction_differ


def lsb_diff(ref: np.ndarray, test: np.ndarray, encoding: Encoding) -> tuple[float, float]:
    """(max, mean) of ``|test - ref| / scale`` in the LSBs of ``encoding`` (per channel aware)."""
    m = compare(ref, test, encoding)
    if m.max_lsb is None or m.mean_lsb is None:
        raise InputError(f"encoding {encoding.name!r} is a float encoding; it has no LSB")
    return m.max_lsb, m.mean_lsb


def topk_agreement(ref_logits: np.ndarray, test_logits: np.ndarray, k: int = 1) -> float:
    """Fraction of samples whose reference top-1 class is in the test's top ``k`` (last axis = classes)."""
    ref = np.asarray(ref_logits)
    test = np.asarray(test_logits)
    if ref.shape != test.shape:
        raise InputError(f"cannot compare logits of shapes {ref.shape} and {test.shape}")
    if k < 1:
        raise InputError(f"top-k needs k >= 1, got {k}")
    samples, _, hits = _topk_hits(ref, test, k)
    return hits / samples if samples else math.nan
