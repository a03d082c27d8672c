"""The ranked table for the terminal (``--format table``, the default)."""

from __future__ import annotations

from tabulate import tabulate

from qdiverge.reports._format import DEFAULT_TOP, HEADERS, layer_row, summary_line, top_layers, verdict
from qdiverge.reports.model import Report


def render(report: Report, top: int | None = DEFAULT_TOP) -> str:
    layers = top_layers(report, top)
    lines = [
        f"qdiverge {report.run.qdiverge_version} | target {report.run.target} | metric {report.run.metric}"
    ]
    lines += [summary_line(out) for out in report.summary]
    if layers:
        lines += ["", tabulate([layer_row(la) for la in layers], headers=HEADERS, disable_numparse=True)]
    if len(layers) < len(report.layers):
        lines.append(f"({len(report.layers) - len(layers)} more layers; --top to show more)")
    lines += ["", verdict(report)]
    if report.gate is not None:
        lines += [f"  - {f.message}" for f in report.gate.failures]
    return "\n".join(lines) + "\n"
