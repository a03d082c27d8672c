"""What a run found, as plain frozen data: the only input the report writers get.

``Report`` holds the run metadata, the final-output summary, the ranked layers and the CI gate
verdict. ``evaluate_gate`` turns thresholds (and optionally an earlier report) into a ``GateResult``
whose truth value is the verdict (exit 0 when true, 1 when false).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from qdiverge.errors import InputError
from qdiverge.metrics import METRICS, TensorMetrics

SCHEMA_VERSION = 1
SEVERITIES = ("info", "warning", "error")
SCOPES = ("final", "layers", "all")
FLAG_FLOAT_FALLBACK = "float_fallback"  # the target runs this layer in float
FLAG_DERIVED_ENCODING = "derived_encoding"  # the export had no encoding; the target derived one


@dataclass(frozen=True)
class Finding:
    """One explanation attached to a layer (the "why" column)."""

    rule: str
    severity: str
    message: str
    numbers: Mapping[str, float | int | str] = field(default_factory=dict)
    fix: str = ""

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"finding {self.rule!r}: severity {self.severity!r} not in {SEVERITIES}")


@dataclass(frozen=True)
class LayerResult:
    """One cut point. ``depth`` is the node's position in topological order (x axis of the plots);
    ``contribution`` is the drop in the ranking metric from the previous cut."""

    rank: int
    node: str
    op_type: str
    tensor: str
    depth: int
    contribution: float
    isolated: TensorMetrics | None
    cumulative: TensorMetrics | None
    split_final: TensorMetrics | None
    flags: tuple[str, ...] = ()
    why: tuple[Finding, ...] = ()
    solo: TensorMetrics | None = None  # final outputs with only this layer on the DSP side


def _plain(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples become lists): reports compare equal after a round trip."""
    return json.loads(json.dumps(value, default=str))


@dataclass(frozen=True)
class RunInfo:
    """Everything needed to reproduce the run; no timestamps, so identical runs give identical reports."""

    qdiverge_version: str
    command: tuple[str, ...]
    model_path: str
    model_sha256: str
    encodings_path: str
    encodings_sha256: str
    target: str
    target_fields: Mapping[str, Any]
    engines: tuple[str, ...]
    inputs: str
    samples: int
    seed: int | None
    modes: tuple[str, ...]
    metric: str
    rank_by: str = "contribution"

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_fields", _plain(dict(self.target_fields)))


@dataclass(frozen=True)
class OutputSummary:
    """A final model output: emulator vs sim (the gap qdiverge hunts), sim vs float (the quantization gap)."""

    name: str
    emu_vs_sim: TensorMetrics | None
    sim_vs_float: TensorMetrics | None


@dataclass(frozen=True)
class Thresholds:
    """CI limits. Each table maps a tensor name to its limit; the key ``""`` is the default for all.

    ``sqnr_db`` and ``top1`` fail *under* the limit, ``max_lsb`` fails *over* it. ``scope`` says whether
    they apply to the final outputs, to every layer (its isolated metrics, else its cumulative ones), or
    both. ``top1`` applies to final outputs only. The ``baseline_*`` tolerances are how much worse than
    the baseline a value may get before it counts as a regression.
    """

    sqnr_db: Mapping[str, float] = field(default_factory=dict)
    max_lsb: Mapping[str, float] = field(default_factory=dict)
    top1: Mapping[str, float] = field(default_factory=dict)
    scope: str = "all"
    baseline_sqnr_tol_db: float = 0.1
    baseline_lsb_tol: float = 0.0
    baseline_top1_tol: float = 0.0

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise InputError(f"gate scope {self.scope!r} not in {SCOPES}")

    @property
    def any(self) -> bool:
        return bool(self.sqnr_db or self.max_lsb or self.top1)


