"""Exact candidate arithmetic for probes, and how measured codes compare with each candidate.

Values are exact rationals ``num / den`` (``num`` an object array of Python ints) so a tie is a tie, not
a float that happens to land near one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from qdiverge.probes.graph import QParams


def as_objects(values: np.ndarray) -> np.ndarray:
    """Integer array as Python ints, so products never overflow."""
    return np.asarray(values, dtype=np.int64).astype(object)


def round_ratio(num: np.ndarray, den: int | np.ndarray, rule: str) -> np.ndarray:
    """Round ``num / den`` (den > 0) to an integer with tie rule ``RNE``, ``RHU`` or ``RHAZ``."""
    num = np.asarray(num, dtype=object)
    floor = num // den
    twice_rem = 2 * (num - floor * den)
    up = twice_rem > den
    tie = twice_rem == den
    if rule == "RNE":
        up = up | (tie & (floor % 2 == 1))
    elif rule == "RHU":
        up = up | tie
    elif rule == "RHAZ":
        up = up | (tie & (num > 0))
    else:
        raise ValueError(f"unknown rounding rule {rule}")
    return (floor + up.astype(object)).astype(np.int64)


def ratio_lsb(num: np.ndarray, den: int | np.ndarray) -> np.ndarray:
    """``num / den`` as float64 (for describing where codes differ)."""
    return (np.asarray(num, dtype=object) / den).astype(np.float64)


def normalise(m: Fraction, bits: int) -> tuple[int, int]:
    """``(mant, exp)`` with ``m ~= mant * 2^-exp`` and ``mant`` a ``bits``-bit integer, rounded half up."""
    exp = 0
    while m * Fraction(2) ** exp < 2 ** (bits - 1):
        exp += 1
    while m * Fraction(2) ** exp >= 2**bits:
        exp -= 1
    mant = int(m * Fraction(2) ** exp + Fraction(1, 2))
    if mant == 2**bits:  # rounding carried into a new bit
        mant, exp = mant // 2, exp - 1
    return mant, exp


def fixed_point(m: Fraction, bits: int) -> Fraction:
    """``m`` (> 0) as a normalised ``bits``-bit mantissa times a power of two."""
    mant, exp = normalise(m, bits)
    return Fraction(mant) / Fraction(2) ** exp


def scaled(acc: np.ndarray, m: Fraction) -> tuple[np.ndarray, int]:
    """``acc * m`` as ``(num, den)``."""
    return as_objects(acc) * m.numerator, m.denominator


def q12_prescaled(acc: np.ndarray, m: Fraction) -> tuple[np.ndarray, int]:
    """HTP's 8-bit requantization of ``acc * m`` as exact ``(num, den)`` (probe ``prescale``).

    ``g`` is the integer with ``m * 2^g`` in ``[1/16, 1/8)`` and ``mq = RHU(m * 2^(g + 15))`` a 12-bit
    integer; the accumulator is shifted (``floor(acc / 2^g)``, exact for ``g < 0``) and the midpoint of that
    step is scaled: ``y = (2 * floor(acc / 2^g) + 1) * mq / 2^16``.
    """
    g = 0
    while m * Fraction(2) ** g < Fraction(1, 16):
        g += 1
    while m * Fraction(2) ** g >= Fraction(1, 8):
        g -= 1
    mq = int(m * Fraction(2) ** (g + 15) + Fraction(1, 2))
    acc = as_objects(acc)
    step = acc // (1 << g) if g >= 0 else acc * (1 << -g)  # Python ints: // is a floor
    return (2 * step + 1) * mq, 1 << 16


def tflite_double_rounding(acc: np.ndarray, m: Fraction) -> np.ndarray:
    """gemmlowp ``SaturatingRoundingDoublingHighMul`` then ``RoundingDivideByPOT`` with a Q31 multiplier."""
    mant, exp = normalise(m, 31)
    right = exp - 31
    x = as_objects(acc) * (1 << max(-right, 0))
    total = x * mant
    total = total + np.where(total >= 0, 1 << 30, 1 - (1 << 30))
    high = np.where(total >= 0, total // (1 << 31), -((-total) // (1 << 31)))  # C division truncates
    if right <= 0:
        return high.astype(np.int64)
    mask = (1 << right) - 1
    threshold = (mask >> 1) + (high < 0).astype(object)
    return ((high >> right) + ((high & mask) > threshold).astype(object)).astype(np.int64)


def clamp(values: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return np.clip(np.asarray(values, dtype=np.int64), lo, hi)


@dataclass
class Comparison:
    """Measured codes against one candidate model."""

    candidate: str
    match: float
    max_diff: int
    histogram: dict[int, int]
    at_ties: int  # mismatches whose exact value is an exact .5 in output LSB
    examples: list[str]
    widest: float | None = None  # largest distance from a .5 (in LSB) among mismatches: the error bound

    def line(self) -> str:
        hist = ", ".join(f"{d:+d}:{n}" for d, n in sorted(self.histogram.items())[:6])
        hist += ", ..." if len(self.histogram) > 6 else ""
        ties = f"; {self.at_ties} at exact ties" if self.histogram else ""
        if self.histogram and self.widest is not None:
            ties += f"; widest miss {self.widest:.2e} LSB from a tie"
        return f"{self.candidate:<28} match {self.match:8.4%}  max|diff| {self.max_diff}  [{hist}]{ties}"


@dataclass
class ProbeResult:
    """One probe: HTP's codes, the candidate models' codes, and the exact pre-rounding value in LSB."""

    name: str
    question: str
    got: np.ndarray
    candidates: dict[str, np.ndarray]
    exact_lsb: np.ndarray | None = None
    labels: Callable[[int], str] | None = None
    notes: list[str] = field(default_factory=list)

    def compare(self, candidate: str) -> Comparison:
        got = self.got.astype(np.int64).ravel()
        want = np.asarray(self.candidates[candidate], dtype=np.int64).ravel()
        diff = got - want
        bad = np.flatnonzero(diff)
        hist = dict(zip(*np.unique(diff[bad], return_counts=True), strict=True))
        ties, widest = 0, None
        exact = self.exact_lsb.ravel() if self.exact_lsb is not None else None
        if exact is not None:
            margin = np.abs(exact[bad] - np.floor(exact[bad]) - 0.5)
            ties = int(np.sum(margin < 1e-9))
            widest = float(margin.max(initial=0.0))
        examples = []
        for i in bad[:4]:
            where = self.labels(int(i)) if self.labels else f"#{i}"
            value = f" exact {exact[i]:.6f}" if exact is not None else ""
            examples.append(f"{where}: htp {got[i]} vs {want[i]}{value}")
        return Comparison(
            candidate,
            float(1 - bad.size / max(got.size, 1)),
            int(np.abs(diff).max(initial=0)),
            {int(k): int(v) for k, v in hist.items()},
            ties,
            examples,
            widest,
        )

    def comparisons(self) -> list[Comparison]:
        return [self.compare(c) for c in self.candidates]

    def best(self) -> Comparison:
        return max(self.comparisons(), key=lambda c: c.match)

    def report(self, examples: bool = True) -> str:
        lines = [f"## {self.name}: {self.question} ({self.got.size} codes)"]
        for comp in self.comparisons():
            lines.append("  " + comp.line())
            if examples and comp.examples and comp.match < 1:
                lines.extend(f"      {e}" for e in comp.examples)
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


RULES = ("RNE", "RHU", "RHAZ")


def round_float(t: np.ndarray, rule: str) -> np.ndarray:
    """Round float values to integers with tie rule ``RNE``, ``RHU`` or ``RHAZ`` (ties are exact .5 here)."""
    t = np.asarray(t, dtype=np.float64)
    floor = np.floor(t)
    tie = (t - floor) == 0.5
    if rule == "RNE":
        out = np.rint(t)
    elif rule == "RHU":
        out = np.where(tie, floor + 1, np.rint(t))
    elif rule == "RHAZ":
        out = np.where(tie, np.where(t > 0, floor + 1, floor), np.rint(t))
    else:
        raise ValueError(f"unknown rounding rule {rule}")
    return out.astype(np.int64)


def requant_ratio(num: np.ndarray, den: int | np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The real value ``num / den`` in LSB of a float32 ``scale``, as exact ``(num, den)``."""
    s = Fraction(float(np.float32(scale)))
    return np.asarray(num, dtype=object) * s.denominator, np.asarray(den, dtype=object) * s.numerator


