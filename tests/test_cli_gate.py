"""The CI gate through the CLI: exit codes 0 (passed) / 1 (failed) / 2 (bad input) for every gate option,
``--gate-scope`` and ``--baseline``; every report format parses (JSON against docs/report-schema.json);
``qdiverge check --fail-on`` exit codes.

Models: the fault-injection net of ``fault_models`` with and without an int32 bias saturation (a clean and
a faulty run), and a three-class Gemm classifier whose saturated bias flips the top-1 class on the DSP.
"""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from encodings_fixtures import v100, write
from fault_models import EPS32, bisect_json, fault_case, run_cli
from onnx_builders import GraphBuilder, save

SCHEMA = json.loads((Path(__file__).parents[1] / "docs" / "report-schema.json").read_text())
SAMPLES = ("--samples", "8")


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gate")
    return {"clean": fault_case(tmp, "saturate", "normal-scale"), "bad": fault_case(tmp, "saturate")}


def bisect(case, *extra) -> tuple[int, str, str]:
    return run_cli("-q", "bisect", *case.args(), *SAMPLES, *extra)


def gate_json(case, *extra) -> tuple[int, dict]:
    code, out, err = bisect(case, "--mode", "split,layerwise", "--format", "json", *extra)
    assert code in (0, 1), err
    return code, json.loads(out)


def final(report: dict) -> dict:
    return report["summary"][0]["emu_vs_sim"]


# ---- thresholds on the final outputs -------------------------------------------------------------


def test_sqnr_gate(cases):
    report = bisect_json(cases["clean"])
    sqnr = final(report)["sqnr_db"]
    assert report["gate"] is None
    assert bisect(cases["clean"], "--fail-under-sqnr", f"{sqnr - 1:.3f}")[0] == 0
    code, report = gate_json(cases["clean"], "--fail-under-sqnr", f"{sqnr + 1:.3f}")
    assert code == 1 and report["gate"]["passed"] is False
    (failure,) = report["gate"]["failures"]
    assert (failure["kind"], failure["scope"], failure["tensor"], failure["statistic"]) == (
        "threshold",
        "final",
        "logits",
        "sqnr_db",
    )
    assert failure["value"] == sqnr and failure["limit"] == float(f"{sqnr + 1:.3f}")
    # a per-tensor limit overrides the default
    limits = ("--fail-under-sqnr", "200", "--fail-under-sqnr", f"logits:{sqnr - 1:.3f}")
    assert bisect(cases["clean"], *limits)[0] == 0
    assert bisect(cases["bad"], "--fail-under-sqnr", f"{sqnr - 1:.3f}")[0] == 1


def test_lsb_gate(cases):
    lsb = final(bisect_json(cases["bad"]))["max_lsb"]
    assert lsb > 2
    assert bisect(cases["bad"], "--fail-over-lsb", f"{lsb}")[0] == 0
    assert bisect(cases["bad"], "--fail-over-lsb", f"{lsb - 1}")[0] == 1
    assert bisect(cases["clean"], "--fail-over-lsb", f"{lsb - 1}")[0] == 0


@pytest.mark.parametrize("option", ["--fail-under-sqnr", "--fail-over-lsb", "--fail-under-top1"])
@pytest.mark.parametrize("value", ["abc", "logits:", "nan", "inf"])
def test_bad_limits_are_input_errors(cases, option, value):
    code, out, err = bisect(cases["clean"], option, value)
    assert code == 2 and out == ""
    assert option in err and len(err.strip().splitlines()) == 1


def test_top1_limit_outside_zero_one_is_an_input_error(cases):
    code, _, err = bisect(cases["clean"], "--fail-under-top1", "1.5")
    assert code == 2 and "[0, 1]" in err


def test_limit_on_an_unknown_tensor_is_a_usage_error(cases):
    """A typo in a gate's tensor name stops the run before any work, with exit 2 and the name."""
    code, _, err = bisect(cases["clean"], "--fail-over-lsb", "1000", "--fail-over-lsb", "nosuch:3")
    assert code == 2
    assert err.strip().splitlines()[-1] == "error: --fail-over-lsb: no tensor named 'nosuch' in the model"


# ---- top-1 ---------------------------------------------------------------------------------------


def classifier(tmp_path: Path, saturate: bool):
    """input[1,4] -> Gemm(3 classes) -> logits. Class 2 has no weights and a bias of 6 (a dead unit with a
    folded bias): in the sim it wins whenever the other logits stay below 6. Exported at AIMET's minimum
    weight scale, its bias saturates on the DSP at 2^31 * s_in * eps ~ 2, so the DSP picks another class."""
    g = GraphBuilder(seed=3)
    w = np.zeros((3, 4), dtype=np.float32)
    w[:2] = g.rng.standard_normal((2, 4)) * 3.0
    b = np.array([0.0, 0.0, 6.0], dtype=np.float32)
    x = g.input("input", (1, 4))
    g.output(g.op("Gemm", [x, g.const("fc.weight", w), g.const("fc.bias", b)], "logits", "fc", transB=1))
    folder = tmp_path / f"classifier_{saturate}"
    folder.mkdir()
    scales = [float(np.float32(np.abs(r).max() / 127)) for r in w[:2]]
    scales.append(EPS32 if saturate else scales[0])
    bound = float(np.abs(w).sum(axis=1).max() + 6)  # logits range over inputs in [-1, 1]
    out_scale = float(np.float32(2 * bound / 255))
    encs = {
        "input": (8, False, [float(np.float32(2 / 255))], [-128], False),
        "fc.weight": (8, True, scales, [-128] * 3, True),
        "logits": (8, False, [out_scale], [-128], False),
    }
    return save(g.build(), folder), write(v100(encs), folder)


