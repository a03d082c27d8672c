"""The ranked table for the terminal (``--format table``, the default)."""

from __future__ import annotations

from tabulate import tabulate

from qdiverge.reports._format import (
    DEFAULT_TOP,
    FINDING_HEADERS,
    HEADERS,
    dsp_label,
    finding_rows,
    fmt_pct,
    is_check,
    layer_row,
    reading_notes,
    summary_line,
    top_layers,
    verdict,
)
from qdiverge.reports.model import Report


def _check(report: Report, top: int | None) -> str:
    rows = finding_rows(report, top)
    lines = [f"qdiverge {report.run.qdiverge_version} | target {report.run.target} | static checks"]
    if rows:
        lines += [
            "",
            tabulate(
                rows,
                headers=FINDING_HEADERS,
                disable_numparse=True,
                maxcolwidths=[None, None, None, 40, 70, 50],
            ),
        ]
    else:
        lines.append("no findings")
    return "\n".join(lines) + "\n"


def _what_if(report: Report) -> list[str]:
    lines = []
    for w in report.what_if:
        lines += ["", f"what-if {w.spec}:"]
        lines += [f"  {summary_line(out, dsp_label(report))}" for out in w.summary]
        lines += [
            f"  {layer.node}: contribution {fmt_pct(layer.before)} -> {fmt_pct(layer.after)}"
            for layer in w.layers
        ]
    return lines


def render(report: Report, top: int | None = DEFAULT_TOP) -> str:
    if is_check(report):
        return _check(report, top)
    layers = top_layers(report, top)
    lines = [
        f"qdiverge {report.run.qdiverge_version} | target {report.run.target} | metric {report.run.metric}"
    ]
    lines += [summary_line(out, dsp_label(report)) for out in report.summary]
    lines += reading_notes(report)
    if layers:
        lines += [
            "",
            tabulate(
                [layer_row(la, split="split" in report.run.modes) for la in layers],
                headers=HEADERS,
                disable_numparse=True,
            ),
        ]
    if len(layers) < len(report.layers):
        lines.append(f"({len(report.layers) - len(layers)} more layers; --top to show more)")
    lines += _what_if(report)
    lines += ["", verdict(report)]
    if report.gate is not None:
        lines += [f"  - {f.message}" for f in report.gate.failures]
    return "\n".join(lines) + "\n"
