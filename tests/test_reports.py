"""Report writers and the CI gate on a synthetic Report."""

import csv
import io
import json
import math
import xml.etree.ElementTree as ET
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from qdiverge.errors import InputError
from qdiverge.metrics import compare
from qdiverge.reports import FORMATS, render, write_report
from qdiverge.reports.model import (
    FLAG_DERIVED_ENCODING,
    SCHEMA_VERSION,
    Finding,
    LayerResult,
    OutputSummary,
    Report,
    RunInfo,
    Thresholds,
    evaluate_gate,
    parse_limits,
)

SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "report-schema.json"


def _metrics(shift: float, lsb: float = 0.1, n: int = 8, topk: int | None = None):
    ref = np.linspace(-1.0, 1.0, n).reshape(2, -1)
    return compare(ref, ref + shift, None if topk else _enc(lsb), topk=topk)


def _enc(scale: float):
    from qdiverge.encodings.schema import make_encoding

    return make_encoding("t", 8, scale, -128)


def make_report(shift: float = 0.1) -> Report:
    run = RunInfo(
        "0.1.0",
        ("qdiverge", "bisect", "m.onnx", "e.json"),
        "m.onnx",
        "ab" * 32,
        "e.json",
        "cd" * 32,
        "htp",
        {"conv": {"rounding": "half_up"}, "fusions": (("Conv", "Relu"),)},
        ("sim", "emulator"),
        "random, seed 0",
        2,
        0,
        ("split", "isolated"),
        "sqnr",
    )
    layers = (
        LayerResult(
            1,
            "conv1 <b>&",
            "Conv",
            "conv1_out|x",
            0,
            12.5,
            _metrics(shift * 3),
            _metrics(shift),
            None,
            (FLAG_DERIVED_ENCODING,),
            (Finding("bias_overflow", "warning", "bias exceeds int32", {"max": 3.5e9}, "requantize bias"),),
        ),
        LayerResult(2, "relu1", "Relu", "relu1_out", 1, 0.5, _metrics(0.0), _metrics(shift / 2), None),
        LayerResult(3, "a" * 90, "Add", "b" * 90, 2, 0.0, None, _metrics(0.0), None),
    )
    summary = (OutputSummary("logits", _metrics(shift, topk=1), _metrics(shift * 2, topk=1)),)
    return Report(SCHEMA_VERSION, run, summary, layers)


def test_json_validates_and_is_byte_identical(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    report = make_report().with_gate(Thresholds(max_lsb={"": 1.0}))
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    write_report(report, "json", a)
    write_report(make_report().with_gate(Thresholds(max_lsb={"": 1.0})), "json", b)
    assert a.read_bytes() == b.read_bytes()
    data = json.loads(a.read_text())
    jsonschema.validate(data, json.loads(SCHEMA.read_text()))
    assert data["layers"][1]["isolated"]["sqnr_db"] == "inf"  # identical tensors
    assert Report.from_json(a) == report  # exact round trip, including inf
    jsonschema.validate(
        json.loads(render(make_report(), "json")), json.loads(SCHEMA.read_text())
    )  # gate null


def test_bad_baseline_files_are_input_errors(tmp_path):
    bad = tmp_path / "r.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match=r"r\.json"):
        Report.from_json(bad)
    data = json.loads(render(make_report(), "json"))
    data["schema_version"] = 99
    bad.write_text(json.dumps(data))
    with pytest.raises(InputError, match="schema_version"):
        Report.from_json(bad)
    data["schema_version"] = SCHEMA_VERSION
    del data["layers"][0]["tensor"]
    bad.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"layers\[0\].*'tensor'"):
        Report.from_json(bad)
    with pytest.raises(InputError, match="cannot read"):
        Report.from_json(tmp_path / "missing.json")


def test_gate_thresholds():
    report = make_report()
    # layer 1 isolated: shift 0.3 at scale 0.1 -> max_lsb 3; the other layers are within 1
    assert evaluate_gate(report, Thresholds(max_lsb={"": 5.0}))
    lsb = evaluate_gate(report, Thresholds(max_lsb={"": 1.5}))
    assert not lsb and [(f.scope, f.tensor) for f in lsb.failures] == [("layer", "conv1_out|x")]
    # the classifier output has no encoding, so an LSB limit on final outputs checks nothing: a failure
    final_only = evaluate_gate(report, Thresholds(max_lsb={"": 1.5}, scope="final"))
    assert not final_only and final_only.checks == 0 and final_only.failures[0].kind == "empty"
    override = evaluate_gate(report, Thresholds(max_lsb={"": 1.5, "conv1_out|x": 3.5}))
    assert override
    sqnr = report.summary[0].emu_vs_sim.sqnr_db
    assert evaluate_gate(report, Thresholds(sqnr_db={"logits": sqnr - 0.01}, scope="final"))
    assert not evaluate_gate(report, Thresholds(sqnr_db={"logits": sqnr + 0.01}, scope="final"))
    assert evaluate_gate(report, Thresholds(top1={"": 1.0}))  # a constant shift keeps argmax
    no_classifier = replace(report, summary=(OutputSummary("logits", _metrics(0.1), None),))
    assert not evaluate_gate(no_classifier, Thresholds(top1={"": 0.5}))
    unknown = evaluate_gate(report, Thresholds(sqnr_db={"nope": 1.0}))
    assert not unknown and "nope" in unknown.failures[0].message