def parse_limits(values: Sequence[str], option: str) -> dict[str, float]:
    """Parse ``["20", "conv3_out:15"]`` (Polygraphy style) into ``{"": 20.0, "conv3_out": 15.0}``.

    The number follows the *last* colon, so tensor names that contain colons still work.
    """
    limits: dict[str, float] = {}
    for value in values:
        name, _, number = value.rpartition(":")
        try:
            limit = float(number)
        except ValueError:
            raise InputError(f"{option}: {value!r} is not NUMBER or TENSOR:NUMBER") from None
        if not math.isfinite(limit):
            raise InputError(f"{option}: {value!r} is not a finite number")
        if option.endswith("top1") and not 0.0 <= limit <= 1.0:
            raise InputError(f"{option}: {value!r} must be a fraction in [0, 1]")
        limits[name] = limit
    return limits


@dataclass(frozen=True)
class GateFailure:
    """One broken limit. ``scope``: final | layer | run; ``kind``: threshold | regression | empty."""

    kind: str
    scope: str
    tensor: str
    statistic: str
    value: float | None
    limit: float | None
    message: str


@dataclass(frozen=True)
class GateResult:
    """The CI verdict; ``bool(result)`` is whether every limit held."""

    thresholds: Thresholds
    failures: tuple[GateFailure, ...]
    checks: int
    baseline: str | None = None  # model sha256 of the baseline report, when one was given

    @property
    def passed(self) -> bool:
        return not self.failures

    def __bool__(self) -> bool:
        return self.passed

    def for_tensor(self, scope: str, tensor: str) -> list[GateFailure]:
        return [f for f in self.failures if f.scope == scope and f.tensor == tensor]


@dataclass(frozen=True)
class WhatIfLayer:
    """A ranked layer's contribution before and after a what-if change (both as fractions of the
    original run's final divergence, so they compare directly)."""

    node: str
    before: float
    after: float


@dataclass(frozen=True)
class WhatIfResult:
    """One ``--what-if``: the final outputs with the change applied, and the top layers before/after."""

    spec: str
    summary: tuple[OutputSummary, ...]
    layers: tuple[WhatIfLayer, ...]


@dataclass(frozen=True)
class Report:
    schema_version: int
    run: RunInfo
    summary: tuple[OutputSummary, ...]  # one entry per final model output
    layers: tuple[LayerResult, ...]
    gate: GateResult | None = None
    what_if: tuple[WhatIfResult, ...] = ()
    # split-half rank correlation per ranking ("contribution", "solo"): ~1 reproducible, ~0 sampling noise
    stability: Mapping[str, float] = field(default_factory=dict)
    # top-1 accuracy against --labels ("float", "sim", "dsp"); empty without labels
    accuracy: Mapping[str, float] = field(default_factory=dict)
    # search mode: {"threshold_db", "first_layer" (node or ""), "step"}; empty without search
    search: Mapping[str, float | int | str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, path: str | Path) -> Report:
        """Read a ``--format json`` report (a ``--baseline``); ``InputError`` when it is not one."""
        from qdiverge.reports.json_ import read_report

        return read_report(path)

    def with_gate(self, thresholds: Thresholds, baseline: Report | None = None) -> Report:
        return replace(self, gate=evaluate_gate(self, thresholds, baseline))


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


