"""The JSON report (schema ``docs/report-schema.json``) and its reader for ``--baseline``.

Byte-identical for identical runs: keys sorted, two-space indent, ASCII only, floats in Python's
shortest round-trip form (so a baseline reads back bit-exactly), no timestamps. JSON has no
infinity or NaN, so those are written as the strings ``"inf"``, ``"-inf"`` and ``"nan"``.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

from qdiverge.errors import InputError
from qdiverge.metrics import TensorMetrics
from qdiverge.reports.model import (
    SCHEMA_VERSION,
    SCOPES,
    Finding,
    GateFailure,
    GateResult,
    LayerResult,
    OutputSummary,
    Report,
    RunInfo,
    Thresholds,
    WhatIfLayer,
    WhatIfResult,
)

_OPTIONAL_METRICS = ("max_lsb", "mean_lsb", "top1", "topk")
_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _num(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def _plain(v: Any) -> Any:
    """Dataclasses, mappings and tuples as JSON values, non-finite floats as strings."""
    if hasattr(v, "__dataclass_fields__"):
        return {f.name: _plain(getattr(v, f.name)) for f in fields(v)}
    if isinstance(v, dict) or hasattr(v, "items"):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if hasattr(v, "item"):  # numpy scalar
        v = v.item()
    return _num(float(v)) if isinstance(v, float) else v


def report_to_dict(report: Report) -> dict[str, Any]:
    data = _plain(report)
    if report.gate is not None:
        data["gate"]["passed"] = report.gate.passed  # the verdict, so readers need not recompute it
    return data


def render(report: Report, top: int | None = None) -> str:
    """The whole report as JSON (``top`` is ignored: the JSON always carries every layer)."""
    return (
        json.dumps(report_to_dict(report), sort_keys=True, indent=2, ensure_ascii=True, allow_nan=False)
        + "\n"
    )


class _Bad(Exception):
    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")


def _get(obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, dict):
        raise _Bad(where, "expected an object")
    if key not in obj:
        raise _Bad(where, f"missing {key!r}")
    return obj[key]


def _float(v: Any, where: str, optional: bool = False) -> float | None:
    if v is None and optional:
        return None
    if isinstance(v, str) and v in _NONFINITE:
        return _NONFINITE[v]
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _Bad(where, f"expected a number, got {v!r}")
    return float(v)


def _typed(v: Any, kind: type | tuple[type, ...], where: str) -> Any:
    if (isinstance(v, bool) and kind is not bool) or not isinstance(v, kind):
        raise _Bad(where, f"expected {getattr(kind, '__name__', kind)}, got {v!r}")
    return v


def _metrics(v: Any, where: str) -> TensorMetrics | None:
    if v is None:
        return None
    kw: dict[str, Any] = {}
    for f in fields(TensorMetrics):
        raw = _get(v, f.name, where)
        if f.name in ("elements", "k"):
            kw[f.name] = None if raw is None and f.name == "k" else _typed(raw, int, f"{where}.{f.name}")
        else:
            kw[f.name] = _float(raw, f"{where}.{f.name}", optional=f.name in _OPTIONAL_METRICS)
    return TensorMetrics(**kw)


def _strings(v: Any, where: str) -> tuple[str, ...]:
    return tuple(_typed(x, str, f"{where}[{i}]") for i, x in enumerate(_typed(v, list, where)))


def _finding(v: Any, where: str) -> Finding:
    try:
        return Finding(
            rule=_typed(_get(v, "rule", where), str, f"{where}.rule"),
            severity=_typed(_get(v, "severity", where), str, f"{where}.severity"),
            message=_typed(_get(v, "message", where), str, f"{where}.message"),
            numbers={
                k: _NONFINITE.get(x, x) if isinstance(x, str) else x
                for k, x in _typed(_get(v, "numbers", where), dict, f"{where}.numbers").items()
            },
            fix=_typed(_get(v, "fix", where), str, f"{where}.fix"),
        )
    except ValueError as exc:
        raise _Bad(where, str(exc)) from None


def _layer(v: Any, where: str) -> LayerResult:
    g = lambda key: _get(v, key, where)  # noqa: E731
    return LayerResult(
        rank=_typed(g("rank"), int, f"{where}.rank"),
        node=_typed(g("node"), str, f"{where}.node"),
        op_type=_typed(g("op_type"), str, f"{where}.op_type"),
        tensor=_typed(g("tensor"), str, f"{where}.tensor"),
        depth=_typed(g("depth"), int, f"{where}.depth"),
        contribution=_float(g("contribution"), f"{where}.contribution"),  # type: ignore[arg-type]
        isolated=_metrics(g("isolated"), f"{where}.isolated"),
        cumulative=_metrics(g("cumulative"), f"{where}.cumulative"),
        split_final=_metrics(g("split_final"), f"{where}.split_final"),
        solo=_metrics(g("solo"), f"{where}.solo"),
        flags=_strings(g("flags"), f"{where}.flags"),
        why=tuple(
            _finding(x, f"{where}.why[{i}]") for i, x in enumerate(_typed(g("why"), list, f"{where}.why"))
        ),
    )


def _run(v: Any, where: str) -> RunInfo:
    g = lambda key: _get(v, key, where)  # noqa: E731
    s = lambda key: _typed(g(key), str, f"{where}.{key}")  # noqa: E731
    seed = g("seed")
    return RunInfo(
        qdiverge_version=s("qdiverge_version"),
        command=_strings(g("command"), f"{where}.command"),
        model_path=s("model_path"),
        model_sha256=s("model_sha256"),
        encodings_path=s("encodings_path"),
        encodings_sha256=s("encodings_sha256"),
        target=s("target"),
        target_fields=_typed(g("target_fields"), dict, f"{where}.target_fields"),
        engines=_strings(g("engines"), f"{where}.engines"),
        inputs=s("inputs"),
        samples=_typed(g("samples"), int, f"{where}.samples"),
        seed=None if seed is None else _typed(seed, int, f"{where}.seed"),
        modes=_strings(g("modes"), f"{where}.modes"),
        metric=s("metric"),
        rank_by=s("rank_by"),
    )


def _limits(v: Any, where: str) -> dict[str, float]:
    return {k: _float(x, f"{where}.{k}") for k, x in _typed(v, dict, where).items()}  # type: ignore[misc]


def _gate(v: Any, where: str) -> GateResult | None:
    if v is None:
        return None
    t = _get(v, "thresholds", where)
    tw = f"{where}.thresholds"
    if _get(t, "scope", tw) not in SCOPES:
        raise _Bad(f"{tw}.scope", f"not in {SCOPES}")
    thresholds = Thresholds(
        sqnr_db=_limits(_get(t, "sqnr_db", tw), f"{tw}.sqnr_db"),
        max_lsb=_limits(_get(t, "max_lsb", tw), f"{tw}.max_lsb"),
        top1=_limits(_get(t, "top1", tw), f"{tw}.top1"),
        scope=_typed(_get(t, "scope", tw), str, f"{tw}.scope"),
        baseline_sqnr_tol_db=_float(_get(t, "baseline_sqnr_tol_db", tw), tw),  # type: ignore[arg-type]
        baseline_lsb_tol=_float(_get(t, "baseline_lsb_tol", tw), tw),  # type: ignore[arg-type]
        baseline_top1_tol=_float(_get(t, "baseline_top1_tol", tw), tw),  # type: ignore[arg-type]
    )
    failures = []
    for i, f in enumerate(_typed(_get(v, "failures", where), list, f"{where}.failures")):
        fw = f"{where}.failures[{i}]"
        failures.append(
            GateFailure(
                kind=_typed(_get(f, "kind", fw), str, fw),
                scope=_typed(_get(f, "scope", fw), str, fw),
                tensor=_typed(_get(f, "tensor", fw), str, fw),
                statistic=_typed(_get(f, "statistic", fw), str, fw),
                value=_float(_get(f, "value", fw), fw, optional=True),
                limit=_float(_get(f, "limit", fw), fw, optional=True),
                message=_typed(_get(f, "message", fw), str, fw),
            )
        )
    baseline = _get(v, "baseline", where)
    return GateResult(
        thresholds,
        tuple(failures),
        _typed(_get(v, "checks", where), int, f"{where}.checks"),
        None if baseline is None else _typed(baseline, str, f"{where}.baseline"),
    )


def _summary(items: list, prefix: str) -> list[OutputSummary]:
    out = []
    for i, o in enumerate(items):
        w = f"{prefix}{'.' if prefix else ''}summary[{i}]"
        out.append(
            OutputSummary(
                name=_typed(_get(o, "name", w), str, f"{w}.name"),
                emu_vs_sim=_metrics(_get(o, "emu_vs_sim", w), f"{w}.emu_vs_sim"),
                sim_vs_float=_metrics(_get(o, "sim_vs_float", w), f"{w}.sim_vs_float"),
            )
        )
    return out


def report_from_dict(data: Any) -> Report:
    """Rebuild a ``Report``; raises ``_Bad`` naming the JSON path of the first problem."""
    version = _get(data, "schema_version", "report")
    if version != SCHEMA_VERSION:
        raise _Bad("schema_version", f"is {version!r}; this qdiverge reads version {SCHEMA_VERSION}")
    summary = _summary(_typed(_get(data, "summary", "report"), list, "summary"), "")
    layers = _typed(_get(data, "layers", "report"), list, "layers")
    what_if = []
    for i, w in enumerate(_typed(data.get("what_if", []), list, "what_if")):
        where = f"what_if[{i}]"
        what_if.append(
            WhatIfResult(
                spec=_typed(_get(w, "spec", where), str, f"{where}.spec"),
                summary=tuple(_summary(_typed(_get(w, "summary", where), list, f"{where}.summary"), where)),
                layers=tuple(
                    WhatIfLayer(
                        node=_typed(
                            _get(x, "node", f"{where}.layers[{j}]"), str, f"{where}.layers[{j}].node"
                        ),
                        before=_float(
                            _get(x, "before", f"{where}.layers[{j}]"), f"{where}.layers[{j}].before"
                        ),
                        after=_float(_get(x, "after", f"{where}.layers[{j}]"), f"{where}.layers[{j}].after"),
                    )
                    for j, x in enumerate(_typed(_get(w, "layers", where), list, f"{where}.layers"))
                ),
            )
        )
    return Report(
        schema_version=version,
        run=_run(_get(data, "run", "report"), "run"),
        summary=tuple(summary),
        layers=tuple(_layer(x, f"layers[{i}]") for i, x in enumerate(layers)),
        gate=_gate(_get(data, "gate", "report"), "gate"),
        what_if=tuple(what_if),
        search=dict(_typed(data.get("search", {}), dict, "search")),
        accuracy={
            str(k): _float(v, f"accuracy.{k}")
            for k, v in _typed(data.get("accuracy", {}), dict, "accuracy").items()
        },
        stability={
            str(k): _float(v, f"stability.{k}")
            for k, v in _typed(data.get("stability", {}), dict, "stability").items()
        },
    )


def read_report(path: str | Path) -> Report:
    """Read a JSON report; ``InputError`` naming the file and the first problem if it is not one."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read report: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not a JSON report: {exc}") from None
    try:
        return report_from_dict(data)
    except _Bad as exc:
        raise InputError(f"{path}: not a qdiverge report: {exc}") from None