def test_top1_gate_and_scopes(tmp_path):
    bad, clean = classifier(tmp_path, True), classifier(tmp_path, False)
    args = ("-q", "bisect", *SAMPLES, "--format", "json")
    code, out, _ = run_cli(*args[:2], *bad, *args[2:], "--fail-under-top1", "0.9")
    report = json.loads(out)
    top1 = final(report)["top1"]
    assert code == 1 and top1 < 0.9
    assert [f["statistic"] for f in report["gate"]["failures"]] == ["top1"]
    assert run_cli(*args[:2], *clean, *args[2:], "--fail-under-top1", "0.9")[0] == 0
    assert final(json.loads(run_cli(*args[:2], *clean, *args[2:])[1]))["top1"] == 1.0
    assert run_cli(*args[:2], *bad, *args[2:], "--fail-under-top1", f"{top1}")[0] == 0
    # scope all: final outputs included, same verdicts
    assert run_cli(*args[:2], *bad, *args[2:], "--fail-under-top1", "0.9", "--gate-scope", "all")[0] == 1
    assert run_cli(*args[:2], *clean, *args[2:], "--fail-under-top1", "0.9", "--gate-scope", "all")[0] == 0
    # scope layers: top-1 is a final-output statistic, so a top-1-only gate checks nothing and says so
    code, out, _ = run_cli(*args[:2], *clean, *args[2:], "--fail-under-top1", "0.9", "--gate-scope", "layers")
    assert code == 1
    assert [f["kind"] for f in json.loads(out)["gate"]["failures"]] == ["empty"]


# ---- per-layer scope -----------------------------------------------------------------------------


def test_layer_scope_fails_on_the_faulty_layer_only(cases):
    code, report = gate_json(cases["bad"], "--fail-over-lsb", "2", "--gate-scope", "layers")
    assert code == 1
    failures = report["gate"]["failures"]
    assert {(f["scope"], f["tensor"]) for f in failures} == {("layer", "relu2_out")}
    assert gate_json(cases["clean"], "--fail-over-lsb", "2", "--gate-scope", "layers")[0] == 0
    # a per-tensor limit on the faulty layer lets it pass; the final output is not gated in this scope
    lsb = next(r for r in report["layers"] if r["tensor"] == "relu2_out")["isolated"]["max_lsb"]
    limits = ("--fail-over-lsb", "2", "--fail-over-lsb", f"relu2_out:{lsb}")
    assert gate_json(cases["bad"], *limits, "--gate-scope", "layers")[0] == 0
    code, report = gate_json(cases["bad"], *limits, "--gate-scope", "all")
    assert code == 1
    assert {(f["scope"], f["tensor"]) for f in report["gate"]["failures"]} == {("final", "logits")}


# ---- baseline --------------------------------------------------------------------------------------


def test_baseline_regression(tmp_path):
    good, worse = fault_case(tmp_path, "bias8", "int32-bias"), fault_case(tmp_path, "bias8")
    assert good.model.read_bytes() == worse.model.read_bytes()  # the same export on two targets
    baseline = tmp_path / "baseline.json"
    assert run_cli("-q", "bisect", *good.args(), *SAMPLES, "--format", "json", "-o", baseline)[0] == 0
    assert run_cli("-q", "bisect", *good.args(), *SAMPLES, "--baseline", baseline)[0] == 0
    code, out, _ = run_cli(
        "-q", "bisect", *worse.args(), *SAMPLES, "--format", "json", "--baseline", baseline
    )
    assert code == 1
    report = json.loads(out)
    kinds = {(f["kind"], f["scope"], f["tensor"]) for f in report["gate"]["failures"]}
    assert ("regression", "final", "logits") in kinds
    assert ("regression", "layer", "relu1_out") in kinds  # the layer the 8-bit bias hurts
    assert report["gate"]["baseline"] == json.loads(baseline.read_text())["run"]["model_sha256"]


def test_baseline_that_is_not_a_report_is_an_input_error(cases, tmp_path):
    bad = tmp_path / "not_a_report.json"
    bad.write_text('{"layers": 3}')
    code, _, err = bisect(cases["clean"], "--baseline", bad)
    assert code == 2 and "not_a_report.json" in err
    assert bisect(cases["clean"], "--baseline", tmp_path / "missing.json")[0] == 2


# ---- report formats under a failing layer gate ------------------------------------------------------

