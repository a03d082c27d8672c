"""Acceptance: in a model where one chosen layer is made to compute differently on the DSP than in the
sim, `qdiverge bisect` ranks that layer first, in split mode (by its contribution to the final-output
divergence) and in layerwise mode (by its isolated LSB error); with the fault removed it does not.

Each fault is a real sim-vs-DSP difference (see ``fault_models``): an 8-bit bias under a per-tensor bias
scale, an int32 bias saturation, and a requantized supergroup intermediate. Everything goes through the
CLI (``--format json``) on 8 random samples.
"""

from __future__ import annotations

import pytest
from fault_models import FIXES, bisect_json, fault_case, faulty_rows

FAULTS = sorted(FIXES)
FIXED = [(fault, fix) for fault in FAULTS for fix in FIXES[fault]]


def _isolated_lsb(row: dict) -> float:
    return row["isolated"]["max_lsb"] if row["isolated"] and row["isolated"]["max_lsb"] is not None else 0.0


@pytest.mark.parametrize("fault", FAULTS)
def test_faulty_layer_ranks_first_in_split_mode(tmp_path, fault):
    case = fault_case(tmp_path, fault)
    report = bisect_json(case, "--mode", "split")
    top = report["layers"][0]
    assert top["rank"] == 1 and top["node"] in case.faulty, [r["node"] for r in report["layers"][:3]]
    # it carries most of the final divergence, far more than the runner-up
    assert top["contribution"] >= 0.5
    assert top["contribution"] >= 4 * report["layers"][1]["contribution"]


@pytest.mark.parametrize("fault", FAULTS)
def test_faulty_layer_has_the_largest_isolated_error_in_layerwise_mode(tmp_path, fault):
    case = fault_case(tmp_path, fault)
    report = bisect_json(case, "--mode", "layerwise")
    assert all(row["split_final"] is None for row in report["layers"])
    worst = max(report["layers"], key=_isolated_lsb)
    assert worst["node"] in case.faulty
    assert report["layers"][0]["node"] in case.faulty  # without split mode the ranking is by isolated LSB
    others = max(_isolated_lsb(r) for r in report["layers"] if r["node"] not in case.faulty)
    assert others <= 1 + 1e-3  # every other layer differs by rounding only
    assert _isolated_lsb(worst) >= 2.5


@pytest.mark.parametrize(("fault", "fix"), FIXED)
def test_without_the_fault_the_layer_is_not_first(tmp_path, fault, fix):
    faulty = bisect_json(fault_case(tmp_path, fault), "--mode", "split")
    case = fault_case(tmp_path, fault, fix)
    report = bisect_json(case, "--mode", "split,layerwise")
    assert report["layers"][0]["node"] not in case.faulty
    rows = faulty_rows(report, case)
    assert rows
    for row in rows:
        assert row["contribution"] < 0.1
        assert _isolated_lsb(row) <= 1 + 1e-3
        assert row["flags"] == []  # no derived encoding once fused or encoded
    sqnr = report["summary"][0]["emu_vs_sim"]["sqnr_db"]
    assert sqnr >= faulty["summary"][0]["emu_vs_sim"]["sqnr_db"] + 3.0  # the fault was the divergence


def test_strided_supergroup_is_flagged_with_a_derived_encoding(tmp_path):
    """The requantized intermediate is visible in the report: the conv step has its own row, flagged."""
    case = fault_case(tmp_path, "strided")
    report = bisect_json(case, "--mode", "split")
    conv = next(row for row in report["layers"] if row["node"] == "dw3")
    assert conv["op_type"] == "Conv" and conv["tensor"] == "dw3_out"
    assert conv["flags"] == ["derived_encoding"]
