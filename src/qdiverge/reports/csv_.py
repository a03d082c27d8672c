"""One CSV row per layer with every metric of every comparison (for spreadsheets and pandas).

Numbers are written unrounded (shortest round-trip form; ``inf``/``nan`` as words), empty cells mean
"not measured".
"""

from __future__ import annotations

import csv
import io
from dataclasses import fields

from qdiverge.metrics import TensorMetrics
from qdiverge.reports.model import Report

_KINDS = ("isolated", "cumulative", "split_final", "solo")
_METRIC_FIELDS = tuple(f.name for f in fields(TensorMetrics))
COLUMNS = (
    "rank",
    "node",
    "op_type",
    "tensor",
    "depth",
    "contribution",
    "flags",
    "why",
    *(f"{kind}_{name}" for kind in _KINDS for name in _METRIC_FIELDS),
)


def _cell(v: object) -> str:
    return "" if v is None else repr(v) if isinstance(v, float) else str(v)


def render(report: Report, top: int | None = None) -> str:
    """Every layer in rank order (``top`` limits the rows)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    layers = sorted(report.layers, key=lambda la: la.rank)
    for la in layers if top is None else layers[:top]:
        row: list[object] = [
            la.rank,
            la.node,
            la.op_type,
            la.tensor,
            la.depth,
            la.contribution,
            ";".join(la.flags),
            ";".join(f.rule for f in la.why),
        ]
        for kind in _KINDS:
            m = getattr(la, kind)
            row += [None if m is None else getattr(m, name) for name in _METRIC_FIELDS]
        writer.writerow([_cell(v) for v in row])
    return out.getvalue()
