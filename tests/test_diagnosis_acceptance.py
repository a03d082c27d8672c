"""Acceptance: on the fault-injection models the top-ranked layer carries the finding that explains the
fault (the JSON report's ``layers[0].why[*].rule``), and the matching ``--what-if`` removes most of that
layer's contribution (measured by a second split-mode run on the original run's scale).

Fault -> finding -> what-if:

* 8-bit bias under a per-tensor bias scale -> ``bias-precision`` -> ``bias-bits=32``.
* int32 bias saturation at ``s_in * s_w`` (a dead channel exported at AIMET's minimum scale) ->
  ``bias-int32-saturation`` -> ``encoding=<conv input>:0,MAX`` with MAX widened until the bias fits.
  The direct fix (a larger weight scale on that one channel) has no what-if, and ``per-channel``
  re-derives the dead channel at the same minimum scale, so it cannot help; widening ``s_in`` is the
  encoding fix that exists.
* stride-2 depthwise Conv -> HardSwish without an encoding on the conv output ->
  ``missing-target-encoding`` -> ``encoding=dw3_out:MIN,MAX`` (the calibrated range): both sides then
  quantize the intermediate with the same encoding.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from fault_models import bisect_json, fault_case, float_range


def _finding(row: dict, rule: str) -> dict:
    found = [f for f in row["why"] if f["rule"] == rule]
    assert found, f"{row['node']}: no {rule} finding in {[f['rule'] for f in row['why']]}"
    return found[0]


def _what_if(report: dict, node: str) -> tuple[float, float, float]:
    """(before, after, final SQNR with the change) of ``node`` in the report's only what-if."""
    (change,) = report["what_if"]
    (row,) = [la for la in change["layers"] if la["node"] == node]
    return row["before"], row["after"], change["summary"][0]["emu_vs_sim"]["sqnr_db"]


def _saturation_fix(case, finding: dict) -> str:
    """Widen the conv's input encoding so that ``|b| < 2^31 * s_in * s_w``, with 25% to spare."""
    grow = finding["bias"] / finding["representable"]
    _, hi = float_range(case, "relu1_out")
    return f"encoding=relu1_out:0,{1.25 * grow * hi:.6g}"


def _strided_fix(case, finding: dict) -> str:
    lo, hi = float_range(case, finding["tensor"])
    return f"encoding={finding['tensor']}:{lo:.9g},{hi:.9g}"


CASES = {
    "bias8": ("bias-precision", lambda case, finding: "bias-bits=32"),
    "saturate": ("bias-int32-saturation", _saturation_fix),
    "strided": ("missing-target-encoding", _strided_fix),
}


@pytest.mark.parametrize("fault", sorted(CASES))
def test_top_layer_has_the_finding_and_its_what_if_removes_the_divergence(tmp_path, fault):
    rule, fix = CASES[fault]
    case = fault_case(tmp_path, fault)
    report = bisect_json(case, "--mode", "split")
    top = report["layers"][0]
    assert top["node"] in case.faulty
    finding = _finding(top, rule)
    assert finding["severity"] == "error"
    assert finding["fix"]
    assert finding["numbers"]["node"] == top["node"]

    spec = fix(case, finding["numbers"])
    changed = bisect_json(case, "--mode", "split", "--what-if", spec)
    assert changed["layers"] == report["layers"]  # the what-if does not touch the original ranking
    before, after, sqnr_after = _what_if(changed, top["node"])
    assert before == pytest.approx(top["contribution"], rel=1e-12)
    assert after <= 0.2 * before, (spec, before, after)
    assert sqnr_after > report["summary"][0]["emu_vs_sim"]["sqnr_db"] + 3.0


def test_bias8_finding_quantifies_the_lost_bias(tmp_path):
    """The bias-precision numbers match the 8-bit bias of the crafted layer, recomputed here:
    s_b = max|b| / 127 and the worst live channel's error in output LSB."""
    case = fault_case(tmp_path, "bias8")
    report = bisect_json(case, "--mode", "split")
    finding = _finding(report["layers"][0], "bias-precision")["numbers"]
    model = onnx.load(str(case.model))
    bias = next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "dw1.bias")
    bias = bias.astype(np.float64)
    s_b = np.abs(bias).max() / 127
    # the int32 re-expression at s_in*s_w adds at most half a (tiny) accumulator step on top
    error = np.abs(np.clip(np.round(bias / s_b), -127, 127) * s_b - bias)
    acts = json.loads(case.encodings.read_text())["activation_encodings"]
    expected = error / next(e["scale"][0] for e in acts if e["name"] == "relu1_out")
    assert finding["bias_bits"] == 8
    assert finding["worst_channel"] == int(np.argmax(expected))
    assert finding["worst_lsb"] == pytest.approx(expected.max(), abs=0.01)