def code_candidates(
    out: QParams,
    exact: tuple[np.ndarray, int | np.ndarray] | None = None,
    value: np.ndarray | None = None,
    rules: tuple[str, ...] = RULES,
) -> dict[str, np.ndarray]:
    """Output codes of a real value under candidate quantizers.

    ``exact`` is the real value as ``(num, den)``; ``value`` the same value as float64 (for transcendental
    functions, the float64 evaluation). Float candidates quantize float64 ``y / s``, float32 ``y / s``,
    float32 ``y * (1/s)`` (HTP core's quantize) and an fp16 ``y`` (HVX qf16 arithmetic).
    """
    zp, lo, hi = int(out.zero_points[0]), out.qmin, out.qmax
    scale = float(out.scales[0])
    cands = {}
    if exact is not None:
        num, den = requant_ratio(*exact, scale)
        for r in rules:
            cands[f"exact/{r}"] = clamp(round_ratio(num, den, r) + zp, lo, hi)
        if value is None:
            value = ratio_lsb(*exact)
    if value is None:
        raise ValueError("code_candidates needs an exact or a float value")
    value = np.asarray(value, dtype=np.float64)
    s32 = np.float32(scale)
    y32 = value.astype(np.float32)
    forms = {
        "f64 y/s": value / float(s32),
        "f32 y/s": (y32 / s32).astype(np.float64),
        "f32 y*(1/s)": (y32 * (np.float32(1) / s32)).astype(np.float64),
        "fp16 y, /s": value.astype(np.float16).astype(np.float64) / float(s32),
    }
    for form, t in forms.items():
        for r in rules if exact is None or form != "f64 y/s" else ():
            cands[f"{form}/{r}"] = clamp(round_float(t, r) + zp, lo, hi)
    return cands


def offset_bounds(got: np.ndarray, exact_lsb: np.ndarray, out: QParams, key: np.ndarray | None = None):
    """Which constant ``d`` makes ``RHU(exact + d) + zp`` reproduce ``got`` (unclamped codes only).

    Without ``key`` returns the interval ``(lo, hi)`` of such ``d`` (empty if ``lo >= hi``). With ``key``
    (an integer label per element, e.g. one input's code) returns the fraction of labels for which one
    ``d`` per label fits: 1.0 means the error depends on that input alone.
    """
    inside = (got > out.qmin) & (got < out.qmax)
    k = got.astype(np.int64)[inside] - int(out.zero_points[0])
    lo, hi = k - 0.5 - exact_lsb[inside], k + 0.5 - exact_lsb[inside]
    if key is None:
        return float(lo.max()), float(hi.min())
    labels, idx = np.unique(key[inside], return_inverse=True)
    group_lo, group_hi = np.full(labels.size, -np.inf), np.full(labels.size, np.inf)
    np.maximum.at(group_lo, idx, lo)
    np.minimum.at(group_hi, idx, hi)
    return float(np.mean(group_lo < group_hi))
