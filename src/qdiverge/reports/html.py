"""One self-contained HTML file: inline CSS, inline SVG charts, no scripts, no external assets.

Every name from the model goes through ``html.escape``, so a hostile tensor name cannot inject markup.
"""

from __future__ import annotations

from html import escape

from qdiverge.reports import svg
from qdiverge.reports._format import (
    HEADERS,
    dsp_label,
    layer_row,
    reading_notes,
    summary_line,
    top_layers,
    verdict,
)
from qdiverge.reports.model import Report

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:12px 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
td{overflow-wrap:anywhere;max-width:28em}.charts{display:flex;flex-wrap:wrap;gap:12px}
th{background:#f2f2f2}tr.fail td{background:#fde8e8}.pass{color:#176f2c}.failv{color:#b00020}
svg{display:block;margin:12px 0;border:1px solid #eee}.t{font-size:13px;font-weight:600}.l{font-size:11px}
.ax{stroke:#555}.b{fill:#4a78b5}.ln{fill:none;stroke:#4a78b5;stroke-width:1.5}.p{fill:#4a78b5}.nf{fill:#b00020}
code{background:#f6f6f6;padding:0 3px}
"""


def _table(headers: list[str] | tuple[str, ...], rows: list[tuple[list[str], bool]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        ('<tr class="fail">' if failed else "<tr>")
        + "".join(f"<td>{escape(c)}</td>" for c in cells)
        + "</tr>"
        for cells, failed in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render(report: Report, top: int | None = None) -> str:
    """The table (``top`` rows, default all) and three charts over all layers."""
    run = report.run
    gate = report.gate
    by_depth = sorted(report.layers, key=lambda la: la.depth)
    by_rank = sorted(report.layers, key=lambda la: la.rank)
    names = [f"{la.node} -> {la.tensor}" for la in by_depth]
    charts = [
        svg.bar_chart(
            "Isolated error per layer (along depth)",
            "max |diff| [LSB]",
            names,
            [la.isolated.max_lsb if la.isolated else None for la in by_depth],
        ),
        svg.line_chart(
            "Cumulative SQNR along depth",
            "SQNR [dB]",
            names,
            [la.cumulative.sqnr_db if la.cumulative else None for la in by_depth],
        ),
        svg.bar_chart(
            f"Contribution by rank ({run.metric})",
            "contribution",
            [f"#{la.rank} {la.node}" for la in by_rank],
            [la.contribution for la in by_rank],
        ),
    ]
    failed = {f.tensor for f in gate.failures if f.scope == "layer"} if gate is not None else set()
    rows = [
        (layer_row(la, width=60, split="split" in report.run.modes), la.tensor in failed)
        for la in top_layers(report, top)
    ]
    meta = [
        ("qdiverge", run.qdiverge_version),
        ("command", " ".join(run.command)),
        ("model", f"{run.model_path} (sha256 {run.model_sha256})"),
        ("encodings", f"{run.encodings_path} (sha256 {run.encodings_sha256})"),
        ("target", run.target),
        ("engines", ", ".join(run.engines)),
        ("inputs", run.inputs),
        ("samples", str(run.samples)),
        ("seed", str(run.seed)),
        ("modes", ", ".join(run.modes)),
        ("metric", run.metric),
        ("ranked by", run.rank_by),
    ]
    verdict_cls = "" if gate is None else ("pass" if gate.passed else "failv")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>qdiverge report: {escape(run.model_path)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f'<h1>qdiverge report</h1><p class="{verdict_cls}"><strong>{escape(verdict(report))}</strong></p>',
        "<ul>"
        + "".join(f"<li>{escape(summary_line(o, dsp_label(report)))}</li>" for o in report.summary)
        + "".join(f"<li>{escape(note)}</li>" for note in reading_notes(report))
        + "</ul>",
    ]
    if gate is not None and gate.failures:
        parts.append(
            "<h2>Gate failures</h2><ul>"
            + "".join(f"<li>{escape(f.message)}</li>" for f in gate.failures)
            + "</ul>"
        )
    parts += [  # the overview first: plots, then the full ranked table
        "<h2>Plots</h2>",
        '<div class="charts">',
        *charts,
        "</div>",
        "<h2>Ranked layers</h2>",
        _table(HEADERS, rows),
        "<h2>Run</h2>",
        _table(("field", "value"), [([k, v], False) for k, v in meta]),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