def test_gate_empty_comparison_fails():
    report = replace(make_report(), summary=(), layers=())
    assert not evaluate_gate(report, Thresholds(sqnr_db={"": 10.0}))
    assert evaluate_gate(report, Thresholds())  # no limits, nothing asked


def test_gate_baseline_regression():
    old = make_report(0.1)
    assert evaluate_gate(make_report(0.1), Thresholds(), old)
    worse = evaluate_gate(make_report(0.2), Thresholds(), old)
    assert not worse
    assert {f.kind for f in worse.failures} == {"regression"}
    assert {(f.scope, f.tensor) for f in worse.failures} >= {("final", "logits"), ("layer", "conv1_out|x")}
    assert evaluate_gate(make_report(0.05), Thresholds(), old)  # better is fine


def test_parse_limits():
    assert parse_limits(["20", "conv:0:15"], "--fail-under-sqnr") == {"": 20.0, "conv:0": 15.0}
    with pytest.raises(InputError, match="--fail-over-lsb"):
        parse_limits(["x"], "--fail-over-lsb")
    with pytest.raises(InputError, match="fraction"):
        parse_limits(["95"], "--fail-under-top1")


def test_junit_failure_counts():
    report = make_report().with_gate(Thresholds(max_lsb={"": 1.5}, sqnr_db={"logits": 1000.0}))
    root = ET.fromstring(render(report, "junit").split("\n", 1)[1])
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == 4 and suite.get("tests") == "4"
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    assert suite.get("failures") == root.get("failures") == "2"
    assert failed[1] == "final outputs" and "conv1_out|x" in failed[0]


class _Collect(HTMLParser):
    VOID = frozenset({"meta", "br", "img", "input", "link", "hr", "circle", "rect", "line", "polyline"})

    def __init__(self):
        super().__init__()
        self.stack, self.tags, self.cells, self.attrs = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [v or "" for _, v in attrs]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        assert self.stack and self.stack.pop() == tag, f"unbalanced </{tag}>"

    def handle_data(self, data):
        if self.stack and self.stack[-1] == "td":
            self.cells.append(data)


def test_html_self_contained_and_escaped():
    report = make_report().with_gate(Thresholds(max_lsb={"": 1.5}))
    text = render(report, "html")
    parser = _Collect()
    parser.feed(text)
    parser.close()
    assert parser.stack == []
    assert "svg" in parser.tags and "script" not in parser.tags
    assert "conv1 <b>&" in parser.cells and "relu1_out" in parser.cells  # escaped, read back as text
    assert "<b>&" not in text
    assert "http" not in text and "src=" not in text


def test_markdown_rows_and_csv():
    report = make_report()
    md = render(report, "markdown", top=2)
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + 2  # header, separator, two layers
    assert "conv1\\_out\\|x" in rows[2]
    assert "1 more layers" in md
    parsed = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    assert [r["rank"] for r in parsed] == ["1", "2", "3"]
    assert parsed[0]["tensor"] == "conv1_out|x" and float(parsed[0]["isolated_max_lsb"]) == pytest.approx(3.0)
    assert parsed[1]["isolated_sqnr_db"] == "inf" and parsed[2]["isolated_sqnr_db"] == ""


def test_table_summary_top_and_elision():
    text = render(make_report().with_gate(Thresholds(max_lsb={"": 1.5})), "table", top=2)
    assert (
        "logits: emulator vs sim: SQNR" in text and "sim vs float: SQNR" in text and "top-1 100.00%" in text
    )
    assert "(1 more layers" in text and "FAILED" in text
    full = render(make_report(), "table")
    assert "a" * 90 not in full and "…" in full


def test_unknown_format():
    assert set(FORMATS) == {"table", "json", "csv", "markdown", "junit", "html"}
    with pytest.raises(InputError, match="--format"):
        render(make_report(), "pdf")


def test_failing_renderer_leaves_no_partial_file(tmp_path, monkeypatch):
    # atomic_write itself (old file kept, no temp file) is tested in test_robustness
    (tmp_path / "r.json").write_text("old")
    import qdiverge.reports.html as html_writer

    monkeypatch.setattr(html_writer, "render", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        write_report(make_report(), "html", tmp_path / "r.html")
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
    write_report(make_report(), "csv", tmp_path / "r.csv")
    assert (tmp_path / "r.csv").read_text().startswith("rank,node")


def test_nonfinite_contribution_round_trips(tmp_path):
    report = make_report()
    layers = (replace(report.layers[0], contribution=math.inf), *report.layers[1:])
    path = tmp_path / "r.json"
    write_report(replace(report, layers=layers), "json", path)
    assert Report.from_json(path).layers[0].contribution == math.inf