GATE = ("--mode", "split,layerwise", "--fail-over-lsb", "2", "--gate-scope", "layers")


def test_json_report_validates_against_the_schema(cases, tmp_path):
    for name, case in cases.items():
        path = tmp_path / f"{name}.json"
        code, out, _ = bisect(case, *GATE, "--format", "json", "-o", path)
        assert code == (1 if name == "bad" else 0) and out == ""
        report = json.loads(path.read_text())
        jsonschema.validate(report, SCHEMA)
        assert report["gate"]["passed"] is (name == "clean")


def test_csv_report_parses(cases, tmp_path):
    path = tmp_path / "bad.csv"
    assert bisect(cases["bad"], *GATE, "--format", "csv", "--top", "3", "-o", path)[0] == 1
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    report = bisect_json(cases["bad"], "--mode", "split,layerwise")
    assert [r["node"] for r in rows] == [la["node"] for la in report["layers"]]  # every layer, --top or not
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    top = rows[0]
    assert float(top["contribution"]) == report["layers"][0]["contribution"]
    assert float(top["isolated_max_lsb"]) == report["layers"][0]["isolated"]["max_lsb"]
    assert "bias-int32-saturation" in top["why"].split(";")


def test_junit_report_has_failing_testcases_for_failing_layers(cases, tmp_path):
    path = tmp_path / "bad.xml"
    assert bisect(cases["bad"], *GATE, "--format", "junit", "-o", path)[0] == 1
    root = ET.parse(path).getroot()
    suites = root.findall("testsuite")
    assert root.tag == "testsuites" and len(suites) == 1
    cases_ = suites[0].findall("testcase")
    failed = [c for c in cases_ if c.find("failure") is not None]
    assert [c.get("name").rsplit(" -> ", 1)[1] for c in failed] == ["relu2_out"]
    assert int(root.get("failures")) == int(suites[0].get("failures")) == 1
    assert int(suites[0].get("tests")) == len(cases_)
    clean = tmp_path / "clean.xml"
    assert bisect(cases["clean"], *GATE, "--format", "junit", "-o", clean)[0] == 0
    assert ET.parse(clean).getroot().get("failures") == "0"


class _TagChecker(HTMLParser):
    """Checks that every non-void element is closed in order; collects table cells."""

    VOID = frozenset({"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "wbr", "source"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.cells: list[str] = []
        self.seen: set[str] = set()
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        self.seen.add(tag)
        self._in_cell = tag == "td"
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.seen.add(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1:]}>"
        self.stack.pop()
        self._in_cell = False

    def handle_data(self, data):
        if self._in_cell:
            self.cells.append(data)


def test_html_report_parses(cases, tmp_path):
    path = tmp_path / "bad.html"
    assert bisect(cases["bad"], *GATE, "--format", "html", "--top", "1", "-o", path)[0] == 1
    checker = _TagChecker()
    checker.feed(path.read_text())
    checker.close()
    assert checker.stack == []
    assert {"html", "table", "svg"} <= checker.seen
    layers = bisect_json(cases["bad"], "--mode", "split,layerwise")["layers"]
    assert {la["tensor"] for la in layers} <= set(checker.cells)  # every layer, not just --top


# ---- qdiverge check --------------------------------------------------------------------------------


def _warning_only(tmp_path: Path) -> tuple[Path, Path]:
    """The clean classifier with asymmetric per-tensor weights: a weight-symmetry warning, no error."""
    model, encodings = classifier(tmp_path, saturate=False)
    data = json.loads(encodings.read_text())
    (weight,) = data["param_encodings"]
    w_scale = weight["scale"][0]
    weight.update(is_sym=False, scale=[w_scale * 2], offset=[-100.0], enc_type="PER_TENSOR")
    path = write(data, model.parent, "asym.encodings")
    return model, path


@pytest.mark.parametrize(
    ("which", "fail_on", "expected"),
    [
        ("clean", "info", 0),
        ("clean", "error", 0),
        ("warning", "info", 1),
        ("warning", "warning", 1),
        ("warning", "error", 0),
        ("warning", "never", 0),
        ("bad", "warning", 1),
        ("bad", "error", 1),
        ("bad", "never", 0),
    ],
)
def test_check_fail_on(cases, tmp_path, which, fail_on, expected):
    args = _warning_only(tmp_path) if which == "warning" else cases[which].args()
    code, out, err = run_cli("check", *args, "--fail-on", fail_on, "--format", "json")
    assert code == expected, err
    report = json.loads(out)
    jsonschema.validate(report, SCHEMA)
    severities = {f["severity"] for la in report["layers"] for f in la["why"]}
    assert severities == {"clean": set(), "warning": {"warning"}, "bad": {"error"}}[which]


def test_check_bad_input_exits_2(cases, tmp_path):
    code, _, err = run_cli("check", cases["clean"].model, tmp_path / "missing.encodings")
    assert code == 2 and "missing.encodings" in err
    assert run_cli("check", *cases["clean"].args(), "--fail-on", "sometimes")[0] == 2
