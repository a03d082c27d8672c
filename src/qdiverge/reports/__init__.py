"""Report writers: one module per format, all reading the same ``Report``.

``write_report`` renders first and then writes atomically (``qdiverge.fileio``: a temp file in the
target's directory, then ``os.replace``), so an interrupted run never leaves a truncated report.
"""

from __future__ import annotations

import sys
from importlib import import_module
from pathlib import Path

from qdiverge.errors import InputError
from qdiverge.fileio import atomic_write_text
from qdiverge.reports.model import Report

# format -> module with ``render(report, top) -> str``; imported on use to keep ``--help`` fast
FORMATS = {
    "table": "table",
    "json": "json_",
    "csv": "csv_",
    "markdown": "markdown",
    "junit": "junit",
    "html": "html",
}
# formats whose rows --top limits (read on a terminal); files for tools always carry every layer
TOP_FORMATS = ("table", "markdown")


def render(report: Report, fmt: str, top: int | None = None) -> str:
    """``report`` as ``fmt``; ``top=None`` keeps the writer's own default (20 rows for table/markdown)."""
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    module = import_module(f"qdiverge.reports.{FORMATS[fmt]}")
    return module.render(report, top) if top is not None else module.render(report)


def write_report(report: Report, fmt: str, path: str | Path | None = None, top: int | None = None) -> None:
    """Render ``report`` as ``fmt`` to ``path`` (atomically), or to stdout when ``path`` is None.

    ``top`` (the CLI's ``--top``) shortens only the formats people read on a terminal (``TOP_FORMATS``);
    CSV, HTML, JSON and JUnit always carry every layer.
    """
    text = render(report, fmt, top if fmt in TOP_FORMATS else None)
    if path is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write_text(path, text)