class _Gate:
    """Collects failures while the checks run."""

    def __init__(self, th: Thresholds) -> None:
        self.th = th
        self.failures: list[GateFailure] = []
        self.checks = 0

    def limit(self, table: Mapping[str, float], tensor: str) -> float | None:
        return table.get(tensor, table.get(""))

    def check(self, scope: str, tensor: str, what: str, m: TensorMetrics) -> None:
        """``what`` names the comparison in messages, e.g. "emulator-vs-sim" or "isolated"."""
        for stat, table in (
            ("sqnr_db", self.th.sqnr_db),
            ("max_lsb", self.th.max_lsb),
            ("top1", self.th.top1),
        ):
            limit = self.limit(table, tensor)
            value = getattr(m, stat)
            if limit is None or value is None or (stat == "top1" and scope != "final"):
                continue
            self.checks += 1
            over = stat == "max_lsb"
            ok = value <= limit if over else value >= limit  # NaN fails both ways
            if not ok:
                sign = ">" if over else "<"
                self.fail(
                    "threshold",
                    scope,
                    tensor,
                    stat,
                    value,
                    limit,
                    f"{tensor}: {what} {stat} {_fmt(value)} {sign} {limit:g}",
                )

    def fail(
        self,
        kind: str,
        scope: str,
        tensor: str,
        stat: str,
        value: float | None,
        limit: float | None,
        message: str,
    ) -> None:
        self.failures.append(GateFailure(kind, scope, tensor, stat, value, limit, message))

    def regression(
        self,
        scope: str,
        tensor: str,
        what: str,
        stat: str,
        old: TensorMetrics | None,
        new: TensorMetrics | None,
    ) -> None:
        if old is None or new is None:
            return
        attr, higher_better = METRICS[stat]
        before, after = getattr(old, attr), getattr(new, attr)
        if before is None or after is None:
            return
        tol = {"sqnr": self.th.baseline_sqnr_tol_db, "max_lsb": self.th.baseline_lsb_tol}.get(
            stat, self.th.baseline_top1_tol
        )
        self.checks += 1
        if before == after:  # also inf == inf, which the subtraction below cannot handle
            return
        worse = before - after if higher_better else after - before
        if not worse <= tol:  # NaN on either side counts as worse
            self.fail(
                "regression",
                scope,
                tensor,
                attr,
                after,
                before,
                f"{tensor}: {what} {attr} regressed {_fmt(before)} -> {_fmt(after)} vs baseline",
            )


def evaluate_gate(report: Report, thresholds: Thresholds, baseline: Report | None = None) -> GateResult:
    """Check ``thresholds`` on the final outputs and/or layers, and regressions against ``baseline``."""
    gate = _Gate(thresholds)
    th = thresholds
    if th.scope in ("final", "all"):
        for out in report.summary:
            if out.emu_vs_sim is not None:
                gate.check("final", out.name, "emulator-vs-sim", out.emu_vs_sim)
    if th.scope in ("layers", "all"):
        for layer in report.layers:
            metrics, what = (
                (layer.isolated, "isolated") if layer.isolated else (layer.cumulative, "cumulative")
            )
            if metrics is not None:
                gate.check("layer", layer.tensor, what, metrics)
    if th.top1 and not any(o.emu_vs_sim and o.emu_vs_sim.top1 is not None for o in report.summary):
        gate.fail(
            "empty",
            "run",
            "",
            "top1",
            None,
            None,
            "top-1 limit set but no output was compared as a classifier",
        )
    known = {o.name for o in report.summary} | {la.tensor for la in report.layers}
    for name in sorted({*th.sqnr_db, *th.max_lsb, *th.top1} - {""} - known):
        gate.fail(
            "empty", "run", name, "", None, None, f"a limit names tensor {name!r}, which is not in the report"
        )
    if baseline is not None:
        old_outputs = {o.name: o for o in baseline.summary}
        for out in report.summary:
            old = old_outputs.get(out.name)
            for stat in ("sqnr", "max_lsb", "top1"):
                gate.regression(
                    "final", out.name, "emulator-vs-sim", stat, old and old.emu_vs_sim, out.emu_vs_sim
                )
        old_layers = {la.tensor: la for la in baseline.layers}
        for layer in report.layers:
            old_layer = old_layers.get(layer.tensor)
            if old_layer is not None:
                gate.regression(
                    "layer", layer.tensor, "isolated", "max_lsb", old_layer.isolated, layer.isolated
                )
                gate.regression(
                    "layer", layer.tensor, "cumulative", "sqnr", old_layer.cumulative, layer.cumulative
                )
    if (th.any or baseline is not None) and gate.checks == 0:
        gate.fail(
            "empty", "run", "", "", None, None, "nothing was checked: no compared tensor matches the limits"
        )
    return GateResult(
        thresholds,
        tuple(gate.failures),
        gate.checks,
        baseline.run.model_sha256 if baseline is not None else None,
    )
