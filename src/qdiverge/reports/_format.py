"""Display strings shared by the human-readable writers (table, markdown, html).

The machine-readable writers (json, csv) never round; these helpers do, for people.
"""

from __future__ import annotations

import math

from qdiverge.metrics import TensorMetrics
from qdiverge.reports.model import LayerResult, OutputSummary, Report

HEADERS = ("rank", "node", "op", "tensor", "contribution", "solo SQNR", "iso LSB", "cum SQNR", "flags", "why")
FINDING_HEADERS = ("#", "severity", "rule", "node", "finding", "fix")
DEFAULT_TOP = 20  # what fits a terminal and a pull-request comment
UNSTABLE = 0.5  # split-half rank correlation below which a ranking is called noise


def elide(name: str, width: int = 40) -> str:
    """Shorten the middle of a long name: the start says where in the model, the end says which tensor."""
    if len(name) <= width:
        return name
    head = (width - 1) // 2
    return name[:head] + "…" + name[len(name) - (width - 1 - head) :]


def fmt_num(v: float | None, digits: int = 4) -> str:
    if v is None:
        return "-"
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}g}"


def fmt_db(v: float | None) -> str:
    return fmt_num(v) if v is None or not math.isfinite(v) else f"{v:.2f} dB"


def fmt_pct(v: float | None) -> str:
    return fmt_num(v) if v is None or not math.isfinite(v) else f"{100 * v:.2f}%"


def why_text(layer: LayerResult, width: int = 60) -> str:
    if not layer.why:
        return ""
    more = f" (+{len(layer.why) - 1} more)" if len(layer.why) > 1 else ""
    return elide(f"{layer.why[0].rule}: {layer.why[0].message}", width) + more


def layer_row(layer: LayerResult, width: int = 40, split: bool = True) -> list[str]:
    """A table row; ``split=False`` (no split mode ran) shows contributions as not measured."""
    iso = layer.isolated
    cum = layer.cumulative
    return [
        str(layer.rank),
        elide(layer.node, width),
        layer.op_type,
        elide(layer.tensor, width),
        fmt_pct(layer.contribution) if split else "-",
        fmt_db(layer.solo.sqnr_db if layer.solo else None),
        fmt_num(iso.max_lsb if iso else None),
        fmt_db(cum.sqnr_db if cum else None),
        ",".join(layer.flags),
        why_text(layer),
    ]


def top_layers(report: Report, top: int | None) -> tuple[LayerResult, ...]:
    layers = tuple(sorted(report.layers, key=lambda la: la.rank))
    return layers if top is None else layers[: max(top, 0)]


def _gap(label: str, m: TensorMetrics | None) -> str:
    if m is None:
        return f"{label}: not compared"
    top1 = f", top-1 {fmt_pct(m.top1)}" if m.top1 is not None else ""
    return f"{label}: SQNR {fmt_db(m.sqnr_db)}{top1}"


def dsp_label(report: Report) -> str:
    """What ran the DSP side: ``emulator``, ``qnn-htp`` (the real backend) or ``device``."""
    engine = next((e for e in report.run.engines if e != "sim"), "emulate")
    return {"emulate": "emulator"}.get(engine.partition(":")[0], engine.partition(":")[0])


def summary_line(out: OutputSummary, dsp: str = "emulator") -> str:
    """Both gaps side by side: what the DSP adds on top of the sim, and what quantization costs."""
    return f"{out.name}: {_gap(f'{dsp} vs sim', out.emu_vs_sim)} | {_gap('sim vs float', out.sim_vs_float)}"


def verdict(report: Report) -> str:
    gate = report.gate
    if gate is None:
        return "gate: no thresholds given"
    if gate.passed:
        return f"gate: PASSED ({gate.checks} check{'' if gate.checks == 1 else 's'})"
    return f"gate: FAILED ({len(gate.failures)} of {gate.checks} checks)"


def is_check(report: Report) -> bool:
    """A ``qdiverge check`` report: rows are nodes with findings, no measurements."""
    return tuple(report.run.modes) == ("check",)


def finding_rows(report: Report, top: int | None, width: int = 40) -> list[list[str]]:
    """One row per finding (``check`` reports), worst first, at most ``top`` rows."""
    rows = []
    for layer in top_layers(report, None):
        for f in layer.why:
            rows.append([str(len(rows) + 1), f.severity, f.rule, elide(layer.node, width), f.message, f.fix])
    return rows if top is None else rows[: max(top, 0)]


def stability_line(report: Report) -> str | None:
    """A caution when the ranking in use does not reproduce across halves of the samples."""
    ranking = report.run.rank_by
    used = report.stability.get(ranking)
    if used is None or used >= UNSTABLE:
        return None
    better = [
        (v, k)
        for k, v in report.stability.items()
        if k != ranking and not k.endswith("_top") and v >= UNSTABLE
    ]
    hint = f"; --rank-by {max(better)[1]} reproduces ({max(better)[0]:.2f})" if better else ""
    if report.stability.get(f"{ranking}_top") == 1.0:
        lead = top_layers(report, 1)[0].node
        return (
            f"{lead} leads on both halves of the samples, but the order below it is within sampling noise"
            f" (split-half rank correlation {used:.2f}){hint}"
        )
    return (
        f"caution: the {ranking} ranking does not reproduce across halves of the samples (rank"
        f" correlation {used:.2f}): differences between layers are within sampling noise{hint}"
    )


def concentration_line(report: Report) -> str | None:
    """Whether the divergence has one culprit or is spread out (split-mode contributions), in words."""
    if report.run.rank_by != "contribution" or "split" not in report.run.modes or not report.layers:
        return None
    shares = sorted((la.contribution for la in report.layers), reverse=True)
    top, top5 = shares[0], sum(max(x, 0.0) for x in shares[:5])
    lead = top_layers(report, 1)[0]
    if top >= 0.5:
        return f"one layer dominates: {lead.node} adds {fmt_pct(top)} of the divergence"
    if top5 < 0.5:
        return (
            f"no single culprit: the top 5 layers add {fmt_pct(top5)} of the divergence; it is spread over"
            " many layers (per-op rounding differences); see solo SQNR for each layer alone"
        )
    return f"top layer {lead.node} adds {fmt_pct(top)}; the top 5 add {fmt_pct(top5)}"


def accuracy_line(report: Report) -> str | None:
    """Top-1 accuracy against the user's labels, float / sim / DSP side by side."""
    acc = report.accuracy
    if not acc:
        return None
    dsp = next((e for e in report.run.engines if e != "sim"), "dsp")
    parts = [
        f"float {fmt_pct(acc.get('float'))}",
        f"sim {fmt_pct(acc.get('sim'))}",
        f"{dsp} {fmt_pct(acc.get('dsp'))}",
    ]
    return "top-1 accuracy against --labels: " + ", ".join(parts)


def search_line(report: Report) -> str | None:
    """Where search mode stopped."""
    if not report.search:
        return None
    where = report.search.get("first_layer") or "no layer"
    return f"search: first cut where a sample's final-output SQNR < {report.search['threshold_db']} dB: after {where}"


def reading_notes(report: Report) -> list[str]:
    """How far to trust the ranking, in words: whether one layer dominates, and whether it reproduces."""
    accuracy = [line for line in (accuracy_line(report), search_line(report)) if line]
    caution = stability_line(report)
    if caution and caution.startswith("caution"):
        return [*accuracy, caution]  # the concentration of a noisy ranking means nothing
    return [*accuracy, *(line for line in (concentration_line(report), caution) if line)]
