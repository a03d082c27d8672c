"""JUnit XML for CI dashboards: one test case per layer plus one for the final outputs.

A layer's case fails when the gate found a failure on its tensor (a per-layer threshold or a
regression against the baseline); the ``final outputs`` case carries the final-output and run-level
failures. No timestamps or durations, so identical runs give identical files.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from qdiverge.reports._format import dsp_label, summary_line
from qdiverge.reports.model import GateFailure, Report


def _case(suite: ET.Element, classname: str, name: str, failures: list[GateFailure], text: str) -> None:
    case = ET.SubElement(suite, "testcase", classname=classname, name=name, time="0")
    if failures:
        kinds = sorted({f.kind for f in failures})
        failure = ET.SubElement(case, "failure", message=failures[0].message, type=",".join(kinds))
        failure.text = "\n".join(f.message for f in failures)
    elif text:
        ET.SubElement(case, "system-out").text = text


def render(report: Report, top: int | None = None) -> str:
    """Every layer is a case (``top`` is ignored: a CI gate must see all of them)."""
    gate = report.gate
    suite = ET.Element("testsuite", name="qdiverge", time="0")
    for la in sorted(report.layers, key=lambda la: la.rank):
        failures = gate.for_tensor("layer", la.tensor) if gate is not None else []
        name = f"{la.rank:04d} {la.node} ({la.op_type}) -> {la.tensor}"
        _case(suite, "qdiverge.layers", name, failures, "")
    final = [f for f in gate.failures if f.scope in ("final", "run")] if gate is not None else []
    _case(
        suite,
        "qdiverge.gate",
        "final outputs",
        final,
        "\n".join(summary_line(o, dsp_label(report)) for o in report.summary),
    )
    cases = suite.findall("testcase")
    failed = sum(1 for c in cases if c.find("failure") is not None)
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(failed))
    suite.set("errors", "0")
    root = ET.Element("testsuites", name="qdiverge", tests=str(len(cases)), failures=str(failed), errors="0")
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
