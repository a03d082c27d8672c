"""Ranking the layers a bisection measured, and how far each ranking reproduces.

Contributions come from split mode (the increase in final-output divergence from one cut to the next),
solo scores from layerwise mode (final outputs with only this layer on the DSP side), isolated errors from
layerwise mode too. ``ranking_stability`` measures each ranking on the even and on the odd samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from qdiverge.driver.bisect import BisectResult, StepOutcome
from qdiverge.metrics import TensorMetrics


def _final_metric_value(m: TensorMetrics, metric: str) -> float:
    """A scalar that grows with divergence, so contribution = increase from one cut to the next."""
    if metric == "sqnr":
        return m.noise_ratio
    if metric == "mse":
        return m.mse
    if metric == "cosine":
        return 1.0 - m.cosine
    if metric == "top1":
        return 1.0 - (m.top1 if m.top1 is not None else 1.0)
    if metric == "lsb":
        return m.max_lsb if m.max_lsb is not None else m.max_abs_diff
    raise ValueError(metric)


def _increments(result: BisectResult, metric: str) -> list[float | None]:
    """Per step: the increase in final-output divergence from the previous cut (None without split mode)."""
    previous = 0.0  # cut "nothing on the DSP side" is the sim itself
    steps: list[float | None] = []
    for outcome in result.steps:
        if outcome.split_final is None:
            steps.append(None)
            continue
        current = _final_metric_value(outcome.split_final, metric)
        steps.append(current - previous)
        previous = current
    return steps


def _average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks with ties sharing their mean rank (as Spearman's coefficient defines them)."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v), dtype=np.float64)
    _, tie_group = np.unique(v, return_inverse=True)
    return np.bincount(tie_group, ranks)[tie_group] / np.bincount(tie_group)[tie_group]


def _rank_correlation(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); nan when either side is constant."""
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    ra, rb = _average_ranks(a), _average_ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def ranking_stability(result: BisectResult, metric: str) -> dict[str, float]:
    """Split-half agreement of each ranking: does the order found on the even samples reappear on the odd
    ones? ``<ranking>``: Spearman rank correlation over all layers (near 1: the ranking measures the layers;
    near 0: sampling noise); ``<ranking>_top``: 1.0 when both halves put the same layer first, else 0.0."""
    scores: dict[str, list[np.ndarray]] = {}
    if len(result.split_halves) == 2 and all(m is not None for h in result.split_halves for m in h):
        for half in result.split_halves:
            values = [_final_metric_value(m, metric) for m in half]  # type: ignore[arg-type]
            # the first cut's increment is from the sim itself
            scores.setdefault("contribution", []).append(np.diff([0.0, *values]))
    if len(result.solo_halves) == 2 and all(m is not None for h in result.solo_halves for m in h):
        for half in result.solo_halves:
            scores.setdefault("solo", []).append(np.array([_final_metric_value(m, metric) for m in half]))  # type: ignore[arg-type]
    stability: dict[str, float] = {}
    for name, (a, b) in scores.items():
        correlation = _rank_correlation(a, b)
        if math.isfinite(correlation):
            stability[name] = correlation
            stability[f"{name}_top"] = float(np.argmax(a) == np.argmax(b))
    return stability


def divergence_added(result: BisectResult, metric: str) -> float:
    """The sum of all cut-to-cut increases in final-output divergence (decreases not counted)."""
    return sum(max(d, 0.0) for d in _increments(result, metric) if d is not None and math.isfinite(d))


RANK_BY = ("contribution", "solo", "isolated")


def rank(
    result: BisectResult, metric: str, total: float | None = None, rank_by: str = "contribution"
) -> list[StepOutcome]:
    """Set each step's contribution and sort, largest first.

    A contribution is the increase in final-output divergence (``metric``) from the previous cut to this
    one, as a fraction of ``total``: by default every increase of this run added up, so contributions lie
    in [-1, 1], the positive ones sum to 1, and a negative one means the layer's error partly cancels
    earlier ones. A what-if passes the original run's total so both are on one scale. Without split
    mode contributions are 0 and the isolated LSB error ranks the layers.

    ``rank_by``: ``contribution`` (split mode), ``solo`` (final-output divergence with only this layer on
    the DSP side: robust when any early perturbation saturates the final noise), or ``isolated`` (the
    layer's own LSB error).
    """
    total = divergence_added(result, metric) if total is None else total
    scale = 1.0 / total if total and math.isfinite(total) and total > 0 else 1.0
    for outcome, delta in zip(result.steps, _increments(result, metric), strict=True):
        if delta is None:
            outcome.contribution = 0.0  # not measured (no split mode, or a cut the DSP side cannot feed)
        else:
            outcome.contribution = delta * scale
    if "split" not in result.modes and rank_by == "contribution":
        rank_by = "isolated"  # no contributions measured: the layers' own errors are what there is
    keys = {
        "contribution": lambda o: (-_finite(o.contribution), -_isolated_score(o), o.index),
        "solo": lambda o: (-_finite(_solo_score(o, metric)), -_finite(o.contribution), o.index),
        "isolated": lambda o: (-_isolated_score(o), -_mean_lsb(o), -_finite(o.contribution), o.index),
    }
    return sorted(result.steps, key=keys[rank_by])


def _solo_score(o: StepOutcome, metric: str) -> float:
    return _final_metric_value(o.solo, metric) if o.solo is not None else 0.0


def _mean_lsb(o: StepOutcome) -> float:
    return o.isolated.mean_lsb if o.isolated is not None and o.isolated.mean_lsb is not None else 0.0


def _isolated_score(o: StepOutcome) -> float:
    if o.isolated is None:
        return 0.0
    return o.isolated.max_lsb if o.isolated.max_lsb is not None else o.isolated.max_abs_diff


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 1e300
