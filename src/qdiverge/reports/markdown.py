"""A Markdown report sized for a pull-request comment: summary, top-K table, gate verdict."""

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

MAX_FAILURES = 20  # GitHub comments stop at 65536 characters


def _cell(text: str) -> str:
    """Escape what would break a table cell or turn into markup."""
    for ch in "\\|*_`<>[]":
        text = text.replace(ch, "\\" + ch)
    return text


def render(report: Report, top: int | None = DEFAULT_TOP) -> str:
    run = report.run
    gate = report.gate
    mark = "" if gate is None else (" ✅" if gate.passed else " ❌")
    lines = [f"### qdiverge: {_cell(verdict(report))}{mark}", ""]
    lines.append(
        f"Target `{run.target}`, metric `{run.metric}`, {run.samples} sample(s),"
        f" model `{run.model_sha256[:12]}`."
    )
    lines.append("")
    lines += [f"- {_cell(summary_line(out, dsp_label(report)))}" for out in report.summary]
    lines += [f"- {_cell(note)}" for note in reading_notes(report)]
    if is_check(report):
        rows = [[_cell(c) for c in row] for row in finding_rows(report, top)]
        lines += ["", tabulate(rows, headers=FINDING_HEADERS, tablefmt="github", disable_numparse=True)]
        return "\n".join(lines) + "\n"
    layers = top_layers(report, top)
    if layers:
        rows = [[_cell(c) for c in layer_row(la, split="split" in report.run.modes)] for la in layers]
        lines += ["", tabulate(rows, headers=HEADERS, tablefmt="github", disable_numparse=True)]
        if len(layers) < len(report.layers):
            lines.append(f"\n_{len(report.layers) - len(layers)} more layers in the full report._")
    for w in report.what_if:
        lines += ["", f"**what-if `{_cell(w.spec)}`**", ""]
        lines += [f"- {_cell(summary_line(out, dsp_label(report)))}" for out in w.summary]
        lines += [f"- `{_cell(la.node)}`: {fmt_pct(la.before)} → {fmt_pct(la.after)}" for la in w.layers[:5]]
    if gate is not None and gate.failures:
        lines += ["", "<details><summary>Gate failures</summary>", ""]
        lines += [f"- {_cell(f.message)}" for f in gate.failures[:MAX_FAILURES]]
        if len(gate.failures) > MAX_FAILURES:
            lines.append(f"- … and {len(gate.failures) - MAX_FAILURES} more")
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"
